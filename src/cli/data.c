/* data.c: `streamtune data ls|cat|index|bench`: look at, index and measure a streamed dataset.
 *
 * DESIGN: a client of the public data API only (include/streamtune/data.h). Stream options are
 * parsed by st_stream_option_set so every command (and later `train`) spells them the same. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "streamtune/data.h"

static const char *usage =
    "usage: streamtune data <ls|cat|index|bench> URL [options]\n"
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
    "\n"
    "URL: a file, directory or glob, file://, http(s)://, s3://bucket/prefix, or an index *.json;\n"
    "brace lists expand (shard-{000..099}.jsonl.zst). Every command takes --json.\n"
    "\n";

static void print_usage(FILE *f) {
    fputs(usage, f);
    fputs(st_stream_options_help, f);
}

struct data_args {
    const char *url;
    long limit;
    double seconds;
    const char *state_out, *resume, *field, *out, *base;
    int json, stats, shuffle_set;
    struct st_stream_options o;
    char *resume_text;
};

/* Parse argv into a; returns -1 when done, else an exit code (help or usage error). */
static int parse_args(int argc, char **argv, struct data_args *a, const char *cmd) {
    memset(a, 0, sizeof *a);
    st_stream_options_init(&a->o);
    a->limit = -1;
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
        if ((v = cli_opt(argc, argv, &i, "-o", &missing)) ||
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
        if (strncmp(arg, "--", 2) == 0) {
            char name[64];
            const char *eq = strchr(arg + 2, '=');
            size_t n = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
            if (n >= sizeof name) return cli_usage(usage, "%s: unknown option '%s'", cmd, arg);
            memcpy(name, arg + 2, n);
            name[n] = '\0';
            const char *val = eq ? eq + 1 : NULL;
            int flag = strcmp(name, "no-shuffle") == 0 || strcmp(name, "shuffle") == 0 ||
                       strcmp(name, "no-json-check") == 0 || strcmp(name, "anonymous") == 0;
            if (!eq && !flag && i + 1 < argc) val = argv[++i];
            int known;
            struct st_error err;
            if (st_stream_option_set(&a->o, name, val, &known, &err)) {
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
    if (!a->url) return cli_usage(usage, "%s: a URL is required", cmd);
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

static void print_stats(FILE *f, const struct st_stream_stats *st, int json) {
    if (json) {
        fprintf(f,
                "{\"samples\": %llu, \"bytes_fetched\": %llu, \"bytes_decoded\": %llu, "
                "\"elapsed_s\": %.4f, \"first_sample_s\": %.4f, \"wait_s\": %.4f, "
                "\"mb_per_s\": %.2f, \"samples_per_s\": %.1f, \"requests\": %llu, \"retries\": "
                "%llu, \"retry_conn\": %llu, \"retry_timeout\": %llu, \"retry_truncated\": %llu, "
                "\"retry_5xx\": %llu, \"retry_throttled\": %llu, \"shards_done\": %llu, "
                "\"mem_budget\": %zu, \"mem_peak\": %zu, \"epoch\": %lld, \"shards\": %u}\n",
                (unsigned long long)st->samples, (unsigned long long)st->bytes_fetched,
                (unsigned long long)st->bytes_decoded, st->elapsed_s, st->first_sample_s,
                st->wait_s, st->bytes_per_s / 1e6, st->samples_per_s,
                (unsigned long long)st->requests, (unsigned long long)st->retries,
                (unsigned long long)st->retry_conn, (unsigned long long)st->retry_timeout,
                (unsigned long long)st->retry_truncated, (unsigned long long)st->retry_5xx,
                (unsigned long long)st->retry_throttled, (unsigned long long)st->shards_done,
                st->mem_budget, st->mem_peak, (long long)st->epoch, st->n_shards);
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

static int cmd_cat(struct data_args *a) {
    if (!a->shuffle_set) a->o.shuffle = 0;
    if (a->o.epochs == 0) a->o.epochs = 1;
    int rc = load_resume(a);
    if (rc) return rc;
    struct st_stream *s;
    struct st_error err;
    if (st_stream_open(&s, &a->o, &err)) return cli_fail(a->json, &err);
    long n = 0;
    enum st_status st = ST_OK;
    struct st_sample smp;
    while (a->limit < 0 || n < a->limit) {
        st = st_stream_next(s, &smp, &err);
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
    return 0;
}

static int cmd_bench(struct data_args *a) {
    if (a->o.epochs == 0) a->o.epochs = 1;
    struct st_stream *s;
    struct st_error err;
    if (st_stream_open(&s, &a->o, &err)) return cli_fail(a->json, &err);
    long n = 0;
    uint64_t bytes = 0;
    double t0 = st_time_now();
    enum st_status st;
    struct st_sample smp;
    while ((a->limit < 0 || n < a->limit) && (a->seconds <= 0 || st_time_now() - t0 < a->seconds)) {
        st = st_stream_next(s, &smp, &err);
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
    if (strcmp(sub, "ls") && strcmp(sub, "cat") && strcmp(sub, "index") && strcmp(sub, "bench"))
        return cli_usage(usage, "data: unknown command '%s'", sub);
    struct data_args a;
    int rc = parse_args(argc, argv, &a, sub);
    if (rc >= 0) return rc;
    if (strcmp(sub, "ls") == 0)
        rc = cmd_ls(&a);
    else if (strcmp(sub, "cat") == 0)
        rc = cmd_cat(&a);
    else if (strcmp(sub, "index") == 0)
        rc = cmd_index(&a);
    else
        rc = cmd_bench(&a);
    st_free(a.resume_text);
    return rc;
}
