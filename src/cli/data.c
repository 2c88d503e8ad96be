/* data.c: `streamtune data ls|cat|index|bench|preview`: look at, index, measure and preview a
 * streamed dataset, raw or decoded (images -> tensors, audio -> log-mel), one source or a
 * weighted mix of several.
 *
 * DESIGN: a client of the public data API only (include/streamtune/data.h, decode.h). Stream and
 * decode options are parsed by st_stream_option_set / st_decode_option_set so every command (and
 * later `train`) spells them the same. A decoded pipeline is a decoder (one URL) or a mix (one or
 * more --data NAME=URL:WEIGHT); struct pipe hides which. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "streamtune/data.h"
#include "streamtune/decode.h"

static const char *usage =
    "usage: streamtune data <ls|cat|index|bench|preview> URL [options]\n"
    "\n"
    "  data ls URL                 the shards a source names: size, samples (with an index)\n"
    "  data cat URL [--limit N]    print records (JSONL lines; one JSON summary per tar sample)\n"
    "       [--field NAME]         print this field of each sample instead\n"
    "       [--shuffle]            stream order (default for cat: listing order, --no-shuffle)\n"
    "       [--state-out FILE]     write the resume state after the last record printed\n"
    "       [--resume FILE]        continue from a state written by --state-out\n"
    "       [--stats]              print stream statistics on stderr at the end\n"
    "  data index URL [-o FILE] [--base URL]   write an index manifest (sizes, samples, SHA-256)\n"
    "  data bench URL [--limit N] [--seconds S]  throughput and time to first sample\n"
    "  data preview URL --out grid.png [--n 16]  a PNG grid of decoded (augmented) images and\n"
    "                              log-mel pictures of audio samples\n"
    "\n"
    "decoding and mixing (cat, bench, preview):\n"
    "  --decode                    decode images (jpg png webp) to tensors and audio (flac wav "
    "mp3\n"
    "                              ogg) to log-mel; cat prints shapes and FNV-1a checksums\n"
    "  --data NAME=URL:WEIGHT      a weighted source (repeat; instead of URL); decodes them\n"
    "  --data-memory NAME=SIZE     that source's stream memory (default: an equal share of\n"
    "                              --stream-memory)\n"
    "  --mix-stop first|all        a mix epoch ends when the first source ends one (default)\n"
    "                              or when every source has ended one\n"
    "\n"
    "URL: a file, directory or glob, file://, http(s)://, s3://bucket/prefix, or an index *.json;\n"
    "brace lists expand (shard-{000..099}.jsonl.zst). Every command takes --json.\n"
    "\n";

static void print_usage(FILE *f) {
    fputs(usage, f);
    fputs(st_stream_options_help, f);
    fputs(st_decode_options_help, f);
}

#define MAX_SOURCES 16

struct data_args {
    const char *url;
    long limit, n;
    double seconds;
    const char *state_out, *resume, *field, *out, *base;
    int json, stats, shuffle_set, decode;
    struct st_stream_options o;
    struct st_decode_options d;
    char *resume_text;
    /* --data NAME=URL:WEIGHT sources, --data-memory NAME=SIZE */
    struct st_mix_source src[MAX_SOURCES];
    char *src_store[MAX_SOURCES];
    int n_src;
    enum st_mix_stop mix_stop;
};

static void free_args(struct data_args *a) {
    st_free(a->resume_text);
    for (int i = 0; i < a->n_src; i++)
        st_free(a->src_store[i]);
}

/* --data-memory NAME=SIZE: the source's own stream budget. */
static int set_source_memory(struct data_args *a, const char *v) {
    const char *eq = strchr(v, '=');
    size_t sz;
    if (!eq || st_parse_size(eq + 1, &sz) || sz == 0)
        return cli_usage(usage, "--data-memory: expected NAME=SIZE (e.g. images=256M), got '%s'",
                         v);
    for (int i = 0; i < a->n_src; i++)
        if (strlen(a->src[i].name) == (size_t)(eq - v) &&
            !strncmp(a->src[i].name, v, (size_t)(eq - v))) {
            a->src[i].memory_budget = sz;
            return -1;
        }
    return cli_usage(usage, "--data-memory '%s': no --data source of that name (give --data first)",
                     v);
}

/* Parse argv into a; returns -1 when done, else an exit code (help or usage error). */
static int parse_args(int argc, char **argv, struct data_args *a, const char *cmd) {
    memset(a, 0, sizeof *a);
    st_stream_options_init(&a->o);
    st_decode_options_init(&a->d);
    a->limit = -1;
    a->n = 16;
    for (int i = 2; i < argc; i++) {
        const char *arg = argv[i];
        int missing = 0;
        const char *v;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            print_usage(stdout);
            return 0;
        }
        if ((v = cli_opt(argc, argv, &i, "--limit", &missing))) {
            if (cli_int(v, 0, 0x7fffffffL, &a->limit))
                return cli_usage(usage, "--limit: expected a count, got '%s'", v);
            continue;
        }
        if ((v = cli_opt(argc, argv, &i, "--seconds", &missing))) {
            if (cli_float(v, 0.001, 1e6, &a->seconds))
                return cli_usage(usage, "--seconds: expected a duration, got '%s'", v);
            continue;
        }
        if ((v = cli_opt(argc, argv, &i, "--state-out", &missing))) {
            a->state_out = v;
            continue;
        }
        if ((v = cli_opt(argc, argv, &i, "--resume", &missing))) {
            a->resume = v;
            continue;
        }
        if ((v = cli_opt(argc, argv, &i, "--field", &missing))) {
            a->field = v;
            continue;
        }
        if ((v = cli_opt(argc, argv, &i, "--n", &missing))) {
            if (cli_int(v, 1, 4096, &a->n))
                return cli_usage(usage, "--n: expected a count in [1, 4096], got '%s'", v);
            continue;
        }
        if ((v = cli_opt(argc, argv, &i, "--data", &missing))) {
            if (a->n_src == MAX_SOURCES)
                return cli_usage(usage, "--data: at most %d sources", MAX_SOURCES);
            struct st_error err;
            if (st_mix_source_parse(v, &a->src[a->n_src], &a->src_store[a->n_src], &err))
                return cli_usage(usage, "%s", err.msg);
            a->n_src++;
            continue;
        }
        if ((v = cli_opt(argc, argv, &i, "--data-memory", &missing))) {
            int rc = set_source_memory(a, v);
            if (rc >= 0) return rc;
            continue;
        }
        if ((v = cli_opt(argc, argv, &i, "--mix-stop", &missing))) {
            if (!strcmp(v, "first"))
                a->mix_stop = ST_MIX_STOP_FIRST;
            else if (!strcmp(v, "all"))
                a->mix_stop = ST_MIX_STOP_ALL;
            else
                return cli_usage(usage, "--mix-stop: expected first or all, got '%s'", v);
            continue;
        }
        if ((v = cli_opt(argc, argv, &i, "-o", &missing)) ||
            (v = cli_opt(argc, argv, &i, "--out", &missing)) ||
            (v = cli_opt(argc, argv, &i, "--output", &missing))) {
            a->out = v;
            continue;
        }
        if ((v = cli_opt(argc, argv, &i, "--base", &missing))) {
            a->base = v;
            continue;
        }
        if (missing) return cli_usage(usage, "%s needs a value", arg);
        if (strcmp(arg, "--json") == 0) {
            a->json = 1;
            continue;
        }
        if (strcmp(arg, "--stats") == 0) {
            a->stats = 1;
            continue;
        }
        if (strcmp(arg, "--decode") == 0) {
            a->decode = 1;
            continue;
        }
        if (strncmp(arg, "--", 2) == 0) {
            char name[64];
            const char *eq = strchr(arg + 2, '=');
            size_t n = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
            if (n >= sizeof name) return cli_usage(usage, "%s: unknown option '%s'", cmd, arg);
            memcpy(name, arg + 2, n);
            name[n] = '\0';
            const char *val = eq ? eq + 1 : NULL;
            int flag = st_stream_option_is_flag(name) || strcmp(name, "random-crop") == 0;
            if (!eq && !flag && i + 1 < argc) val = argv[++i];
            int known;
            struct st_error err;
            if (st_stream_option_set(&a->o, name, val, &known, &err)) {
                if (!known && st_decode_option_set(&a->d, name, val, &known, &err) == ST_OK)
                    continue;
                if (!known) return cli_usage(usage, "%s: unknown option '%s'", cmd, arg);
                return cli_usage(usage, "%s", err.msg);
            }
            if (strcmp(name, "shuffle") == 0 || strcmp(name, "no-shuffle") == 0 ||
                strcmp(name, "seed") == 0)
                a->shuffle_set = 1;
            continue;
        }
        if (a->url) return cli_usage(usage, "%s: one URL only (use a brace list or an index)", cmd);
        a->url = arg;
    }
    int mixable = !strcmp(cmd, "cat") || !strcmp(cmd, "bench") || !strcmp(cmd, "preview");
    if (a->n_src && !mixable)
        return cli_usage(usage, "%s: --data is for cat, bench and preview", cmd);
    if (a->n_src && a->url)
        return cli_usage(usage, "%s: give a URL or --data sources, not both", cmd);
    if (!a->url && !a->n_src) return cli_usage(usage, "%s: a URL is required", cmd);
    if (a->n_src || !strcmp(cmd, "preview")) a->decode = 1;
    a->o.url = a->url;
    return -1;
}

static int load_resume(struct data_args *a) {
    if (!a->resume) return 0;
    char *text;
    size_t len;
    struct st_error err;
    if (st_read_file(a->resume, (size_t)1 << 32, &text, &len, &err)) return cli_fail(a->json, &err);
    a->resume_text = text;
    a->o.resume_state = text;
    return 0;
}

static int write_state(struct st_stream *s, const char *path, int json) {
    char buf[8192];
    size_t n = st_stream_state(s, buf, sizeof buf);
    char *p = buf;
    if (n >= sizeof buf) {
        p = malloc(n + 1);
        if (!p) return 1;
        st_stream_state(s, p, n + 1);
    }
    FILE *f = fopen(path, "w");
    int rc = 0;
    if (!f || fprintf(f, "%s\n", p) < 0 || fclose(f) != 0) {
        struct st_error err;
        st_errorf(&err, ST_ERR_IO, "%s: cannot write the state", path);
        rc = cli_fail(json, &err);
    }
    if (p != buf) free(p);
    return rc;
}

/* JSON: one object followed by `end` ("\n" on its own line, "" when embedded). */
static void print_stats_end(FILE *f, const struct st_stream_stats *st, int json, const char *end) {
    if (json) {
        fprintf(f,
                "{\"samples\": %llu, \"bytes_fetched\": %llu, \"bytes_decoded\": %llu, "
                "\"elapsed_s\": %.4f, \"first_sample_s\": %.4f, \"wait_s\": %.4f, "
                "\"mb_per_s\": %.2f, \"samples_per_s\": %.1f, \"requests\": %llu, \"retries\": "
                "%llu, \"retry_conn\": %llu, \"retry_timeout\": %llu, \"retry_truncated\": %llu, "
                "\"retry_5xx\": %llu, \"retry_throttled\": %llu, \"shards_done\": %llu, "
                "\"mem_budget\": %zu, \"mem_peak\": %zu, \"epoch\": %lld, \"shards\": %u}%s",
                (unsigned long long)st->samples, (unsigned long long)st->bytes_fetched,
                (unsigned long long)st->bytes_decoded, st->elapsed_s, st->first_sample_s,
                st->wait_s, st->bytes_per_s / 1e6, st->samples_per_s,
                (unsigned long long)st->requests, (unsigned long long)st->retries,
                (unsigned long long)st->retry_conn, (unsigned long long)st->retry_timeout,
                (unsigned long long)st->retry_truncated, (unsigned long long)st->retry_5xx,
                (unsigned long long)st->retry_throttled, (unsigned long long)st->shards_done,
                st->mem_budget, st->mem_peak, (long long)st->epoch, st->n_shards, end);
        return;
    }
    fprintf(f,
            "samples %llu in %.2f s (%.0f/s); fetched %.1f MB (%.1f MB/s); first sample after "
            "%.3f s; consumer waited %.2f s\n"
            "requests %llu, retries %llu (connection %llu, timeout %llu, truncated %llu, 5xx %llu, "
            "throttled %llu); shards done %llu; memory peak %.1f of %.1f MiB\n",
            (unsigned long long)st->samples, st->elapsed_s, st->samples_per_s,
            (double)st->bytes_fetched / 1e6, st->bytes_per_s / 1e6, st->first_sample_s, st->wait_s,
            (unsigned long long)st->requests, (unsigned long long)st->retries,
            (unsigned long long)st->retry_conn, (unsigned long long)st->retry_timeout,
            (unsigned long long)st->retry_truncated, (unsigned long long)st->retry_5xx,
            (unsigned long long)st->retry_throttled, (unsigned long long)st->shards_done,
            (double)st->mem_peak / 1048576.0, (double)st->mem_budget / 1048576.0);
}

static void print_stats(FILE *f, const struct st_stream_stats *st, int json) {
    print_stats_end(f, st, json, "\n");
}

static int cmd_ls(struct data_args *a) {
    struct st_shard_list l;
    struct st_error err;
    if (st_data_list(&a->o, &l, &err)) return cli_fail(a->json, &err);
    uint64_t total = 0;
    int64_t samples = 0;
    int all_sizes = 1, all_samples = 1;
    if (a->json) printf("{\"shards\": [");
    for (uint32_t i = 0; i < l.n; i++) {
        const struct st_shard_info *s = &l.shards[i];
        if (s->size == UINT64_MAX)
            all_sizes = 0;
        else
            total += s->size;
        if (s->samples < 0)
            all_samples = 0;
        else
            samples += s->samples;
        if (a->json) {
            printf("%s\n  {\"url\": ", i ? "," : "");
            cli_json_string(stdout, s->url);
            printf(", \"name\": ");
            cli_json_string(stdout, s->name);
            if (s->size != UINT64_MAX) printf(", \"bytes\": %llu", (unsigned long long)s->size);
            if (s->samples >= 0) printf(", \"samples\": %lld", (long long)s->samples);
            if (s->etag) {
                printf(", \"etag\": ");
                cli_json_string(stdout, s->etag);
            }
            printf("}");
        } else {
            char sz[32] = "?", ns[32] = "";
            if (s->size != UINT64_MAX) snprintf(sz, sizeof sz, "%llu", (unsigned long long)s->size);
            if (s->samples >= 0) snprintf(ns, sizeof ns, "%lld", (long long)s->samples);
            printf("%14s %10s  %s\n", sz, ns, s->url);
        }
    }
    if (a->json) {
        printf("\n], \"count\": %u", l.n);
        if (all_sizes) printf(", \"bytes\": %llu", (unsigned long long)total);
        if (all_samples) printf(", \"samples\": %lld", (long long)samples);
        printf("}\n");
    } else {
        printf("%u shards", l.n);
        if (all_sizes) printf(", %llu bytes", (unsigned long long)total);
        if (all_samples) printf(", %lld samples", (long long)samples);
        printf("\n");
    }
    st_shard_list_free(&l);
    return 0;
}

static void print_sample(const struct st_sample *smp, const char *field) {
    if (field) {
        const struct st_sample_field *f = st_sample_field(smp, field);
        if (f) {
            fwrite(f->data, 1, f->size, stdout);
            fputc('\n', stdout);
        }
        return;
    }
    if (smp->n_fields == 1 && strcmp(smp->fields[0].name, "json") == 0) {
        fwrite(smp->data, 1, smp->size, stdout);
        fputc('\n', stdout);
        return;
    }
    printf("{\"__key__\": ");
    cli_json_string(stdout, smp->key);
    printf(", \"__url__\": ");
    cli_json_string(stdout, smp->url);
    for (int i = 0; i < smp->n_fields; i++) {
        printf(", ");
        cli_json_string(stdout, smp->fields[i].name);
        printf(": %zu", smp->fields[i].size);
    }
    printf("}\n");
}

/* ---- decoded pipelines: a decoder over URL, or a mix of --data sources ---- */

struct pipe {
    struct st_decoder *d;
    struct st_mix *m;
};

static enum st_status pipe_open(struct pipe *p, struct data_args *a, struct st_error *err) {
    memset(p, 0, sizeof *p);
    if (a->n_src) return st_mix_open(&p->m, &a->o, &a->d, a->src, a->n_src, a->mix_stop, err);
    return st_decoder_open(&p->d, &a->o, &a->d, err);
}

static enum st_status pipe_next(struct pipe *p, struct st_decoded_sample *s, struct st_error *err) {
    return p->m ? st_mix_next(p->m, s, err) : st_decoder_next(p->d, s, err);
}

static size_t pipe_state(struct pipe *p, char *buf, size_t cap) {
    return p->m ? st_mix_state(p->m, buf, cap) : st_decoder_state(p->d, buf, cap);
}

static void pipe_stats(struct pipe *p, struct st_decode_stats *st) {
    if (p->m)
        st_mix_stats(p->m, st, NULL);
    else
        st_decoder_stats(p->d, st);
}

static void pipe_close(struct pipe *p) {
    st_mix_close(p->m);
    st_decoder_close(p->d);
}

/* The next sample across epochs: ST_STREAM_END ends an epoch, and the stream is over once the
 * epoch after it reaches --epoch + --epochs (an epoch whose samples were all skipped also ends
 * at once: two ENDs in a row are not the end of the stream) */
static int epochs_over(const struct data_args *a, int64_t next_epoch) {
    return a->o.epochs > 0 && next_epoch >= a->o.epoch + a->o.epochs;
}

static enum st_status pipe_next_all(struct pipe *p, const struct data_args *a,
                                    struct st_decoded_sample *s, struct st_error *err) {
    for (;;) {
        enum st_status st = pipe_next(p, s, err);
        if (st != ST_STREAM_END) return st;
        struct st_decode_stats stt;
        pipe_stats(p, &stt);
        if (epochs_over(a, stt.stream.epoch)) return ST_STREAM_END;
    }
}

static enum st_status stream_next_all(struct st_stream *s, const struct data_args *a,
                                      struct st_sample *out, struct st_error *err) {
    for (;;) {
        enum st_status st = st_stream_next(s, out, err);
        if (st != ST_STREAM_END) return st;
        struct st_stream_stats stt;
        st_stream_stats(s, &stt);
        if (epochs_over(a, stt.epoch)) return ST_STREAM_END;
    }
}

/* The record may grow between two calls (the reader reads on): ask until it fits. */
static int write_pipe_state(struct pipe *p, const char *path) {
    size_t cap = pipe_state(p, NULL, 0) + 4096;
    char *buf = NULL;
    for (;;) {
        buf = malloc(cap + 1);
        if (!buf) break;
        size_t n = pipe_state(p, buf, cap + 1);
        if (n <= cap) break;
        free(buf);
        buf = NULL;
        cap = n + n / 4;
    }
    struct st_error err;
    if (!buf) {
        st_errorf(&err, ST_ERR_NOMEM, "out of memory writing the state");
        return cli_fail(0, &err);
    }
    FILE *f = fopen(path, "w");
    int rc = 0;
    if (!f || fprintf(f, "%s\n", buf) < 0 || fclose(f) != 0) {
        st_errorf(&err, ST_ERR_IO, "%s: cannot write the state", path);
        rc = cli_fail(0, &err);
    }
    free(buf);
    return rc;
}

static uint64_t fnv1a64(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* One JSON line per decoded sample: key, url, epoch, source, and per field its tensor's dtype,
 * shape and FNV-1a 64 checksum (of the raw bytes for pass-through fields). */
static void print_decoded(const struct st_decoded_sample *s) {
    printf("{\"__key__\": ");
    cli_json_string(stdout, s->key);
    printf(", \"__url__\": ");
    cli_json_string(stdout, s->url);
    printf(", \"__epoch__\": %lld", (long long)s->epoch);
    if (s->source_name) {
        printf(", \"__source__\": ");
        cli_json_string(stdout, s->source_name);
    }
    for (int i = 0; i < s->n_fields; i++) {
        const struct st_decoded_field *f = &s->fields[i];
        printf(", ");
        cli_json_string(stdout, f->name);
        if (f->data) {
            printf(": {\"dtype\": \"%s\", \"shape\": [", st_dtype_name(f->dtype));
            for (int k = 0; k < f->ndim; k++)
                printf("%s%lld", k ? ", " : "", (long long)f->shape[k]);
            printf("], \"fnv1a64\": \"%016llx\"", (unsigned long long)fnv1a64(f->data, f->nbytes));
            if (f->kind == ST_FIELD_IMAGE)
                printf(", \"source_size\": [%d, %d]", f->src_w, f->src_h);
            if (f->kind == ST_FIELD_AUDIO) printf(", \"seconds\": %.4f", f->src_seconds);
            printf("}");
        } else {
            printf(": {\"bytes\": %zu, \"fnv1a64\": \"%016llx\"}", f->raw_size,
                   (unsigned long long)fnv1a64(f->raw, f->raw_size));
        }
    }
    printf("}\n");
}

static void print_decode_stats(FILE *f, const struct st_decode_stats *st, int json) {
    if (json) {
        fprintf(f,
                "{\"decoded\": %llu, \"images\": %llu, \"audio\": %llu, \"skipped\": %llu, "
                "\"skipped_limit\": %llu, \"skipped_corrupt\": %llu, \"skipped_unsupported\": "
                "%llu, \"decode_s\": %.4f, \"wait_s\": %.4f, \"elapsed_s\": %.4f, "
                "\"samples_per_s\": %.2f, \"skipped_samples\": [",
                (unsigned long long)st->samples, (unsigned long long)st->images,
                (unsigned long long)st->audio, (unsigned long long)st->skipped,
                (unsigned long long)st->skipped_limit, (unsigned long long)st->skipped_corrupt,
                (unsigned long long)st->skipped_unsupported, st->decode_s, st->wait_s,
                st->elapsed_s, st->samples_per_s);
        for (int i = 0; i < st->n_skip_log; i++) {
            fprintf(f, "%s{\"key\": ", i ? ", " : "");
            cli_json_string(f, st->skip_log[i].key);
            fprintf(f, ", \"reason\": ");
            cli_json_string(f, st->skip_log[i].reason);
            fprintf(f, "}");
        }
        fprintf(f, "], \"stream\": ");
        print_stats_end(f, &st->stream, 1, "");
        fprintf(f, "}\n");
        return;
    }
    print_stats(f, &st->stream, 0);
    fprintf(f,
            "decoded %llu samples (%llu images, %llu audio clips) in %.2f s (%.1f/s); decode "
            "%.2f thread-s; consumer waited %.2f s\n",
            (unsigned long long)st->samples, (unsigned long long)st->images,
            (unsigned long long)st->audio, st->elapsed_s, st->samples_per_s, st->decode_s,
            st->wait_s);
    fprintf(f, "skipped %llu bad samples (over a limit %llu, corrupt %llu, unsupported %llu)%s\n",
            (unsigned long long)st->skipped, (unsigned long long)st->skipped_limit,
            (unsigned long long)st->skipped_corrupt, (unsigned long long)st->skipped_unsupported,
            st->skipped ? ":" : "");
    for (int i = 0; i < st->n_skip_log; i++)
        fprintf(f, "  %s: %s\n", st->skip_log[i].key, st->skip_log[i].reason);
    if (st->skipped > (uint64_t)st->n_skip_log)
        fprintf(f, "  ... and %llu more (each logged as a warning)\n",
                (unsigned long long)(st->skipped - (uint64_t)st->n_skip_log));
}

static int cmd_cat_decoded(struct data_args *a) {
    struct pipe p;
    struct st_error err;
    if (pipe_open(&p, a, &err)) return cli_fail(a->json, &err);
    long n = 0;
    enum st_status st = ST_OK;
    struct st_decoded_sample smp;
    while (a->limit < 0 || n < a->limit) {
        st = pipe_next_all(&p, a, &smp, &err);
        if (st != ST_OK) break;
        if (a->field) {
            const struct st_decoded_field *f = st_decoded_field(&smp, a->field);
            if (f) {
                fwrite(f->raw, 1, f->raw_size, stdout);
                fputc('\n', stdout);
            }
        } else {
            print_decoded(&smp);
        }
        n++;
    }
    fflush(stdout);
    int rc = 0;
    if (st != ST_OK && st != ST_STREAM_END)
        rc = cli_fail(0, &err);
    else if (a->state_out)
        rc = write_pipe_state(&p, a->state_out);
    if (a->stats) {
        struct st_decode_stats stt;
        pipe_stats(&p, &stt);
        print_decode_stats(stderr, &stt, a->json);
    }
    pipe_close(&p);
    return rc;
}

static int cmd_cat(struct data_args *a) {
    if (!a->shuffle_set) a->o.shuffle = 0;
    if (a->o.epochs == 0) a->o.epochs = 1;
    int rc = load_resume(a);
    if (rc) return rc;
    if (a->decode) return cmd_cat_decoded(a);
    struct st_stream *s;
    struct st_error err;
    if (st_stream_open(&s, &a->o, &err)) return cli_fail(a->json, &err);
    long n = 0;
    enum st_status st = ST_OK;
    struct st_sample smp;
    while (a->limit < 0 || n < a->limit) {
        st = stream_next_all(s, a, &smp, &err);
        if (st != ST_OK) break;
        print_sample(&smp, a->field);
        n++;
    }
    fflush(stdout);
    if (st != ST_OK && st != ST_STREAM_END) {
        st_stream_close(s);
        return cli_fail(0, &err);
    }
    if (a->state_out && (rc = write_state(s, a->state_out, 0))) {
        st_stream_close(s);
        return rc;
    }
    if (a->stats) {
        struct st_stream_stats stt;
        st_stream_stats(s, &stt);
        print_stats(stderr, &stt, a->json);
    }
    st_stream_close(s);
    return 0;
}

static void index_progress(uint32_t done, uint32_t total, void *ctx) {
    struct cli_progress *p = ctx;
    cli_progress_update(p, done, "shards");
}

static int cmd_index(struct data_args *a) {
    const char *out = a->out ? a->out : "-";
    struct cli_progress p;
    cli_progress_start(&p, "indexing", 0);
    struct st_error err;
    if (st_index_write(&a->o, a->base, out, index_progress, &p, &err)) {
        cli_progress_end(&p);
        return cli_fail(a->json, &err);
    }
    cli_progress_end(&p);
    if (strcmp(out, "-") != 0 && !a->json) fprintf(stderr, "wrote %s\n", out);
    if (strcmp(out, "-") != 0 && a->json) { /* (to stdout, the index itself is the object) */
        printf("{\"out\": ");
        cli_json_string(stdout, out);
        printf("}\n");
    }
    return 0;
}

static int cmd_bench_decoded(struct data_args *a) {
    struct pipe p;
    struct st_error err;
    if (pipe_open(&p, a, &err)) return cli_fail(a->json, &err);
    long n = 0;
    double t0 = st_time_now();
    struct st_decoded_sample smp;
    while ((a->limit < 0 || n < a->limit) && (a->seconds <= 0 || st_time_now() - t0 < a->seconds)) {
        enum st_status st = pipe_next_all(&p, a, &smp, &err);
        if (st == ST_STREAM_END) break;
        if (st != ST_OK) {
            pipe_close(&p);
            return cli_fail(a->json, &err);
        }
        n++;
    }
    struct st_decode_stats stt;
    pipe_stats(&p, &stt);
    pipe_close(&p);
    if (a->json) {
        print_decode_stats(stdout, &stt, 1);
        return 0;
    }
    printf("time to first sample  %.3f s\n", stt.stream.first_sample_s);
    printf("decoded samples       %llu (%.1f/s; %llu images, %llu audio clips)\n",
           (unsigned long long)stt.samples, stt.samples_per_s, (unsigned long long)stt.images,
           (unsigned long long)stt.audio);
    printf("decode time           %.2f thread-s (%.2f ms per sample; %d decode threads)\n",
           stt.decode_s, stt.samples ? 1e3 * stt.decode_s / (double)stt.samples : 0, a->d.threads);
    printf("skipped               %llu bad samples\n", (unsigned long long)stt.skipped);
    printf("fetched               %.1f MB (%.1f MB/s) in %llu requests, %llu retries\n",
           (double)stt.stream.bytes_fetched / 1e6, stt.stream.bytes_per_s / 1e6,
           (unsigned long long)stt.stream.requests, (unsigned long long)stt.stream.retries);
    printf("consumer waited       %.3f s of %.3f s\n", stt.wait_s, stt.elapsed_s);
    printf("memory peak           %.1f of %.1f MiB (stream buffers)\n",
           (double)stt.stream.mem_peak / 1048576.0, (double)stt.stream.mem_budget / 1048576.0);
    return 0;
}

static int cmd_preview(struct data_args *a) {
    if (!a->out) return cli_usage(usage, "preview: --out FILE.png is required");
    if (!a->shuffle_set) a->o.shuffle = 0;
    if (a->o.epochs == 0) a->o.epochs = 1;
    struct st_error err;
    struct st_image_transform t;
    int native;
    if (st_decode_image_transform(&a->d, &t, &native, &err)) return cli_usage(usage, "%s", err.msg);
    int tile = native ? 224 : t.size < 64 ? 64 : t.size > 512 ? 512 : t.size;
    int cols = (int)ceil(sqrt((double)a->n)), rows = (int)((a->n + cols - 1) / cols), gap = 4;
    int W = cols * tile + (cols + 1) * gap, H = rows * tile + (rows + 1) * gap;
    uint8_t *grid = calloc((size_t)W * (size_t)H, 3);
    uint8_t *cell = malloc((size_t)tile * (size_t)tile * 3);
    if (!grid || !cell) {
        free(grid);
        free(cell);
        st_errorf(&err, ST_ERR_NOMEM, "out of memory for a %dx%d grid", W, H);
        return cli_fail(a->json, &err);
    }
    memset(grid, 32, (size_t)W * (size_t)H * 3);
    struct pipe p;
    int rc = 0, k = 0, n_img = 0, n_aud = 0;
    if (pipe_open(&p, a, &err)) {
        rc = cli_fail(a->json, &err);
        goto out;
    }
    while (k < a->n) {
        struct st_decoded_sample smp;
        enum st_status st = pipe_next(&p, &smp, &err);
        if (st == ST_STREAM_END) break;
        if (st != ST_OK) {
            rc = cli_fail(a->json, &err);
            break;
        }
        for (int i = 0; i < smp.n_fields && k < a->n; i++) {
            const struct st_decoded_field *f = &smp.fields[i];
            if (f->kind == ST_FIELD_RAW) continue;
            if (st_decode_render(f, &a->d, cell, tile, &err)) continue;
            int x0 = gap + (k % cols) * (tile + gap), y0 = gap + (k / cols) * (tile + gap);
            for (int y = 0; y < tile; y++)
                memcpy(grid + ((size_t)(y0 + y) * (size_t)W + (size_t)x0) * 3,
                       cell + (size_t)y * (size_t)tile * 3, (size_t)tile * 3);
            if (f->kind == ST_FIELD_IMAGE)
                n_img++;
            else
                n_aud++;
            k++;
        }
    }
    pipe_close(&p);
    if (rc) goto out;
    if (st_png_write(a->out, grid, W, H, &err)) {
        rc = cli_fail(a->json, &err);
        goto out;
    }
    if (a->json) {
        printf("{\"out\": ");
        cli_json_string(stdout, a->out);
        printf(", \"width\": %d, \"height\": %d, \"tiles\": %d, \"images\": %d, "
               "\"audio\": %d, \"tile\": %d}\n",
               W, H, k, n_img, n_aud, tile);
    } else {
        fprintf(stderr, "wrote %s (%dx%d): %d images, %d log-mel pictures, tiles of %d px\n",
                a->out, W, H, n_img, n_aud, tile);
    }
out:
    free(grid);
    free(cell);
    return rc;
}

static int cmd_bench(struct data_args *a) {
    if (a->o.epochs == 0) a->o.epochs = 1;
    if (a->decode) return cmd_bench_decoded(a);
    struct st_stream *s;
    struct st_error err;
    if (st_stream_open(&s, &a->o, &err)) return cli_fail(a->json, &err);
    long n = 0;
    uint64_t bytes = 0;
    double t0 = st_time_now();
    enum st_status st;
    struct st_sample smp;
    while ((a->limit < 0 || n < a->limit) && (a->seconds <= 0 || st_time_now() - t0 < a->seconds)) {
        st = stream_next_all(s, a, &smp, &err);
        if (st == ST_STREAM_END) break;
        if (st != ST_OK) {
            st_stream_close(s);
            return cli_fail(a->json, &err);
        }
        for (int i = 0; i < smp.n_fields; i++)
            bytes += smp.fields[i].size;
        n++;
    }
    struct st_stream_stats stt;
    st_stream_stats(s, &stt);
    st_stream_close(s);
    if (a->json) {
        print_stats(stdout, &stt, 1);
    } else {
        printf("time to first sample  %.3f s\n", stt.first_sample_s);
        printf("samples               %ld (%.0f/s)\n", n, stt.samples_per_s);
        printf("throughput            %.1f MB/s fetched, %.1f MB/s of records\n",
               stt.bytes_per_s / 1e6, stt.elapsed_s > 0 ? (double)bytes / stt.elapsed_s / 1e6 : 0);
        printf("fetched               %.1f MB in %llu requests, %llu retries\n",
               (double)stt.bytes_fetched / 1e6, (unsigned long long)stt.requests,
               (unsigned long long)stt.retries);
        printf("consumer waited       %.3f s of %.3f s\n", stt.wait_s, stt.elapsed_s);
        printf("memory peak           %.1f of %.1f MiB\n", (double)stt.mem_peak / 1048576.0,
               (double)stt.mem_budget / 1048576.0);
    }
    return 0;
}

int cmd_data(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        print_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : 0;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "ls") && strcmp(sub, "cat") && strcmp(sub, "index") && strcmp(sub, "bench") &&
        strcmp(sub, "preview"))
        return cli_usage(usage, "data: unknown command '%s'", sub);
    struct data_args a;
    int rc = parse_args(argc, argv, &a, sub);
    if (rc >= 0) {
        free_args(&a);
        return rc;
    }
    if (strcmp(sub, "ls") == 0)
        rc = cmd_ls(&a);
    else if (strcmp(sub, "cat") == 0)
        rc = cmd_cat(&a);
    else if (strcmp(sub, "index") == 0)
        rc = cmd_index(&a);
    else if (strcmp(sub, "preview") == 0)
        rc = cmd_preview(&a);
    else
        rc = cmd_bench(&a);
    free_args(&a);
    return rc;
}
