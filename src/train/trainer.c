/* trainer.c: the LoRA training loop.
 *
 * DESIGN: everything a step depends on is a pure function of (seed, step, data position): the
 * record order of epoch e is a seeded permutation, LoRA dropout masks are hashed from (seed,
 * step, micro-batch), the learning rate from the step. A checkpoint therefore needs only the
 * adapter, the AdamW moments, the step and the data position, and a resumed run repeats an
 * uninterrupted one bit for bit (same thread count). Memory is planned before the first step
 * (weights, adapter + gradients + moments, activations, data) and printed; --max-memory refuses
 * a plan that does not fit and names the knob that helps. The token-weighted mean loss over all
 * micro-batches of a step is what is minimised (gradient scale 1 / tokens of the whole step). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "streamtune/model.h"
#include "streamtune/tokenizer.h"
#include "streamtune/train.h"

void st_train_options_default(struct st_train_options *o) {
    memset(o, 0, sizeof *o);
    o->steps = 1000;
    o->batch_size = 4;
    o->grad_accum = 1;
    o->max_seq_len = 2048;
    o->lr = 2e-4;
    o->min_lr = 0;
    o->weight_decay = 0;
    o->max_grad_norm = 1.0;
    o->warmup = -1; /* auto: min(100, steps / 10) */
    o->schedule = ST_SCHED_COSINE;
    o->lora = (struct st_lora_config){8, 16.0f, 0.0f, 0, ST_LIN_ALL, 0};
    o->seed = 0;
    o->eval_every = 200;
    o->save_every = 200;
    o->keep_checkpoints = 2;
    o->add_eos = 1;
}

int st_parse_bytes(const char *s, size_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0)) return 1;
    double mul = 1;
    if (*end) {
        char u = (char)(*end | 0x20);
        if (u == 'k') mul = 1024.0;
        else if (u == 'm') mul = 1048576.0;
        else if (u == 'g') mul = 1073741824.0;
        else if (u == 't') mul = 1099511627776.0;
        else if (u != 'b') return 1;
        end++;
        if (*end == 'i' || *end == 'I') end++;
        if (*end == 'b' || *end == 'B') end++;
        if (*end) return 1;
    }
    if (v * mul > 1.8e19) return 1;
    *out = (size_t)(v * mul);
    return 0;
}

/* ---------------------------------------------------------------- records */

struct records {
    int32_t **ids;
    size_t *len;
    size_t n, cap, max_len, bytes, truncated;
};

static void records_free(struct records *r) {
    for (size_t i = 0; i < r->n; i++) st_free(r->ids[i]);
    st_free(r->ids);
    st_free(r->len);
    memset(r, 0, sizeof *r);
}

/* Load a JSONL file of {"ids": [...]} or {"text": "..."} records (text via the tokenizer). */
static enum st_status records_load(struct records *r, const char *path,
                                   const struct st_tokenizer *tok, const struct st_model_config *c,
                                   int add_eos, int max_len, struct st_error *err) {
    memset(r, 0, sizeof *r);
    FILE *f = fopen(path, "rb");
    if (!f) return st_errorf(err, ST_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    long lineno = 0;
    enum st_status rc = ST_OK;
    int32_t eos = tok ? st_tokenizer_eos_id(tok) : -1;
    if (eos < 0 && c->n_eos) eos = c->eos_token_ids[0];
    while (!rc && (n = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        size_t k = (size_t)n;
        while (k && (line[k - 1] == '\n' || line[k - 1] == '\r' || line[k - 1] == ' ')) k--;
        if (!k) continue;
        cJSON *o = cJSON_ParseWithLength(line, k);
        if (!o || !cJSON_IsObject(o)) {
            cJSON_Delete(o);
            rc = st_errorf(err, ST_ERR_FORMAT, "%s:%ld: not a JSON object", path, lineno);
            break;
        }
        struct st_ids v = {0};
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "ids");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(o, "text");
        if (cJSON_IsArray(ids)) {
            int i = 0;
            for (const cJSON *x = ids->child; x && !rc; x = x->next, i++) {
                if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble >= c->vocab_size ||
                    x->valuedouble != floor(x->valuedouble))
                    rc = st_errorf(err, ST_ERR_FORMAT, "%s:%ld: ids[%d] is not a token id in "
                                   "[0, %d)", path, lineno, i, c->vocab_size);
                else {
                    /* reuse st_ids growth through encode's helper: push by hand */
                    if (v.n == v.cap) {
                        v.cap = v.cap ? v.cap * 2 : 64;
                        int32_t *q = st_realloc(v.ids, v.cap * sizeof *q);
                        if (!q) rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
                        else v.ids = q;
                    }
                    if (!rc) v.ids[v.n++] = (int32_t)x->valuedouble;
                }
            }
        } else if (cJSON_IsString(text)) {
            if (!tok)
                rc = st_errorf(err, ST_ERR_FORMAT, "%s:%ld: a text record needs the model's "
                               "tokenizer.json", path, lineno);
            else {
                rc = st_tokenizer_encode(tok, text->valuestring, strlen(text->valuestring), 1, &v,
                                         err);
                if (!rc && add_eos && eos >= 0 && (v.n == 0 || v.ids[v.n - 1] != eos)) {
                    struct st_ids one = {0};
                    /* append via a tiny encode-free push */
                    if (v.n == v.cap) {
                        int32_t *q = st_realloc(v.ids, (v.cap + 1) * sizeof *q);
                        if (!q) rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
                        else {
                            v.ids = q;
                            v.cap++;
                        }
                    }
                    if (!rc) v.ids[v.n++] = eos;
                    (void)one;
                }
                for (size_t i = 0; !rc && i < v.n; i++)
                    if (v.ids[i] >= c->vocab_size)
                        rc = st_errorf(err, ST_ERR_FORMAT, "%s:%ld: the tokenizer gives id %d, "
                                       "outside the model's vocabulary of %d", path, lineno,
                                       v.ids[i], c->vocab_size);
            }
        } else {
            rc = st_errorf(err, ST_ERR_FORMAT,
                           "%s:%ld: record has neither \"text\" nor \"ids\" (prompt/completion "
                           "and chat records come with the streaming data formats)",
                           path, lineno);
        }
        cJSON_Delete(o);
        if (rc) {
            st_free(v.ids);
            st_free(v.offsets);
            break;
        }
        st_free(v.offsets);
        if (v.n > (size_t)max_len) {
            v.n = (size_t)max_len;
            r->truncated++;
        }
        if (v.n < 2) { /* nothing to predict */
            st_free(v.ids);
            continue;
        }
        if (r->n == r->cap) {
            size_t nc = r->cap ? r->cap * 2 : 256;
            int32_t **a = st_realloc(r->ids, nc * sizeof *a);
            size_t *l = a ? st_realloc(r->len, nc * sizeof *l) : NULL;
            if (a) r->ids = a;
            if (!a || !l) {
                st_free(v.ids);
                rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
                break;
            }
            r->len = l;
            r->cap = nc;
        }
        r->ids[r->n] = v.ids;
        r->len[r->n++] = v.n;
        r->bytes += v.n * sizeof(int32_t);
        if (v.n > r->max_len) r->max_len = v.n;
    }
    free(line);
    fclose(f);
    if (!rc && r->n == 0)
        rc = st_errorf(err, ST_ERR_FORMAT, "%s: no record with at least two tokens", path);
    if (rc) records_free(r);
    return rc;
}

/* ---------------------------------------------------------------- batches */

static uint64_t mix(uint64_t a, uint64_t b) {
    uint64_t z = a * 0x9e3779b97f4a7c15ULL + b + 0x632be59bd9b4e019ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

struct order {
    size_t *perm, n;
    long epoch;
    size_t pos; /* records of this epoch already used */
    uint64_t seed;
};

static void order_epoch(struct order *o, long epoch) {
    struct st_rng rng;
    st_rng_seed(&rng, mix(o->seed, (uint64_t)epoch));
    for (size_t i = 0; i < o->n; i++) o->perm[i] = i;
    for (size_t i = o->n; i > 1; i--) {
        size_t j = (size_t)(st_rng_u64(&rng) % i);
        size_t t = o->perm[i - 1];
        o->perm[i - 1] = o->perm[j];
        o->perm[j] = t;
    }
    o->epoch = epoch;
}

static size_t order_next(struct order *o) {
    if (o->pos == o->n) {
        order_epoch(o, o->epoch + 1);
        o->pos = 0;
    }
    return o->perm[o->pos++];
}

/* Fill ids/targets (B, Tb) from the records idx[0..B): right-padded with pad, targets -100 at
 * padding and at each record's last position. Returns Tb; *tokens = non-padding tokens. */
static size_t make_batch(const struct records *r, const size_t *idx, size_t B, int32_t pad,
                         int32_t *ids, int32_t *targets, size_t *tokens) {
    size_t Tb = 0;
    for (size_t b = 0; b < B; b++)
        if (r->len[idx[b]] > Tb) Tb = r->len[idx[b]];
    *tokens = 0;
    for (size_t b = 0; b < B; b++) {
        const int32_t *x = r->ids[idx[b]];
        size_t n = r->len[idx[b]];
        *tokens += n;
        for (size_t t = 0; t < Tb; t++) {
            ids[b * Tb + t] = t < n ? x[t] : pad;
            targets[b * Tb + t] = t + 1 < n ? x[t + 1] : -100;
        }
    }
    return Tb;
}

/* ---------------------------------------------------------------- checkpoints */

static enum st_status write_json(const char *path, cJSON *o, struct st_error *err) {
    char *js = cJSON_Print(o);
    if (!js) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    enum st_status rc = st_write_file_atomic(path, js, strlen(js), err);
    cJSON_free(js);
    return rc;
}

static int rm_rf(const char *path) {
    DIR *d = opendir(path);
    if (!d) return unlink(path);
    struct dirent *e;
    char buf[4096];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(buf, sizeof buf, "%s/%s", path, e->d_name);
        rm_rf(buf);
    }
    closedir(d);
    return rmdir(path);
}

struct state {
    long step;
    long epoch;
    size_t pos;
    size_t tokens;
};

static enum st_status save_checkpoint(const struct st_train_options *o, const struct st_lora *lo,
                                      const float *m1, const float *m2, const struct state *s,
                                      char *out_path, size_t out_n, struct st_error *err) {
    char root[4096], tmp[4200], final[4200], path[4400];
    snprintf(root, sizeof root, "%s/checkpoints", o->out_dir);
    enum st_status rc = st_mkdirs(root, err);
    if (rc) return rc;
    snprintf(tmp, sizeof tmp, "%s/.tmp-step-%07ld", root, s->step);
    snprintf(final, sizeof final, "%s/step-%07ld", root, s->step);
    rm_rf(tmp);
    if ((rc = st_lora_save(lo, tmp, o->model_dir, err))) return rc;
    struct st_tensor_out t[2] = {
        {"exp_avg", ST_F32, 1, {(int64_t)lo->n_params}, m1},
        {"exp_avg_sq", ST_F32, 1, {(int64_t)lo->n_params}, m2},
    };
    snprintf(path, sizeof path, "%s/optimizer.safetensors", tmp);
    if ((rc = st_safetensors_write(path, t, 2, err))) return rc;
    cJSON *js = cJSON_CreateObject();
    cJSON_AddNumberToObject(js, "step", (double)s->step);
    cJSON_AddNumberToObject(js, "epoch", (double)s->epoch);
    cJSON_AddNumberToObject(js, "epoch_position", (double)s->pos);
    cJSON_AddNumberToObject(js, "tokens", (double)s->tokens);
    cJSON_AddNumberToObject(js, "seed", (double)o->seed);
    cJSON_AddNumberToObject(js, "batch_size", o->batch_size);
    cJSON_AddNumberToObject(js, "grad_accum", o->grad_accum);
    cJSON_AddNumberToObject(js, "max_seq_len", o->max_seq_len);
    cJSON_AddNumberToObject(js, "lora_params", (double)lo->n_params);
    cJSON_AddStringToObject(js, "data", o->data);
    snprintf(path, sizeof path, "%s/trainer_state.json", tmp);
    rc = write_json(path, js, err);
    cJSON_Delete(js);
    if (rc) return rc;
    rm_rf(final);
    if (rename(tmp, final) != 0)
        return st_errorf(err, ST_ERR_IO, "%s: rename failed: %s", final, strerror(errno));
    char latest[4400];
    snprintf(latest, sizeof latest, "%s/latest", root);
    char name[64];
    int nl = snprintf(name, sizeof name, "step-%07ld\n", s->step);
    if ((rc = st_write_file_atomic(latest, name, (size_t)nl, err))) return rc;
    /* keep the newest keep_checkpoints */
    if (o->keep_checkpoints > 0) {
        long cut = s->step - (long)o->keep_checkpoints * (o->save_every > 0 ? o->save_every : 1);
        DIR *d = opendir(root);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            long st;
            if (sscanf(e->d_name, "step-%ld", &st) == 1 && st <= cut) {
                snprintf(path, sizeof path, "%s/%s", root, e->d_name);
                rm_rf(path);
            }
        }
        if (d) closedir(d);
    }
    snprintf(out_path, out_n, "%s", final);
    return ST_OK;
}

/* Find the checkpoint to resume from: DIR/checkpoints/latest, or DIR itself. */
static enum st_status find_checkpoint(const char *dir, char *out, size_t n, struct st_error *err) {
    char path[4200], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    if (access(path, R_OK) == 0) {
        snprintf(out, n, "%s", dir);
        return ST_OK;
    }
    snprintf(path, sizeof path, "%s/checkpoints/latest", dir);
    if (st_read_file(path, 4096, &text, &len, err))
        return st_errorf(err, ST_ERR_IO, "--resume %s: no checkpoint there (no "
                         "checkpoints/latest or trainer_state.json)", dir);
    while (len && (text[len - 1] == '\n' || text[len - 1] == ' ')) text[--len] = '\0';
    snprintf(out, n, "%s/checkpoints/%s", dir, text);
    st_free(text);
    return ST_OK;
}

static enum st_status load_checkpoint(const struct st_train_options *o, const char *ck,
                                      const struct st_model_config *c, struct st_lora *lo,
                                      float **m1, float **m2, struct state *s,
                                      struct st_error *err) {
    char path[4400], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/trainer_state.json", ck);
    enum st_status rc = st_read_file(path, 1u << 20, &text, &len, err);
    if (rc) return rc;
    cJSON *js = cJSON_ParseWithLength(text, len);
    st_free(text);
    if (!js) return st_errorf(err, ST_ERR_FORMAT, "%s: not valid JSON", path);
    const char *keys[] = {"step", "epoch", "epoch_position", "tokens", "seed", "batch_size",
                          "grad_accum", "max_seq_len"};
    double v[8];
    for (int i = 0; i < 8; i++) {
        const cJSON *x = cJSON_GetObjectItem(js, keys[i]);
        if (!cJSON_IsNumber(x)) {
            cJSON_Delete(js);
            return st_errorf(err, ST_ERR_FORMAT, "%s: missing number '%s'", path, keys[i]);
        }
        v[i] = x->valuedouble;
    }
    cJSON_Delete(js);
    if ((uint64_t)v[4] != o->seed || (int)v[5] != o->batch_size || (int)v[6] != o->grad_accum ||
        (int)v[7] != o->max_seq_len)
        return st_errorf(err, ST_ERR_ARG,
                         "%s: the checkpoint was made with --seed %.0f --batch-size %.0f "
                         "--grad-accum %.0f --max-seq-len %.0f; resume with the same values",
                         path, v[4], v[5], v[6], v[7]);
    s->step = (long)v[0];
    s->epoch = (long)v[1];
    s->pos = (size_t)v[2];
    s->tokens = (size_t)v[3];
    if ((rc = st_lora_load(lo, c, ck, err))) return rc;
    snprintf(path, sizeof path, "%s/optimizer.safetensors", ck);
    struct st_safetensors *st;
    if ((rc = st_safetensors_open(&st, path, err))) return rc;
    const struct st_tensor_view *a = st_safetensors_find(st, "exp_avg");
    const struct st_tensor_view *b = st_safetensors_find(st, "exp_avg_sq");
    if (!a || !b || a->dtype != ST_F32 || b->dtype != ST_F32 ||
        (size_t)st_tensor_numel(a) != lo->n_params || (size_t)st_tensor_numel(b) != lo->n_params) {
        st_safetensors_close(st);
        return st_errorf(err, ST_ERR_FORMAT, "%s: exp_avg/exp_avg_sq do not match the adapter's "
                         "%zu parameters", path, lo->n_params);
    }
    *m1 = st_malloc(lo->n_params * 4);
    *m2 = st_malloc(lo->n_params * 4);
    if (!*m1 || !*m2) {
        st_safetensors_close(st);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    }
    memcpy(*m1, a->data, lo->n_params * 4);
    memcpy(*m2, b->data, lo->n_params * 4);
    st_safetensors_close(st);
    return ST_OK;
}

/* ---------------------------------------------------------------- evaluation */

static enum st_status evaluate(struct st_model *m, struct st_acts *a, const struct records *val,
                               size_t B, long max_batches, int32_t pad, int32_t *ids,
                               int32_t *targets, double *out, struct st_error *err) {
    double sum = 0;
    size_t count = 0, saveB = a->B, saveT = a->T;
    int was_training = m->training;
    m->training = 0;
    size_t *idx = st_malloc(B * sizeof *idx);
    if (!idx) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    enum st_status rc = ST_OK;
    long batches = 0;
    for (size_t i = 0; i < val->n && !rc; i += B) {
        if (max_batches > 0 && batches++ >= max_batches) break;
        size_t nb = val->n - i < B ? val->n - i : B, tokens;
        for (size_t k = 0; k < nb; k++) idx[k] = i + k;
        size_t Tb = make_batch(val, idx, nb, pad, ids, targets, &tokens);
        a->B = nb;
        a->T = Tb;
        rc = st_model_forward(m, a, ids, NULL, err);
        if (!rc) rc = st_model_loss(m, a, targets, &sum, &count, err);
    }
    a->B = saveB;
    a->T = saveT;
    m->training = was_training;
    st_free(idx);
    *out = count ? sum / (double)count : NAN;
    return rc;
}

/* ---------------------------------------------------------------- the loop */

static void fmt_bytes(char *buf, size_t n, double b) {
    if (b >= 1073741824.0) snprintf(buf, n, "%.2f GiB", b / 1073741824.0);
    else if (b >= 1048576.0) snprintf(buf, n, "%.1f MiB", b / 1048576.0);
    else snprintf(buf, n, "%.1f KiB", b / 1024.0);
}

static size_t rss_now(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
        fclose(f);
    }
    return (size_t)res * (size_t)sysconf(_SC_PAGESIZE);
}

static void append_metrics(FILE *mf, const struct st_train_event *ev) {
    if (!mf) return;
    if (!strcmp(ev->kind, "train"))
        fprintf(mf,
                "{\"kind\": \"train\", \"step\": %ld, \"loss\": %.17g, \"lr\": %.9g, \"grad_norm\": "
                "%.9g, \"tokens\": %zu, \"tokens_per_s\": %.1f, \"elapsed\": %.3f}\n",
                ev->step, ev->loss, ev->lr, ev->grad_norm, ev->tokens, ev->tokens_per_s,
                ev->elapsed);
    else if (!strcmp(ev->kind, "eval"))
        fprintf(mf, "{\"kind\": \"eval\", \"step\": %ld, \"val_loss\": %.17g, \"elapsed\": %.3f}\n",
                ev->step, ev->val_loss, ev->elapsed);
    fflush(mf);
}

enum st_status st_train(const struct st_train_options *o, st_train_cb cb, void *ctx,
                        struct st_error *err) {
    enum st_status rc = ST_OK;
    struct st_model m;
    struct st_tokenizer *tok = NULL;
    struct records tr = {0}, va = {0};
    struct st_lora lo = {0};
    struct st_acts a = {0};
    float *m1 = NULL, *m2 = NULL;
    int32_t *ids = NULL, *targets = NULL;
    size_t *idx = NULL;
    struct order ord = {0};
    FILE *mf = NULL;
    char train_path[4096], val_path[4096] = "";
    int have_model = 0;
    size_t rss0 = rss_now();

    if (o->batch_size < 1 || o->grad_accum < 1 || o->max_seq_len < 2 || o->steps < 1)
        return st_errorf(err, ST_ERR_ARG, "--steps, --batch-size and --grad-accum must be >= 1 "
                         "and --max-seq-len >= 2");
    if (!(o->lr > 0)) return st_errorf(err, ST_ERR_ARG, "--lr must be positive");
    if ((rc = st_model_load(&m, o->model_dir, err))) return rc;
    have_model = 1;
    struct st_error terr;
    if (st_tokenizer_load(&tok, o->model_dir, &terr)) tok = NULL;
    int max_len = o->max_seq_len < m.cfg.max_seq_len ? o->max_seq_len : m.cfg.max_seq_len;
    /* data: a file, or a directory with train.jsonl (+ valid.jsonl) */
    struct stat sb;
    if (stat(o->data, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        snprintf(train_path, sizeof train_path, "%s/train.jsonl", o->data);
        snprintf(val_path, sizeof val_path, "%s/valid.jsonl", o->data);
        if (access(val_path, R_OK) != 0) val_path[0] = '\0';
    } else {
        snprintf(train_path, sizeof train_path, "%s", o->data);
    }
    if (o->val_data) snprintf(val_path, sizeof val_path, "%s", o->val_data);
    if ((rc = records_load(&tr, train_path, tok, &m.cfg, o->add_eos, max_len, err))) goto done;
    if (val_path[0] && (rc = records_load(&va, val_path, tok, &m.cfg, o->add_eos, max_len, err)))
        goto done;

    /* adapter: resumed, given, or fresh */
    struct state s = {0};
    char ck[4400] = "";
    if (o->resume) {
        if ((rc = find_checkpoint(o->resume, ck, sizeof ck, err))) goto done;
        if ((rc = load_checkpoint(o, ck, &m.cfg, &lo, &m1, &m2, &s, err))) goto done;
    } else if (o->init_adapter) {
        if ((rc = st_lora_load(&lo, &m.cfg, o->init_adapter, err))) goto done;
    } else {
        if ((rc = st_lora_init(&lo, &m.cfg, &o->lora, o->seed, err))) goto done;
    }
    if (!m1) {
        m1 = st_calloc(lo.n_params ? lo.n_params : 1, 4);
        m2 = st_calloc(lo.n_params ? lo.n_params : 1, 4);
        if (!m1 || !m2) {
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    m.lora = &lo;

    /* the memory plan */
    size_t B = (size_t)o->batch_size, T = tr.max_len > va.max_len ? tr.max_len : va.max_len;
    int mode = o->grad_checkpoint ? ST_ACTS_CHECKPOINT : ST_ACTS_TRAIN;
    size_t w_conv = m.converted.size, w_mapped = m.bytes_on_disk;
    size_t b_weights = w_conv + (m.dtype == ST_F32 ? w_mapped : 0);
    size_t b_lora = lo.n_params * 4 * 4; /* params, grads, two moments */
    size_t b_acts = st_acts_bytes(&m.cfg, B, T, mode, lo.cfg.rank);
    size_t b_data = tr.bytes + va.bytes + (tr.n + va.n) * (sizeof(int32_t *) + sizeof(size_t));
    size_t b_batch = 2 * B * T * sizeof(int32_t) + tr.n * sizeof(size_t);
    size_t total = rss0 + b_weights + b_lora + b_acts + b_data + b_batch;
    char plan[2048], x1[32], x2[32], x3[32], x4[32], x5[32], x6[32];
    fmt_bytes(x1, sizeof x1, (double)b_weights);
    fmt_bytes(x2, sizeof x2, (double)b_lora);
    fmt_bytes(x3, sizeof x3, (double)b_acts);
    fmt_bytes(x4, sizeof x4, (double)(b_data + b_batch));
    fmt_bytes(x5, sizeof x5, (double)rss0);
    fmt_bytes(x6, sizeof x6, (double)total);
    int nmod = 0;
    for (int i = 0; i < m.cfg.n_layers * ST_LIN_COUNT; i++) nmod += lo.mod[i].a != NULL;
    snprintf(plan, sizeof plan,
             "memory plan: batch %zu x %zu tokens, LoRA rank %d on %d modules (%zu params)\n"
             "  model weights      %s (%s)\n"
             "  LoRA + grads + AdamW %s\n"
             "  activations        %s (gradient checkpointing %s)\n"
             "  data + batches     %s (%zu train, %zu validation records%s)\n"
             "  process baseline   %s\n"
             "  total              %s",
             B, T, lo.cfg.rank, nmod, lo.n_params, x1,
             m.dtype == ST_F32 ? "F32, memory-mapped" : "converted to F32", x2, x3,
             o->grad_checkpoint ? "on" : "off", x4, tr.n, va.n,
             tr.truncated + va.truncated ? ", some truncated to --max-seq-len" : "", x5, x6);
    if (cb) {
        struct st_train_event ev = {.kind = "plan", .plan_text = plan, .plan_bytes = total,
                                    .total_steps = o->steps};
        cb(ctx, &ev);
    }
    if (o->max_memory && total > o->max_memory) {
        char lim[32], b1[32], ck1[32];
        fmt_bytes(lim, sizeof lim, (double)o->max_memory);
        fmt_bytes(b1, sizeof b1,
                  (double)(total - b_acts + st_acts_bytes(&m.cfg, 1, T, mode, lo.cfg.rank)));
        fmt_bytes(ck1, sizeof ck1,
                  (double)(total - b_acts + st_acts_bytes(&m.cfg, B, T, ST_ACTS_CHECKPOINT,
                                                          lo.cfg.rank)));
        rc = st_errorf(err, ST_ERR_NOMEM,
                       "the run needs %s but --max-memory is %s: lower --batch-size (batch 1: "
                       "%s) or --max-seq-len (now %zu)%s%s",
                       x6, lim, b1, T, o->grad_checkpoint ? "" : ", or add --grad-checkpoint (",
                       o->grad_checkpoint ? "" : ck1);
        if (!o->grad_checkpoint && strlen(err->msg) + 2 < sizeof err->msg) strcat(err->msg, ")");
        goto done;
    }
    if (o->dry_run) goto done;
    if ((rc = st_acts_init(&a, &m, B, T, mode, err))) goto done;
    ids = st_malloc(B * T * sizeof *ids);
    targets = st_malloc(B * T * sizeof *targets);
    idx = st_malloc(B * sizeof *idx);
    ord.perm = st_malloc(tr.n * sizeof *ord.perm);
    if (!ids || !targets || !idx || !ord.perm) {
        rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        goto done;
    }
    ord.n = tr.n;
    ord.seed = o->seed;
    order_epoch(&ord, s.epoch);
    ord.pos = s.pos;
    int32_t pad = m.cfg.pad_token_id >= 0 && m.cfg.pad_token_id < m.cfg.vocab_size
                      ? m.cfg.pad_token_id : 0;

    if ((rc = st_mkdirs(o->out_dir, err))) goto done;
    char mpath[4200];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", o->out_dir);
    mf = fopen(mpath, o->resume ? "a" : "w");
    if (!mf) {
        rc = st_errorf(err, ST_ERR_IO, "%s: cannot open: %s", mpath, strerror(errno));
        goto done;
    }
    long warmup = o->warmup >= 0 ? o->warmup : (o->steps / 10 < 100 ? o->steps / 10 : 100);
    struct st_adamw opt = {0, 0.9f, 0.999f, 1e-8f, (float)o->weight_decay};
    double t0 = st_time_now();
    size_t tokens_run = 0;
    m.training = 1;
    if (va.n && s.step == 0) {
        double vl;
        if ((rc = evaluate(&m, &a, &va, B, o->val_batches, pad, ids, targets, &vl, err))) goto done;
        struct st_train_event ev = {.kind = "eval", .step = 0, .total_steps = o->steps,
                                    .val_loss = vl, .elapsed = st_time_now() - t0};
        append_metrics(mf, &ev);
        if (cb) cb(ctx, &ev);
    }
    while (s.step < o->steps) {
        /* one optimizer step = grad_accum micro-batches; count the step's tokens first so every
         * micro-batch's gradient is scaled by 1 / (tokens of the whole step) */
        size_t saved_pos = ord.pos;
        long saved_epoch = ord.epoch;
        size_t step_count = 0;
        for (int k = 0; k < o->grad_accum; k++)
            for (size_t b = 0; b < B; b++) step_count += tr.len[order_next(&ord)] - 1;
        if (ord.epoch != saved_epoch) order_epoch(&ord, saved_epoch);
        ord.pos = saved_pos;
        st_lora_zero_grads(&lo);
        double loss_sum = 0;
        size_t count = 0, step_tokens = 0;
        for (int k = 0; k < o->grad_accum && !rc; k++) {
            for (size_t b = 0; b < B; b++) idx[b] = order_next(&ord);
            size_t tokens;
            size_t Tb = make_batch(&tr, idx, B, pad, ids, targets, &tokens);
            step_tokens += tokens;
            a.T = Tb;
            m.dropout_seed = mix(mix(o->seed, (uint64_t)s.step), (uint64_t)k);
            rc = st_model_forward(&m, &a, ids, NULL, err);
            if (!rc) rc = st_model_loss(&m, &a, targets, &loss_sum, &count, err);
            if (!rc)
                rc = st_model_backward(&m, &a, ids, targets, NULL, (float)(1.0 / step_count), &lo,
                                       err);
            a.T = T;
        }
        if (rc) goto done;
        double norm = st_grad_clip(lo.grads, lo.n_params, o->max_grad_norm);
        double lr = st_lr_at(o->schedule, o->lr, o->min_lr, warmup, o->steps, s.step);
        opt.lr = (float)lr;
        s.step++;
        st_adamw_step(lo.params, lo.grads, m1, m2, lo.n_params, &opt, s.step);
        s.epoch = ord.epoch;
        s.pos = ord.pos;
        s.tokens += count;
        tokens_run += step_tokens;
        double el = st_time_now() - t0;
        struct st_train_event ev = {.kind = "train", .step = s.step, .total_steps = o->steps,
                                    .loss = loss_sum / (double)count, .lr = lr, .grad_norm = norm,
                                    .tokens = s.tokens, .tokens_per_s = (double)tokens_run / el,
                                    .elapsed = el};
        ev.eta = el / (double)(s.step - (o->resume ? 0 : 0)) * (double)(o->steps - s.step);
        append_metrics(mf, &ev);
        if (cb) cb(ctx, &ev);
        int last = s.step == o->steps;
        if (va.n && ((o->eval_every > 0 && s.step % o->eval_every == 0) || last)) {
            double vl;
            if ((rc = evaluate(&m, &a, &va, B, o->val_batches, pad, ids, targets, &vl, err))) goto done;
            struct st_train_event e2 = {.kind = "eval", .step = s.step, .total_steps = o->steps,
                                        .val_loss = vl, .elapsed = st_time_now() - t0};
            append_metrics(mf, &e2);
            if (cb) cb(ctx, &e2);
        }
        if ((o->save_every > 0 && s.step % o->save_every == 0) || last) {
            char where[4400];
            if ((rc = save_checkpoint(o, &lo, m1, m2, &s, where, sizeof where, err))) goto done;
            struct st_train_event e3 = {.kind = "save", .step = s.step, .total_steps = o->steps,
                                        .path = where, .elapsed = st_time_now() - t0};
            if (cb) cb(ctx, &e3);
        }
    }
    rc = st_lora_save(&lo, o->out_dir, o->model_dir, err);
done:
    if (mf) fclose(mf);
    st_free(ord.perm);
    st_free(idx);
    st_free(ids);
    st_free(targets);
    st_free(m1);
    st_free(m2);
    st_acts_free(&a);
    st_lora_free(&lo);
    records_free(&tr);
    records_free(&va);
    st_tokenizer_free(tok);
    if (have_model) st_model_free(&m);
    return rc;
}
