/* main.c: the streamtune command. Dispatches to one file per subcommand; global options
 * (--threads, --quiet, --verbose) are read here and removed before the subcommand sees argv. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const char *usage_text =
    "usage: streamtune <command> [options]\n"
    "\n"
    "commands:\n"
    "  train     --model DIR --data F|DIR --out DIR  LoRA fine-tuning (PEFT adapter)\n"
    "  fuse      --model DIR --adapter DIR --out DIR  merged model folder\n"
    "  info      --model DIR                 architecture, parameters, dtype, memory\n"
    "  eval      --model DIR --data F.jsonl  mean next-token loss and perplexity\n"
    "  generate  --model DIR --prompt TEXT     sample a continuation (or --prompt-ids 1,2,3)\n"
    "  tokenize  --model DIR --text T|--file F  token ids (--json: one array per line)\n"
    "  detokenize --model DIR --ids 1,2|--file F  text from ids\n"
    "  chat-template --model DIR --messages F.json  render a conversation with the model's template\n"
    "  data      ls|cat|index|bench|preview URL  stream a dataset from disk, http(s):// or s3://\n"
    "\n"
    "global options: --threads N (default: all cores), --verbose, --quiet, --version\n"
    "every command takes --help and --json: one JSON object on stdout (train: one per event,\n"
    "tokenize, detokenize and data cat: one per line)\n";

int cli_fail(int json, const struct st_error *err) {
    if (json) {
        fputs("{\"error\": ", stdout);
        cli_json_string(stdout, err->msg);
        fprintf(stdout, ", \"status\": ");
        cli_json_string(stdout, st_status_str(err->code));
        fputs("}\n", stdout);
    }
    fprintf(stderr, "streamtune: error: %s\n", err->msg);
    return CLI_EXIT_ERR;
}

/* --json anywhere on the command line: usage errors are a JSON object on stdout too */
static int json_requested;

int cli_usage(const char *usage, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (json_requested) {
        fputs("{\"error\": ", stdout);
        cli_json_string(stdout, msg);
        fputs(", \"status\": \"usage error\"}\n", stdout);
    }
    fprintf(stderr, "streamtune: %s\n%s", msg, usage);
    return CLI_EXIT_USAGE;
}

const char *cli_opt(int argc, char **argv, int *i, const char *name, int *missing) {
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) return NULL;
    if (a[n] == '=') return a + n + 1;
    if (a[n] != '\0') return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

int cli_int(const char *s, long lo, long hi, long *out) {
    int64_t v;
    if (st_parse_i64(s, lo, hi, &v)) return 1;
    *out = (long)v;
    return 0;
}

int cli_compute(const char *v, struct st_model_load_options *o) {
    if (!strcmp(v, "bf16"))
        o->compute_bf16 = 1, o->pack_f32 = 0;
    else if (!strcmp(v, "f32"))
        o->compute_bf16 = 0, o->pack_f32 = 1;
    else if (!strcmp(v, "f32-blas"))
        o->compute_bf16 = 0, o->pack_f32 = 0;
    else
        return 1;
    return 0;
}

int cli_load_flag(int argc, char **argv, int *i, struct st_model_load_options *o) {
    const char *a = argv[*i];
    if (!strcmp(a, "--no-double-quant")) {
        o->double_quant = 0;
        return 1;
    }
    if (!strcmp(a, "--keep-embeddings")) {
        o->keep_embeddings = 1;
        return 1;
    }
    if (!strcmp(a, "--compute")) {
        const char *v = *i + 1 < argc ? argv[*i + 1] : "";
        if (cli_compute(v, o)) {
            fprintf(stderr, "streamtune: --compute: expected bf16, f32 or f32-blas\n");
            return -1;
        }
        (*i)++;
        return 1;
    }
    if (strcmp(a, "--quantize") != 0) return 0;
    if (*i + 1 >= argc || st_quant_parse(argv[*i + 1], &o->quantize)) {
        fprintf(stderr, "streamtune: --quantize: expected nf4, int8 or none\n");
        return -1;
    }
    (*i)++;
    return 1;
}

int cli_float(const char *s, double lo, double hi, double *out) {
    double v;
    if (st_parse_f64(s, &v) || v < lo || v > hi) return 1;
    *out = v;
    return 0;
}

void cli_json_string_n(FILE *f, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        size_t k = st_utf8_seq(p + i, n - i);
        if (k == 0) { /* not UTF-8 (a tar member's name, a token's partial bytes): U+FFFD, so
                       * the output stays JSON, as Hugging Face's decode does */
            fputs("\\ufffd", f);
            i++;
            continue;
        }
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fwrite(p + i, 1, k, f);
        i += k;
    }
    fputc('"', f);
}

void cli_json_string(FILE *f, const char *s) { cli_json_string_n(f, s, strlen(s)); }

void cli_progress_start(struct cli_progress *p, const char *label, double total) {
    p->label = label;
    p->total = total;
    p->start = st_time_now();
    p->last_draw = 0;
    p->enabled = isatty(2) && st_log_get_level() >= ST_LOG_INFO;
}

void cli_progress_update(struct cli_progress *p, double done, const char *extra) {
    if (!p->enabled) return;
    double now = st_time_now();
    if (now - p->last_draw < 0.1 && done < p->total) return;
    p->last_draw = now;
    double frac = p->total > 0 ? done / p->total : 0;
    if (frac > 1) frac = 1;
    int width = 30, fill = (int)(frac * width);
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    double el = now - p->start, eta = frac > 0 ? el / frac - el : 0;
    fprintf(stderr, "\r%s [%s] %3.0f%% %.0f/%.0f %s elapsed %.0fs eta %.0fs  ", p->label, bar,
            100 * frac, done, p->total, extra ? extra : "", el, eta);
}

void cli_progress_end(struct cli_progress *p) {
    if (p->enabled) fputc('\n', stderr);
}

int main(int argc, char **argv) {
    /* OpenMP threads that spin at barriers waste their core whenever the other threads are
     * descheduled (any other load on the machine): measured 3x slower evaluation on a busy 2-core
     * box. libgomp reads OMP_WAIT_POLICY before main, so set it once and re-execute; a user's own
     * setting wins. OpenBLAS's own threads likewise spin in sched_yield for 2^28 cycles after
     * every call, taking the core our OpenMP threads need next: OPENBLAS_THREAD_TIMEOUT=4 (2^4
     * cycles, its minimum) puts them to sleep at once (bench/NOTES.md: +7% bf16, +20% fp32
     * training on SmolLM2-135M). */
    int omp_set = getenv("OMP_WAIT_POLICY") != NULL, blas_set = getenv("OPENBLAS_THREAD_TIMEOUT") != NULL;
    if ((!omp_set || !blas_set) && !getenv("ST_NO_REEXEC")) {
        if (!omp_set) setenv("OMP_WAIT_POLICY", "passive", 1);
        if (!blas_set) setenv("OPENBLAS_THREAD_TIMEOUT", "4", 1);
        setenv("ST_NO_REEXEC", "1", 1);
        execv("/proc/self/exe", argv); /* on failure, carry on with the default policy */
    }
    int threads = 0;
    for (int i = 1; i < argc; i++) json_requested |= strcmp(argv[i], "--json") == 0;
    /* pull global options out of argv */
    int out = 1;
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *v;
        if ((v = cli_opt(argc, argv, &i, "--threads", &missing))) {
            long t;
            if (cli_int(v, 1, 1024, &t)) return cli_usage(usage_text, "--threads: expected 1..1024, got '%s'", v);
            threads = (int)t;
            continue;
        }
        if (missing) return cli_usage(usage_text, "--threads needs a value");
        if (strcmp(argv[i], "--verbose") == 0) {
            st_log_set_level(ST_LOG_DEBUG);
            continue;
        }
        if (strcmp(argv[i], "--quiet") == 0) {
            st_log_set_level(ST_LOG_ERROR);
            continue;
        }
        argv[out++] = argv[i];
    }
    argc = out;
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0 ||
        strcmp(argv[1], "-h") == 0) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("streamtune %s\n", STREAMTUNE_VERSION);
        return 0;
    }
    st_threads_set(threads);
    const char *cmd = argv[1];
    if (strcmp(cmd, "info") == 0) return cmd_info(argc - 1, argv + 1);
    if (strcmp(cmd, "eval") == 0) return cmd_eval(argc - 1, argv + 1);
    if (strcmp(cmd, "generate") == 0) return cmd_generate(argc - 1, argv + 1);
    if (strcmp(cmd, "data") == 0) return cmd_data(argc - 1, argv + 1);
    if (strcmp(cmd, "tokenize") == 0) return cmd_tokenize(argc - 1, argv + 1);
    if (strcmp(cmd, "train") == 0) return cmd_train(argc - 1, argv + 1);
    if (strcmp(cmd, "fuse") == 0) return cmd_fuse(argc - 1, argv + 1);
    if (strcmp(cmd, "chat-template") == 0) return cmd_chat_template(argc - 1, argv + 1);
    if (strcmp(cmd, "detokenize") == 0) return cmd_detokenize(argc - 1, argv + 1);
    return cli_usage(usage_text, "unknown command '%s'", cmd);
}
