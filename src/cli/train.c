/* train.c: `streamtune train --model DIR --data FILE|DIR --out DIR [options]`: LoRA fine-tuning.
 * Progress: a bar on a terminal (step, loss, lr, tokens/s, ETA), plain lines otherwise; --json
 * prints one JSON object per step/eval/save line instead. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "streamtune/train.h"

static const char *usage =
    "usage: streamtune train --model DIR --data URL --out DIR [options]\n"
    "  data: a JSONL file or folder, file://, http(s)://, s3://bucket/prefix or an index; records\n"
    "  {\"text\"}, {\"prompt\", \"completion\"}, {\"messages\"} or {\"ids\"}; train* and valid*\n"
    "  files of a folder/prefix are split into training and validation (mlx-lm layout)\n"
    "  --val-data FILE      validation records (default DIR/valid.jsonl)\n"
    "  --steps N            optimizer steps (1000)\n"
    "  --batch-size B       records per micro-batch (4)\n"
    "  --grad-accum K       micro-batches per step (1)\n"
    "  --max-seq-len T      truncate records to T tokens (2048)\n"
    "  --lr LR              peak learning rate (2e-4); --min-lr (0)\n"
    "  --warmup N           warm-up steps (min(100, steps/10))\n"
    "  --schedule S         cosine | linear | constant (cosine)\n"
    "  --weight-decay W     AdamW decoupled weight decay (0)\n"
    "  --max-grad-norm G    global-norm clipping (1.0; 0 = off)\n"
    "  --rank R --alpha A   LoRA rank (8) and alpha (16): scale alpha/rank; --rslora: alpha/sqrt(r)\n"
    "  --dropout P          LoRA dropout (0)\n"
    "  --targets LIST       q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj | attn | mlp\n"
    "                       | all-linear (default)\n"
    "  --layers all|last:N  which layers get adapters (all)\n"
    "  --seed S             data order, init and dropout (0)\n"
    "  --eval-every N       validation loss every N steps (200); --val-batches N (all)\n"
    "  --save-every N       checkpoint every N steps (200; 0: only the final adapter and\n"
    "                       checkpoint); --keep-checkpoints K (2)\n"
    "  --grad-checkpoint    recompute layers in backward: less memory, ~30% more compute\n"
    "  --quantize nf4|int8  QLoRA: store the frozen base in 4-bit NF4 (or int8 per channel),\n"
    "                       quantised while loading; adapters stay F32\n"
    "  --no-double-quant    NF4 absmax in F32 instead of 8 bits (+0.047 bytes/parameter)\n"
    "  --keep-embeddings    do not quantise the embedding and LM head\n"
    "  --compute bf16|f32   frozen-weight matmuls in BF16 (AVX512_BF16 or AArch64 BFDOT where\n"
    "                       the CPU has it; F32 accumulation, F32 adapters and optimizer),\n"
    "                       and attention's products too where the CPU has AVX512_BF16;\n"
    "                       default f32 (weights packed once for streamtune's F32 GEMM;\n"
    "                       f32-blas: plain weights and BLAS calls, for comparison;\n"
    "                       a quantised base still uses streamtune's F32 GEMM)\n"
    "  --max-memory SIZE    refuse a plan above SIZE (e.g. 8G)\n"
    "  --resume DIR         continue from DIR's latest checkpoint (same data and settings)\n"
    "  --adapter DIR        start from an existing PEFT adapter\n"
    "  --data-format F      auto | text | completions | chat | ids (auto: per record)\n"
    "  --data-rank R        this process's data partition with --world-size W (the stream's\n"
    "                       --rank; here --rank is the LoRA rank)\n"
    "  --text-field, --prompt-field, --completion-field, --messages-field, --tools-field NAME\n"
    "                       the records' JSON keys\n"
    "  --train-on-prompt    also train prompt / non-assistant tokens\n"
    "  --no-pack            one record per row (padded) instead of packing records into rows\n"
    "  --no-eos             do not append EOS to text and completion records\n"
    "  -c FILE              options from a JSON or YAML file (flags given later override it)\n"
    "  stream options       --stream-memory 512M, --endpoint-url URL, --connections N, ...\n"
    "  --dry-run            print the memory plan and stop\n"
    "  --json               one JSON object per progress line\n";

struct progress {
    int json, tty;
    double last;
};

static void on_event(void *ctx, const struct st_train_event *ev) {
    struct progress *p = ctx;
    if (!p->json && st_log_get_level() < ST_LOG_INFO) return; /* --quiet: errors only */
    if (!strcmp(ev->kind, "plan")) {
        if (p->json) {
            printf("{\"kind\": \"plan\", \"bytes\": %zu, \"steps\": %ld}\n", ev->plan_bytes,
                   ev->total_steps);
        } else {
            fprintf(stderr, "%s\n", ev->plan_text);
        }
    } else if (!strcmp(ev->kind, "train")) {
        if (p->json) {
            char lb[40], gb[40];
            printf("{\"kind\": \"train\", \"step\": %ld, \"steps\": %ld, \"loss\": %s, \"lr\": "
                   "%.6g, \"grad_norm\": %s, \"tokens\": %zu, \"tokens_per_s\": %.1f, "
                   "\"step_seconds\": %.4f, \"data_wait\": %.4f, \"elapsed\": %.2f, "
                   "\"eta\": %.1f}\n",
                   ev->step, ev->total_steps, st_json_num(lb, sizeof lb, "%.6f", ev->loss), ev->lr,
                   st_json_num(gb, sizeof gb, "%.4f", ev->grad_norm), ev->tokens,
                   ev->tokens_per_s, ev->step_seconds, ev->data_wait_frac, ev->elapsed, ev->eta);
        } else if (p->tty) {
            double frac = (double)ev->step / (double)ev->total_steps;
            int w = 24, fill = (int)(frac * w);
            char bar[32];
            for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
            bar[w] = '\0';
            fprintf(stderr, "\rtrain [%s] %ld/%ld loss %.4f lr %.2e %.0f tok/s data wait %.1f%% eta %.0fs   ",
                    bar, ev->step, ev->total_steps, ev->loss, ev->lr, ev->tokens_per_s,
                    100 * ev->data_wait_frac, ev->eta);
        } else if (ev->step == 1 || ev->step == ev->total_steps ||
                   ev->elapsed - p->last >= 10.0) {
            fprintf(stderr, "step %ld/%ld loss %.4f lr %.2e %.0f tok/s data wait %.1f%% eta %.0fs\n",
                    ev->step, ev->total_steps, ev->loss, ev->lr, ev->tokens_per_s,
                    100 * ev->data_wait_frac, ev->eta);
            p->last = ev->elapsed;
        }
    } else if (!strcmp(ev->kind, "eval")) {
        char vb[40];
        if (p->json)
            printf("{\"kind\": \"eval\", \"step\": %ld, \"val_loss\": %s}\n", ev->step,
                   st_json_num(vb, sizeof vb, "%.6f", ev->val_loss));
        else
            fprintf(stderr, "%sstep %ld: validation loss %.4f (ppl %.2f)\n", p->tty ? "\n" : "",
                    ev->step, ev->val_loss, exp(ev->val_loss));
    } else if (!strcmp(ev->kind, "save")) {
        if (p->json) {
            printf("{\"kind\": \"save\", \"step\": %ld, \"path\": ", ev->step);
            cli_json_string(stdout, ev->path);
            printf("}\n");
        } else if (!p->tty) {
            fprintf(stderr, "step %ld: checkpoint %s\n", ev->step, ev->path);
        }
    }
    fflush(stdout);
}

/* A stream option at argv[*i] (--stream-memory 512M, --no-shuffle, ...): 1 when it was one (*i
 * moved past its value, if it takes one), 0 when it is not a stream option. */
static int stream_option(struct st_train_options *o, int argc, char **argv, int *i) {
    char name[64];
    const char *a = argv[*i] + 2, *eq = strchr(a, '='), *value = NULL;
    size_t n = eq ? (size_t)(eq - a) : strlen(a);
    if (n >= sizeof name) return 0;
    memcpy(name, a, n);
    name[n] = '\0';
    int flag = st_stream_option_is_flag(name), take = 0;
    if (eq) {
        value = eq + 1; /* --stream-memory=512M */
    } else if (!flag) {
        if (*i + 1 >= argc) { /* last on the line: a known option without its value */
            int known = 1;
            struct st_error e;
            st_stream_option_set(&o->stream, name, NULL, &known, &e);
            if (!known) return 0;
            cli_usage("", "%s needs a value", argv[*i]);
            exit(CLI_EXIT_USAGE);
        }
        value = argv[*i + 1];
        take = 1;
    }
    int known = 1;
    struct st_error e;
    if (st_stream_option_set(&o->stream, name, value, &known, &e) != ST_OK) {
        if (known) {
            cli_usage("", "%s", e.msg);
            exit(CLI_EXIT_USAGE);
        }
        return 0;
    }
    if (known && take) (*i)++;
    return known;
}

/* -c FILE: a JSON object or the YAML subset `key: value` (# comments) of option names without
 * the leading dashes, as flags; command-line flags given after it override it (they come later
 * in argv). Anything else is an error naming the file and line: a config that half-parses would
 * train with defaults the user did not choose. */
static int config_args(const char *path, char ***out, int *n) {
    char *text;
    size_t len;
    struct st_error e;
    if (st_read_file(path, 1u << 20, &text, &len, &e)) {
        fprintf(stderr, "streamtune: %s\n", e.msg);
        return 1;
    }
    char **v = calloc(512, sizeof *v);
    int k = 0, bad = !v;
    size_t lead = 0;
    while (lead < len && (text[lead] == ' ' || text[lead] == '\t' || text[lead] == '\r' ||
                          text[lead] == '\n'))
        lead++;
    cJSON *root = NULL;
    if (!bad && lead < len && text[lead] == '{') {
        const char *end = NULL;
        root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
        while (root && end < text + len && (*end == ' ' || *end == '\t' || *end == '\r' ||
                                             *end == '\n'))
            end++;
        if (!root || end != text + len) {
            fprintf(stderr, "streamtune: %s: not valid JSON (near byte %ld)\n", path,
                    end ? (long)(end - text) : 0L);
            bad = 1;
        }
        for (cJSON *x = root ? root->child : NULL; x && !bad; x = x->next) {
            char flag[256], val[1024];
            snprintf(flag, sizeof flag, "--%s", x->string);
            if (k > 508) {
                fprintf(stderr, "streamtune: %s: too many options\n", path);
                bad = 1;
            } else if (cJSON_IsBool(x)) {
                if (cJSON_IsTrue(x)) v[k++] = strdup(flag);
            } else if (cJSON_IsString(x) || cJSON_IsNumber(x)) {
                if (cJSON_IsString(x)) snprintf(val, sizeof val, "%s", x->valuestring);
                else snprintf(val, sizeof val, "%.17g", x->valuedouble);
                v[k++] = strdup(flag);
                v[k++] = strdup(val);
            } else {
                fprintf(stderr, "streamtune: %s: \"%s\": expected a string, a number or "
                        "true/false\n", path, x->string);
                bad = 1;
            }
        }
    } else if (!bad) { /* YAML subset: key: value, # comments */
        long lineno = 0;
        for (char *line = text, *next; line && !bad; line = next) {
            lineno++;
            next = strchr(line, '\n');
            if (next) *next++ = '\0';
            char *hash = strchr(line, '#');
            if (hash) *hash = '\0';
            char *colon = strchr(line, ':');
            char *key = line;
            while (*key == ' ' || *key == '\t' || *key == '\r') key++;
            if (!colon) {
                if (*key && strncmp(key, "---", 3) != 0 && strncmp(key, "...", 3) != 0) {
                    fprintf(stderr, "streamtune: %s:%ld: expected 'key: value'\n", path, lineno);
                    bad = 1;
                }
                continue;
            }
            *colon = '\0';
            char *val = colon + 1;
            while (*val == ' ' || *val == '\t') val++;
            for (char *e2 = key + strlen(key); e2 > key && (e2[-1] == ' ' || e2[-1] == '\t');) *--e2 = '\0';
            for (char *e2 = val + strlen(val); e2 > val && (e2[-1] == ' ' || e2[-1] == '\t' || e2[-1] == '\r');) *--e2 = '\0';
            size_t vl = strlen(val);
            if (vl >= 2 && (val[0] == '"' || val[0] == '\'') && val[vl - 1] == val[0]) {
                val[vl - 1] = '\0';
                val++;
            } else if (!*val || !*key) {
                fprintf(stderr, "streamtune: %s:%ld: %s\n", path, lineno,
                        !*key ? "expected 'key: value'" : "a key without a value (lists and "
                        "nested keys are not options)");
                bad = 1;
                continue;
            }
            if (k > 508) {
                fprintf(stderr, "streamtune: %s: too many options\n", path);
                bad = 1;
                continue;
            }
            char flag[256];
            snprintf(flag, sizeof flag, "--%s", key);
            if (!strcmp(val, "true")) v[k++] = strdup(flag);
            else if (strcmp(val, "false") != 0) {
                v[k++] = strdup(flag);
                v[k++] = strdup(val);
            }
        }
    }
    cJSON_Delete(root);
    st_free(text);
    if (bad) {
        for (int i = 0; v && i < k; i++) free(v[i]);
        free(v);
        return 1;
    }
    *out = v;
    *n = k;
    return 0;
}

static int train_args(int argc, char **argv);

int cmd_train(int argc, char **argv) {
    /* -c FILE / --config FILE: expand its options in front of the command line */
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "-c") != 0 && strcmp(argv[i], "--config") != 0) continue;
        char **cv;
        int cn;
        if (config_args(argv[i + 1], &cv, &cn)) return CLI_EXIT_USAGE;
        char **nv = calloc((size_t)(argc + cn), sizeof *nv);
        if (!nv) {
            for (int j = 0; j < cn; j++) free(cv[j]);
            free(cv);
            fprintf(stderr, "streamtune: out of memory\n");
            return CLI_EXIT_ERR;
        }
        int k = 0;
        nv[k++] = argv[0];
        for (int j = 0; j < cn; j++) nv[k++] = cv[j];
        for (int j = 1; j < argc; j++)
            if (j != i && j != i + 1) nv[k++] = argv[j];
        int rc = train_args(k, nv);
        for (int j = 0; j < cn; j++) free(cv[j]);
        free(cv);
        free(nv);
        return rc;
    }
    return train_args(argc, argv);
}

static int train_args(int argc, char **argv) {
    struct st_train_options o;
    st_train_options_default(&o);
    int json = 0;
    const char *targets = NULL, *layers = NULL;
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *v = NULL, *a = argv[i];
        long n;
        double d;
#define OPT(name) (!missing && (v = cli_opt(argc, argv, &i, name, &missing)))
#define BAD(...) return cli_usage(usage, __VA_ARGS__)
        if (OPT("--model")) o.model_dir = v;
        else if (OPT("--data")) o.data = v;
        else if (OPT("--val-data")) o.val_data = v;
        else if (OPT("--out")) o.out_dir = v;
        else if (OPT("--resume")) o.resume = v;
        else if (OPT("--adapter")) o.init_adapter = v;
        else if (OPT("--steps")) {
            if (cli_int(v, 1, 100000000, &n)) BAD("--steps: expected a positive integer");
            o.steps = n;
        } else if (OPT("--batch-size")) {
            if (cli_int(v, 1, 65536, &n)) BAD("--batch-size: expected 1..65536");
            o.batch_size = (int)n;
        } else if (OPT("--grad-accum")) {
            if (cli_int(v, 1, 65536, &n)) BAD("--grad-accum: expected 1..65536");
            o.grad_accum = (int)n;
        } else if (OPT("--max-seq-len")) {
            if (cli_int(v, 2, 1 << 24, &n)) BAD("--max-seq-len: expected >= 2");
            o.max_seq_len = (int)n;
        } else if (OPT("--lr")) {
            if (cli_float(v, 1e-12, 10, &d)) BAD("--lr: expected a positive number");
            o.lr = d;
        } else if (OPT("--min-lr")) {
            if (cli_float(v, 0, 10, &d)) BAD("--min-lr: expected >= 0");
            o.min_lr = d;
        } else if (OPT("--warmup")) {
            if (cli_int(v, 0, 100000000, &n)) BAD("--warmup: expected >= 0");
            o.warmup = n;
        } else if (OPT("--schedule")) {
            struct st_error e;
            if (st_schedule_parse(v, &o.schedule, &e)) BAD("%s", e.msg);
        } else if (OPT("--weight-decay")) {
            if (cli_float(v, 0, 10, &d)) BAD("--weight-decay: expected >= 0");
            o.weight_decay = d;
        } else if (OPT("--max-grad-norm")) {
            if (cli_float(v, 0, 1e9, &d)) BAD("--max-grad-norm: expected >= 0");
            o.max_grad_norm = d;
        } else if (OPT("--rank")) {
            if (cli_int(v, 1, 4096, &n)) BAD("--rank: expected 1..4096");
            o.lora.rank = (int)n;
        } else if (OPT("--alpha")) {
            if (cli_float(v, 1e-6, 1e6, &d)) BAD("--alpha: expected a positive number");
            o.lora.alpha = (float)d;
        } else if (OPT("--dropout")) {
            if (cli_float(v, 0, 0.99, &d)) BAD("--dropout: expected 0..0.99");
            o.lora.dropout = (float)d;
        } else if (OPT("--targets")) targets = v;
        else if (OPT("--layers")) layers = v;
        else if (OPT("--seed")) {
            if (cli_int(v, 0, INT64_MAX, &n)) BAD("--seed: expected a non-negative integer");
            o.seed = (uint64_t)n;
        } else if (OPT("--eval-every")) {
            if (cli_int(v, 0, 100000000, &n)) BAD("--eval-every: expected >= 0");
            o.eval_every = n;
        } else if (OPT("--val-batches")) {
            if (cli_int(v, 0, 100000000, &n)) BAD("--val-batches: expected >= 0");
            o.val_batches = n;
        } else if (OPT("--save-every")) {
            if (cli_int(v, 0, 100000000, &n)) BAD("--save-every: expected >= 0");
            o.save_every = n;
        } else if (OPT("--keep-checkpoints")) {
            if (cli_int(v, 0, 1000000, &n)) BAD("--keep-checkpoints: expected >= 0");
            o.keep_checkpoints = (int)n;
        } else if (OPT("--quantize")) {
            if (st_quant_parse(v, &o.load.quantize)) BAD("--quantize: expected nf4, int8 or none");
        } else if (OPT("--compute")) {
            if (cli_compute(v, &o.load)) BAD("--compute: expected bf16, f32 or f32-blas");
        } else if (OPT("--data-format")) {
            struct st_error fe;
            if (st_data_format_parse(v, &o.examples.format, &fe)) BAD("--data-format: %s", fe.msg);
        } else if (OPT("--text-field")) o.examples.text_field = v;
        else if (OPT("--prompt-field")) o.examples.prompt_field = v;
        else if (OPT("--completion-field")) o.examples.completion_field = v;
        else if (OPT("--messages-field")) o.examples.messages_field = v;
        else if (OPT("--tools-field")) o.examples.tools_field = v;
        else if (OPT("--data-rank")) { /* the stream's --rank: --rank is the LoRA rank here */
            struct st_error re;
            int known;
            if (st_stream_option_set(&o.stream, "rank", v, &known, &re)) BAD("--data-rank: %s", re.msg);
        }
        else if (OPT("--max-memory")) {
            if (st_parse_bytes(v, &o.max_memory)) BAD("--max-memory: expected a size like 8G");
        } else if (missing) BAD("%s needs a value", a);
        else if (!strncmp(a, "--", 2) && strcmp(a, "--help") != 0 &&
                 stream_option(&o, argc, argv, &i))
            ; /* a stream option (--stream-memory, --endpoint-url, --connections, ...) */
        else if (!strcmp(a, "--grad-checkpoint")) o.grad_checkpoint = 1;
        else if (!strcmp(a, "--no-double-quant")) o.load.double_quant = 0;
        else if (!strcmp(a, "--keep-embeddings")) o.load.keep_embeddings = 1;
        else if (!strcmp(a, "--rslora")) o.lora.rslora = 1;
        else if (!strcmp(a, "--no-eos")) o.examples.add_eos = 0;
        else if (!strcmp(a, "--no-pack")) o.pack = 0;
        else if (!strcmp(a, "--pack")) o.pack = 1;
        else if (!strcmp(a, "--train-on-prompt")) o.examples.train_on_prompt = 1;
        else if (!strcmp(a, "--dry-run")) o.dry_run = 1;
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--help")) {
            fputs(usage, stdout);
            return 0;
        } else BAD("train: unknown option '%s'", a);
#undef OPT
#undef BAD
    }
    if (!o.model_dir || !o.data || (!o.out_dir && !o.dry_run))
        return cli_usage(usage, "train: --model, --data and --out are required");
    if (!o.out_dir) o.out_dir = ".";
    struct st_error err = {0};
    if (targets && st_lora_parse_targets(targets, &o.lora.targets, &err))
        return cli_usage(usage, "%s", err.msg);
    if (layers && strcmp(layers, "all") != 0) {
        long nl;
        if (strncmp(layers, "last:", 5) != 0 || cli_int(layers + 5, 1, ST_MAX_LAYERS, &nl))
            return cli_usage(usage, "--layers: expected all or last:N, got '%s'", layers);
        o.lora.first_layer = -(int)nl; /* resolved against the model below */
    }
    if (o.lora.first_layer < 0) {
        struct st_model_config c;
        if (st_config_load(&c, o.model_dir, &err)) return cli_fail(json, &err);
        int first = c.n_layers + o.lora.first_layer;
        o.lora.first_layer = first < 0 ? 0 : first;
    }
    struct progress p = {json, isatty(2) && !json, 0};
    enum st_status rc = st_train(&o, on_event, &p, &err);
    if (p.tty && st_log_get_level() >= ST_LOG_INFO) fputc('\n', stderr);
    if (rc) return cli_fail(json, &err);
    if (!o.dry_run) {
        if (json) {
            printf("{\"kind\": \"done\", \"adapter\": ");
            cli_json_string(stdout, o.out_dir);
            printf("}\n");
        } else if (st_log_get_level() >= ST_LOG_INFO) {
            fprintf(stderr, "adapter written to %s (adapter_config.json, "
                            "adapter_model.safetensors)\n", o.out_dir);
        }
    }
    return 0;
}
