/* bench_tokenize.c: encode throughput of streamtune's tokenizer on one thread.
 * Usage: bench_tokenize TOKENIZER_DIR TEXT_FILE [SECONDS]
 * Encodes every line of TEXT_FILE (add_special_tokens true) repeatedly for about SECONDS and
 * prints one JSON object: {"bytes": ..., "tokens": ..., "seconds": ..., "mb_per_s": ...,
 * "tokens_per_s": ...} (best of the repetitions). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "streamtune/core.h"
#include "streamtune/tokenizer.h"

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_tokenize TOKENIZER_DIR TEXT_FILE [SECONDS]\n");
        return 2;
    }
    double budget = argc > 3 ? atof(argv[3]) : 5.0;
    struct st_error err;
    struct st_tokenizer *t;
    if (st_tokenizer_load(&t, argv[1], &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    char *text;
    size_t len;
    if (st_read_file(argv[2], 1u << 30, &text, &len, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    /* lines (without their newline), as the peer reads them */
    size_t n = 0, cap = 1024;
    char **lines = malloc(cap * sizeof *lines);
    size_t *lens = malloc(cap * sizeof *lens);
    for (char *p = text; p < text + len;) {
        char *nl = memchr(p, '\n', (size_t)(text + len - p));
        if (!nl) nl = text + len;
        if (n == cap) {
            cap *= 2;
            lines = realloc(lines, cap * sizeof *lines);
            lens = realloc(lens, cap * sizeof *lens);
        }
        lines[n] = p;
        lens[n++] = (size_t)(nl - p);
        p = nl + 1;
    }
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) bytes += lens[i];
    double best = 1e30, start = st_time_now();
    size_t tokens = 0;
    int reps = 0;
    do {
        double t0 = st_time_now();
        tokens = 0;
        for (size_t i = 0; i < n; i++) {
            struct st_ids ids = {0};
            if (st_tokenizer_encode(t, lines[i], lens[i], 1, &ids, &err)) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
            tokens += ids.n;
            st_ids_free(&ids);
        }
        double el = st_time_now() - t0;
        if (el < best) best = el;
        reps++;
    } while (st_time_now() - start < budget || reps < 3);
    printf("{\"bytes\": %zu, \"lines\": %zu, \"tokens\": %zu, \"seconds\": %.6f, \"reps\": %d, "
           "\"mb_per_s\": %.3f, \"tokens_per_s\": %.0f}\n",
           bytes, n, tokens, best, reps, (double)bytes / best / 1e6, (double)tokens / best);
    free(lines);
    free(lens);
    st_free(text);
    st_tokenizer_free(t);
    return 0;
}
