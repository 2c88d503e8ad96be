/* trainer.c: the LoRA training loop.
 *
 * DESIGN: everything a step depends on is a pure function of (seed, step, data position): the
 * record order of epoch e is a seeded permutation, LoRA dropout masks are hashed from (seed,
 * step, micro-batch), the learning rate from the step. A checkpoint therefore needs only the
 * adapter, the AdamW moments, the step and the data position, and a resumed run repeats an
 * uninterrupted one bit for bit (same thread count: it decides the row groups below and how
 * BLAS splits its sums). Memory is planned before the first step
 * (weights, adapter + gradients + moments, activations, data) and printed; --max-memory refuses
 * a plan that does not fit and names the knob that helps. The token-weighted mean loss over all
 * micro-batches of a step is what is minimised (gradient scale 1 / tokens of the whole step). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <pthread.h>
#include <omp.h>
#include <unistd.h>

#include "streamtune/bf16.h"
#include "streamtune/chat.h"
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
    o->pack = 1;
    st_stream_options_init(&o->stream);
    st_example_options_default(&o->examples);
    st_model_load_options_init(&o->load);
    o->load.pack_f32 = 1; /* F32 training through packed panels, not BLAS calls */
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

/* ---------------------------------------------------------------- data */

static uint64_t mix(uint64_t a, uint64_t b) {
    uint64_t z = a * 0x9e3779b97f4a7c15ULL + b + 0x632be59bd9b4e019ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int starts_with_ci(const char *s, const char *p) {
    for (; *p; s++, p++)
        if ((*s | 0x20) != (*p | 0x20)) return 0;
    return 1;
}

/* Training and validation shard lists from the data source(s). */
struct sources {
    char **train, **val;
    int n_train, n_val;
};

static void sources_free(struct sources *s) {
    for (int i = 0; i < s->n_train; i++) st_free(s->train[i]);
    for (int i = 0; i < s->n_val; i++) st_free(s->val[i]);
    st_free(s->train);
    st_free(s->val);
    memset(s, 0, sizeof *s);
}

/* The shard listing of url, with the run's stream options */
static enum st_status list_shards(const struct st_train_options *o, const char *url,
                                  struct st_shard_list *l, struct st_error *err) {
    struct st_stream_options so = o->stream;
    so.url = url;
    so.urls = NULL;
    so.n_urls = 0;
    return st_data_list(&so, l, err);
}

/* valid.jsonl, validation-00.tar, val_x: not validated_train.jsonl */
static int is_val_name(const char *base) {
    return (starts_with_ci(base, "valid") && !isalnum((unsigned char)base[5])) ||
           (starts_with_ci(base, "validation") && !isalnum((unsigned char)base[10])) ||
           starts_with_ci(base, "val.") || starts_with_ci(base, "val_") ||
           starts_with_ci(base, "val-");
}

/* test.jsonl, test-00.tar, test_x: not testimonials.jsonl */
static int is_test_name(const char *base) {
    return starts_with_ci(base, "test") && !isalnum((unsigned char)base[4]);
}

/* The shards of url for training (and, with val, its valid* shards for validation), as mlx-lm
 * reads a data folder: train* when there are any, else every shard but valid* and test*; a
 * validation or test file is never trained on (a single file named so is used as given). */
static enum st_status list_urls(const struct st_train_options *o, const char *url, char ***out,
                                int *n, char ***val, int *nval, struct st_error *err) {
    struct st_shard_list l;
    enum st_status rc = list_shards(o, url, &l, err);
    if (rc) return rc;
    int has_train = 0, held_out = 0;
    for (uint32_t i = 0; i < l.n; i++) {
        const char *base = strrchr(l.shards[i].name, '/');
        base = base ? base + 1 : l.shards[i].name;
        has_train |= starts_with_ci(base, "train");
    }
    *out = st_calloc(l.n + 1, sizeof **out);
    if (val) *val = st_calloc(l.n + 1, sizeof **val);
    for (uint32_t i = 0; i < l.n && *out && (!val || *val); i++) {
        const char *base = strrchr(l.shards[i].name, '/');
        base = base ? base + 1 : l.shards[i].name;
        int is_val = is_val_name(base), is_test = is_test_name(base);
        if (val && is_val && l.n > 1) (*val)[(*nval)++] = st_strdup(l.shards[i].url);
        if (has_train ? starts_with_ci(base, "train") : l.n == 1 || (!is_val && !is_test))
            (*out)[(*n)++] = st_strdup(l.shards[i].url);
        else
            held_out++;
    }
    if (held_out && *out)
        st_log(ST_LOG_INFO, "%s: %d file%s not trained on (only %s)", url, held_out,
               held_out > 1 ? "s" : "", has_train ? "train*" : "files not named valid* or test*");
    st_shard_list_free(&l);
    if (!*out || (val && !*val)) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    if (*n == 0)
        return st_errorf(err, ST_ERR_FORMAT, "%s: no training shards (only validation or test "
                         "files)", url);
    return ST_OK;
}

/* Every shard of url (--val-data) */
static enum st_status list_val(const struct st_train_options *o, const char *url, char ***out,
                               int *n, struct st_error *err) {
    struct st_shard_list l;
    enum st_status rc = list_shards(o, url, &l, err);
    if (rc) return rc;
    *out = st_calloc(l.n + 1, sizeof **out);
    for (uint32_t i = 0; i < l.n && *out; i++) (*out)[(*n)++] = st_strdup(l.shards[i].url);
    st_shard_list_free(&l);
    return *out ? ST_OK : st_errorf(err, ST_ERR_NOMEM, "out of memory");
}

/* A batch and the data position right after it (what a checkpoint after it must record). */
struct qitem {
    struct st_batch b;
    char *state;                 /* stream state */
    struct st_example *pending;  /* packer leftovers */
    size_t n_pending;
    int error;                   /* the loader failed; err holds why */
};

#define QCAP 4

struct loader {
    const struct st_train_options *o;
    const struct st_tokenizer *tok;
    const struct st_chat_template *tmpl;
    const struct st_model_config *cfg;
    struct st_stream *stream;
    struct st_packer *packer;
    pthread_t th;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct qitem q[QCAP];
    int head, count, stop;
    struct st_error err;
    double wait_s;
    uint64_t records, skipped;
    int resumed; /* the stream continues from a checkpoint's data position */
};

static void pending_free(struct st_example *p, size_t n) {
    for (size_t i = 0; i < n; i++) st_example_free(&p[i]);
    st_free(p);
}

static struct st_example *pending_copy(const struct st_packer *pk, size_t *n) {
    const struct st_example *src;
    *n = st_packer_pending(pk, &src);
    struct st_example *c = st_calloc(*n ? *n : 1, sizeof *c);
    if (!c) return NULL;
    for (size_t i = 0; i < *n; i++) {
        c[i].ids = st_malloc((src[i].n ? src[i].n : 1) * sizeof(int32_t));
        c[i].labels = st_malloc((src[i].n ? src[i].n : 1) * sizeof(int32_t));
        if (!c[i].ids || !c[i].labels) {
            pending_free(c, i + 1);
            return NULL;
        }
        memcpy(c[i].ids, src[i].ids, src[i].n * sizeof(int32_t));
        memcpy(c[i].labels, src[i].labels, src[i].n * sizeof(int32_t));
        c[i].n = c[i].cap = src[i].n;
    }
    return c;
}

static int loader_push(struct loader *L, struct qitem *it) {
    pthread_mutex_lock(&L->mu);
    while (L->count == QCAP && !L->stop) pthread_cond_wait(&L->cv, &L->mu);
    if (L->stop) {
        pthread_mutex_unlock(&L->mu);
        return 1;
    }
    L->q[(L->head + L->count) % QCAP] = *it;
    L->count++;
    pthread_cond_broadcast(&L->cv);
    pthread_mutex_unlock(&L->mu);
    return 0;
}

static void *loader_main(void *arg) {
    struct loader *L = arg;
    struct st_example ex = {0};
    struct st_sample smp;
    struct qitem it;
    char where[600];
    uint64_t epoch_records = 0, epoch_used = 0;
    /* a resumed stream starts mid-epoch: its first epoch end says nothing of the data */
    int whole = !L->resumed;
    for (;;) {
        enum st_status rc = st_stream_next(L->stream, &smp, &L->err);
        if (rc == ST_STREAM_END) { /* next epoch, unless this one gave nothing to train on */
            if (whole && epoch_used == 0) {
                if (epoch_records == 0)
                    st_errorf(&L->err, ST_ERR_FORMAT, "%s: no records", L->o->data);
                else
                    st_errorf(&L->err, ST_ERR_FORMAT,
                              "%s: none of its %llu records has a token to train on (a record "
                              "needs 2 or more tokens and a trained one: an empty completion "
                              "or assistant turn trains nothing)",
                              L->o->data, (unsigned long long)epoch_records);
                break;
            }
            epoch_records = epoch_used = 0;
            whole = 1;
            continue;
        }
        if (rc) break;
        L->records++;
        epoch_records++;
        const struct st_sample_field *f = st_sample_field(&smp, "json");
        if (!f) {
            st_errorf(&L->err, ST_ERR_FORMAT, "%s: sample %s is not a JSON record (tar samples "
                      "are for multimodal training)", smp.url, smp.key);
            break;
        }
        /* the record's number, not a line's: blank lines are not records */
        snprintf(where, sizeof where, "%s: record %llu (byte offset %llu)", smp.url,
                 (unsigned long long)smp.index + 1, (unsigned long long)smp.offset);
        if (st_example_from_json(&ex, (const char *)f->data, f->size, where, L->tok, L->tmpl,
                                 L->cfg, &L->o->examples, &L->err))
            break;
        /* a record with no trained target (token t + 1's label) adds nothing to the loss, and
         * (packed or not) no context to other records: skipped, the first one named */
        size_t trained = 0;
        for (size_t t = 1; t < ex.n; t++) trained += ex.labels[t] >= 0;
        if (trained == 0) {
            int cut = L->o->examples.max_len > 0 && ex.n == (size_t)L->o->examples.max_len;
            if (L->skipped++ == 0)
                st_log(ST_LOG_WARN, "%s: %s: skipped (and any more like it)%s", where,
                       ex.n < 2 ? "fewer than 2 tokens" : "no token to train on",
                       cut ? "; it was cut to the row length (--max-seq-len), which may have "
                             "dropped its trained part" : "");
            continue;
        }
        epoch_used++;
        int full = st_packer_add(L->packer, &ex, &L->err);
        if (full < 0) break;
        if (!full) continue;
        memset(&it, 0, sizeof it);
        if (!st_packer_take(L->packer, &it.b, 0)) {
            st_errorf(&L->err, ST_ERR_NOMEM, "out of memory building a batch");
            break;
        }
        char buf[8192];
        size_t sl = st_stream_state(L->stream, buf, sizeof buf);
        if (sl < sizeof buf) {
            it.state = st_strdup(buf);
        } else if ((it.state = st_malloc(sl + 1))) { /* a shuffle buffer's samples */
            st_stream_state(L->stream, it.state, sl + 1);
        }
        it.pending = pending_copy(L->packer, &it.n_pending);
        if (!it.state || !it.pending) {
            st_errorf(&L->err, ST_ERR_NOMEM, "out of memory");
            st_batch_free(&it.b);
            break;
        }
        if (loader_push(L, &it)) {
            st_batch_free(&it.b);
            st_free(it.state);
            pending_free(it.pending, it.n_pending);
            st_example_free(&ex);
            return NULL;
        }
    }
    st_example_free(&ex);
    memset(&it, 0, sizeof it);
    it.error = 1;
    loader_push(L, &it);
    return NULL;
}

/* Pop the next batch (waiting for the loader); 1 on error (message in err). */
static int loader_pop(struct loader *L, struct qitem *out, struct st_error *err) {
    double t0 = st_time_now();
    pthread_mutex_lock(&L->mu);
    while (L->count == 0) pthread_cond_wait(&L->cv, &L->mu);
    *out = L->q[L->head];
    if (!out->error) {
        L->head = (L->head + 1) % QCAP;
        L->count--;
    }
    pthread_cond_broadcast(&L->cv);
    pthread_mutex_unlock(&L->mu);
    L->wait_s += st_time_now() - t0;
    if (out->error) {
        *err = L->err;
        return 1;
    }
    return 0;
}

static void loader_stop(struct loader *L) {
    if (L->started) {
        pthread_mutex_lock(&L->mu);
        L->stop = 1;
        pthread_cond_broadcast(&L->cv);
        pthread_mutex_unlock(&L->mu);
        /* the loader may wait in the stream's next() for data nobody needs now (a slow or
         * dead server would hold the exit for its retries): cancel the stream, then join */
        st_stream_cancel(L->stream);
        pthread_join(L->th, NULL);
        L->started = 0;
    }
    for (int i = 0; i < L->count; i++) {
        struct qitem *it = &L->q[(L->head + i) % QCAP];
        st_batch_free(&it->b);
        st_free(it->state);
        pending_free(it->pending, it->n_pending);
    }
    L->count = 0;
    st_stream_close(L->stream);
    L->stream = NULL;
    st_packer_free(L->packer);
    L->packer = NULL;
    pthread_mutex_destroy(&L->mu);
    pthread_cond_destroy(&L->cv);
}

/* Validation batches: the whole validation source once, in order. */
static enum st_status load_val(const struct st_train_options *o, char **urls, int n, size_t B,
                               size_t T, int32_t pad, const struct st_tokenizer *tok,
                               const struct st_chat_template *tmpl,
                               const struct st_model_config *cfg, struct st_batch **out,
                               size_t *n_out, size_t *records, struct st_error *err) {
    *out = NULL;
    *n_out = 0;
    struct st_stream_options so = o->stream;
    so.url = NULL;
    so.urls = (const char *const *)urls;
    so.n_urls = n;
    so.shuffle = 0;
    so.epochs = 1;
    so.resume_state = NULL;
    struct st_stream *s;
    enum st_status rc = st_stream_open(&s, &so, err);
    if (rc) return rc;
    struct st_packer *pk;
    if ((rc = st_packer_init(&pk, B, T, o->pack, pad, err))) {
        st_stream_close(s);
        return rc;
    }
    struct st_example ex = {0};
    struct st_sample smp;
    size_t cap = 0;
    char where[600];
    *records = 0;
    for (;;) {
        rc = st_stream_next(s, &smp, err);
        int end = rc == ST_STREAM_END;
        if (rc && !end) break;
        rc = ST_OK;
        if (!end) {
            const struct st_sample_field *f = st_sample_field(&smp, "json");
            if (!f) {
                rc = st_errorf(err, ST_ERR_FORMAT, "%s: sample %s is not a JSON record", smp.url,
                               smp.key);
                break;
            }
            /* the record's number, not a line's: blank lines are not records */
            snprintf(where, sizeof where, "%s: record %llu (byte offset %llu)", smp.url,
                     (unsigned long long)smp.index + 1, (unsigned long long)smp.offset);
            if ((rc = st_example_from_json(&ex, (const char *)f->data, f->size, where, tok, tmpl,
                                           cfg, &o->examples, err)))
                break;
            if (ex.n < 2) continue;
            (*records)++;
            if (st_packer_add(pk, &ex, err) < 0) {
                rc = err->code;
                break;
            }
        }
        struct st_batch b;
        while (st_packer_take(pk, &b, end)) {
            if (*n_out == cap) {
                cap = cap ? cap * 2 : 16;
                struct st_batch *nb = st_realloc(*out, cap * sizeof *nb);
                if (!nb) {
                    st_batch_free(&b);
                    rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
                    break;
                }
                *out = nb;
            }
            (*out)[(*n_out)++] = b;
            if (!end) break;
        }
        if (end || rc) break;
    }
    st_example_free(&ex);
    st_packer_free(pk);
    st_stream_close(s);
    return rc;
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
    size_t tokens;
    char *data_state;            /* stream state after the last consumed batch */
    struct st_example *pending;  /* packer leftovers at that point */
    size_t n_pending;
};

static cJSON *pending_json(const struct st_example *p, size_t n) {
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON *ids = cJSON_AddArrayToObject(e, "ids"), *lab = cJSON_AddArrayToObject(e, "labels");
        for (size_t t = 0; t < p[i].n; t++) {
            cJSON_AddItemToArray(ids, cJSON_CreateNumber(p[i].ids[t]));
            cJSON_AddItemToArray(lab, cJSON_CreateNumber(p[i].labels[t]));
        }
        cJSON_AddItemToArray(arr, e);
    }
    return arr;
}

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
    cJSON_AddNumberToObject(js, "tokens", (double)s->tokens);
    cJSON_AddNumberToObject(js, "seed", (double)o->seed);
    cJSON_AddNumberToObject(js, "batch_size", o->batch_size);
    cJSON_AddNumberToObject(js, "grad_accum", o->grad_accum);
    cJSON_AddNumberToObject(js, "max_seq_len", o->max_seq_len);
    cJSON_AddBoolToObject(js, "pack", o->pack);
    cJSON_AddNumberToObject(js, "lora_params", (double)lo->n_params);
    cJSON_AddStringToObject(js, "data", o->data);
    cJSON_AddStringToObject(js, "data_state", s->data_state ? s->data_state : "");
    cJSON_AddItemToObject(js, "pending", pending_json(s->pending, s->n_pending));
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
    enum st_status rc = st_read_file(path, (size_t)1 << 32, &text, &len, err);
    if (rc) return rc;
    cJSON *js = cJSON_ParseWithLength(text, len);
    st_free(text);
    if (!js) return st_errorf(err, ST_ERR_FORMAT, "%s: not valid JSON", path);
    const char *keys[] = {"step", "tokens", "seed", "batch_size", "grad_accum", "max_seq_len"};
    double v[6];
    for (int i = 0; i < 6; i++) {
        const cJSON *x = cJSON_GetObjectItem(js, keys[i]);
        if (!cJSON_IsNumber(x)) {
            cJSON_Delete(js);
            return st_errorf(err, ST_ERR_FORMAT, "%s: missing number '%s'", path, keys[i]);
        }
        v[i] = x->valuedouble;
    }
    int pack = cJSON_IsTrue(cJSON_GetObjectItem(js, "pack"));
    if ((uint64_t)v[2] != o->seed || (int)v[3] != o->batch_size || (int)v[4] != o->grad_accum ||
        (int)v[5] != o->max_seq_len || pack != !!o->pack) {
        cJSON_Delete(js);
        return st_errorf(err, ST_ERR_ARG,
                         "%s: the checkpoint was made with --seed %.0f --batch-size %.0f "
                         "--grad-accum %.0f --max-seq-len %.0f and packing %s; resume with the "
                         "same values", path, v[2], v[3], v[4], v[5], pack ? "on" : "off");
    }
    s->step = (long)v[0];
    s->tokens = (size_t)v[1];
    const char *ds = cJSON_GetStringValue(cJSON_GetObjectItem(js, "data_state"));
    s->data_state = ds && *ds ? st_strdup(ds) : NULL;
    const cJSON *pend = cJSON_GetObjectItem(js, "pending");
    size_t np = (size_t)cJSON_GetArraySize(pend);
    s->pending = st_calloc(np ? np : 1, sizeof *s->pending);
    for (const cJSON *e = pend ? pend->child : NULL; e && s->pending; e = e->next) {
        struct st_example *x = &s->pending[s->n_pending++];
        const cJSON *ids = cJSON_GetObjectItem(e, "ids"), *lab = cJSON_GetObjectItem(e, "labels");
        size_t n = (size_t)cJSON_GetArraySize(ids);
        x->ids = st_malloc((n ? n : 1) * sizeof(int32_t));
        x->labels = st_malloc((n ? n : 1) * sizeof(int32_t));
        if (!x->ids || !x->labels || (size_t)cJSON_GetArraySize(lab) != n) {
            cJSON_Delete(js);
            return st_errorf(err, ST_ERR_FORMAT, "%s: bad 'pending' entry", path);
        }
        const cJSON *a = ids->child, *b = lab->child;
        for (size_t t = 0; t < n; t++, a = a->next, b = b->next) {
            x->ids[t] = (int32_t)a->valuedouble;
            x->labels[t] = (int32_t)b->valuedouble;
            if (x->ids[t] < 0 || x->ids[t] >= c->vocab_size) {
                cJSON_Delete(js);
                return st_errorf(err, ST_ERR_FORMAT, "%s: bad id in 'pending'", path);
            }
        }
        x->n = x->cap = n;
    }
    cJSON_Delete(js);
    if (!s->pending) return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    if ((rc = st_lora_load(lo, c, ck, err))) return rc;
    /* the adapter's shape and scale come from the checkpoint: flags that say otherwise would be
     * ignored, so they are an error (as --seed and --batch-size above) */
    const struct st_lora_config *h = &lo->cfg, *w = &o->lora;
    if (!o->init_adapter && /* (a run started from --adapter took its shape from it) */
        (h->rank != w->rank || h->alpha != w->alpha || !h->rslora != !w->rslora ||
         h->targets != w->targets || h->first_layer != w->first_layer))
        return st_errorf(err, ST_ERR_ARG,
                         "%s: the checkpoint's adapter has rank %d, alpha %g%s, target mask 0x%x "
                         "and adapters from layer %d; this run asks for rank %d, alpha %g%s, mask "
                         "0x%x from layer %d: resume with the same --rank, --alpha, --rslora, "
                         "--targets and --layers",
                         ck, h->rank, (double)h->alpha, h->rslora ? " (rsLoRA)" : "", h->targets,
                         h->first_layer, w->rank, (double)w->alpha, w->rslora ? " (rsLoRA)" : "",
                         w->targets, w->first_layer);
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

static enum st_status evaluate(struct st_model *m, struct st_acts *a, const struct st_batch *vb,
                               size_t nvb, long max_batches, double *out, struct st_error *err) {
    double sum = 0;
    size_t count = 0, saveB = a->B, saveT = a->T;
    int was_training = m->training;
    m->training = 0;
    enum st_status rc = ST_OK;
    for (size_t i = 0; i < nvb && !rc; i++) {
        if (max_batches > 0 && (long)i >= max_batches) break;
        /* at most the planned rows at a time (fewer than a batch with row groups) */
        size_t T = vb[i].T;
        for (size_t r0 = 0; r0 < vb[i].B && !rc; r0 += saveB) {
            a->B = vb[i].B - r0 < saveB ? vb[i].B - r0 : saveB;
            a->T = T;
            rc = st_model_forward_loss(m, a, vb[i].ids + r0 * T,
                                       vb[i].seg ? vb[i].seg + r0 * T : NULL,
                                       vb[i].targets + r0 * T, 0, &sum, &count, err);
        }
    }
    a->B = saveB;
    a->T = saveT;
    m->training = was_training;
    *out = count ? sum / (double)count : NAN;
    return rc;
}

/* ---------------------------------------------------------------- rows in parallel */

/* A micro-batch's rows split into groups of `per` consecutive rows, one group per thread, each
 * on its own model view (model.h), activations and adapter gradients (a gradient view of lo),
 * when the frozen matmuls are streamtune's own kernels (BF16 or packed F32 panels, or quantised
 * tiles) and there are threads and rows to share. A batch split over threads inside every kernel call
 * synchronises them some 600 times a step, and one of two cores sat idle ~5% of it; two
 * one-thread processes side by side made 813-820 tok/s against 731-747 for one two-thread process
 * (Llama 110M bf16, bench/NOTES.md). Group 0 runs on the model and the main activations; the
 * other groups' gradients and losses are added to lo's after the group, in group order, so a run
 * is reproducible for a given thread count (not across thread counts: the sums split
 * differently). Quantised bases too: each group dequantises every tile it multiplies into its
 * own view's scratch, the dequantisation done once per group, which ate the gain while it was
 * scalar (QLoRA Llama 110M, AMD: 720-741 tok/s either way); with AVX-512 dequantisation and 4M
 * tiles it is ~2.5% of a step, and groups made QLoRA steps ~10% faster (interleaved, SmolLM2-135M,
 * BF16 and F32 compute: bench/NOTES.md, session 12). */
#define DP_MAX 64

struct dp {
    int nw;     /* groups (1: the batch on all threads at once) */
    size_t per; /* rows per group */
    struct st_model view[DP_MAX];
    struct st_acts acts[DP_MAX];
    struct st_lora grads[DP_MAX];
    double loss[DP_MAX];
    size_t count[DP_MAX];
    enum st_status rc[DP_MAX];
    struct st_error err[DP_MAX];
};

/* free groups 1.. (those set up, or partly) */
static void dp_clear(struct dp *d) {
    for (int w = 1; w < d->nw; w++) {
        if (d->view[w].view) {
            st_acts_free(&d->acts[w]);
            st_model_free(&d->view[w]);
        }
        st_lora_grad_view_free(&d->grads[w]);
    }
}

/* One micro-batch (B rows of T) forward and backward in groups (d->nw > 1, B > per). */
static enum st_status dp_step(struct dp *d, struct st_model *m, struct st_acts *a,
                              struct st_lora *lo, const struct st_batch *b, uint64_t seed,
                              float scale, double *loss_sum, size_t *count, struct st_error *err) {
    size_t B = b->B, T = b->T, ng = (B + d->per - 1) / d->per;
    st_blas_threads(1); /* the adapters' BLAS calls: one thread each */
    /* each group's kernels on its own thread, plus the threads of the groups done first (core.h:
     * st_share; the model polls between ops): nested teams, one level inside the groups' */
    struct st_share share = {0};
    int levels = omp_get_max_active_levels();
    omp_set_max_active_levels(2);
#pragma omp parallel for num_threads((int)ng) schedule(static, 1)
    for (size_t w = 0; w < ng; w++) {
        st_share_join(&share);
        size_t r0 = w * d->per, nr = B - r0 < d->per ? B - r0 : d->per;
        struct st_model *mw = w ? &d->view[w] : m;
        struct st_acts *aw = w ? &d->acts[w] : a;
        struct st_lora *gw = w ? &d->grads[w] : lo;
        if (w) {
            st_lora_zero_grads(gw);
            mw->training = m->training;
            mw->dropout_seed = seed; /* and its rows' token offset: the batch's masks */
            mw->dropout_tok0 = r0 * T;
        }
        size_t saveB = aw->B, saveT = aw->T;
        aw->B = nr, aw->T = T;
        const int32_t *seg = b->seg ? b->seg + r0 * T : NULL;
        d->loss[w] = 0, d->count[w] = 0;
        d->rc[w] = st_model_forward_loss(mw, aw, b->ids + r0 * T, seg, b->targets + r0 * T, scale,
                                         &d->loss[w], &d->count[w], &d->err[w]);
        if (!d->rc[w])
            d->rc[w] = st_model_backward(mw, aw, b->ids + r0 * T, b->targets + r0 * T, seg, scale,
                                         gw, &d->err[w]);
        aw->B = saveB, aw->T = saveT;
        st_share_leave();
    }
    omp_set_max_active_levels(levels);
    st_blas_threads(st_threads_get());
    enum st_status rc = ST_OK;
    for (size_t w = 0; w < ng; w++) {
        if (d->rc[w] && !rc) {
            rc = d->rc[w];
            *err = d->err[w];
        }
        *loss_sum += d->loss[w];
        *count += d->count[w];
        if (w)
            for (size_t i = 0; i < lo->n_params; i++) lo->grads[i] += d->grads[w].grads[i];
    }
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
    char l[40], g[40];
    if (!strcmp(ev->kind, "train"))
        fprintf(mf,
                "{\"kind\": \"train\", \"step\": %ld, \"loss\": %s, \"lr\": %.9g, \"grad_norm\": "
                "%s, \"tokens\": %zu, \"tokens_per_s\": %.1f, \"step_seconds\": %.4f, "
                "\"elapsed\": %.3f}\n",
                ev->step, st_json_num(l, sizeof l, "%.17g", ev->loss), ev->lr,
                st_json_num(g, sizeof g, "%.9g", ev->grad_norm), ev->tokens, ev->tokens_per_s,
                ev->step_seconds, ev->elapsed);
    else if (!strcmp(ev->kind, "eval"))
        fprintf(mf, "{\"kind\": \"eval\", \"step\": %ld, \"val_loss\": %s, \"elapsed\": %.3f}\n",
                ev->step, st_json_num(l, sizeof l, "%.17g", ev->val_loss), ev->elapsed);
    fflush(mf);
}

/* Resuming at step: metrics.jsonl keeps its lines up to that step (the run being resumed may have
 * logged later steps before it stopped, and a kill can leave half a line): a run's log lists each
 * step once. Rewritten atomically; a missing file is fine. */
static enum st_status trim_metrics(const char *path, long step, struct st_error *err) {
    char *text;
    size_t len;
    if (access(path, F_OK) != 0) return ST_OK;
    enum st_status rc = st_read_file(path, (size_t)1 << 30, &text, &len, err);
    if (rc) return rc;
    size_t w = 0;
    for (size_t i = 0; i < len;) {
        char *nl = memchr(text + i, '\n', len - i);
        if (!nl) break; /* a line a kill cut short */
        size_t n = (size_t)(nl - (text + i)) + 1;
        cJSON *j = cJSON_ParseWithLength(text + i, n - 1);
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "step");
        if (cJSON_IsNumber(st) && st->valuedouble <= (double)step) {
            memmove(text + w, text + i, n);
            w += n;
        }
        cJSON_Delete(j);
        i += n;
    }
    rc = w == len ? ST_OK : st_write_file_atomic(path, text, w, err);
    st_free(text);
    return rc;
}

enum st_status st_train(const struct st_train_options *o, st_train_cb cb, void *ctx,
                        struct st_error *err) {
    enum st_status rc = ST_OK;
    struct st_model m;
    struct st_tokenizer *tok = NULL;
    struct st_chat_template *tmpl = NULL;
    struct st_lora lo = {0};
    struct st_acts a = {0};
    float *m1 = NULL, *m2 = NULL;
    struct sources src = {0};
    struct st_batch *vb = NULL;
    size_t nvb = 0, val_records = 0;
    struct loader L;
    memset(&L, 0, sizeof L);
    pthread_mutex_init(&L.mu, NULL);
    pthread_cond_init(&L.cv, NULL);
    struct qitem *micro = NULL;
    struct dp *dp = NULL;
    struct state s = {0};
    FILE *mf = NULL;
    int have_model = 0;
    size_t rss0 = rss_now();

    if (o->batch_size < 1 || o->grad_accum < 1 || o->max_seq_len < 2 || o->steps < 1) {
        rc = st_errorf(err, ST_ERR_ARG, "--steps, --batch-size and --grad-accum must be >= 1 "
                       "and --max-seq-len >= 2");
        goto done;
    }
    if (!(o->lr > 0)) {
        rc = st_errorf(err, ST_ERR_ARG, "--lr must be positive");
        goto done;
    }
    if (o->min_lr > o->lr) { /* the schedule would climb from --lr to it */
        rc = st_errorf(err, ST_ERR_ARG, "--min-lr %g is above --lr %g: the schedule decays from "
                       "--lr to --min-lr", o->min_lr, o->lr);
        goto done;
    }
    if ((rc = st_model_load_ex(&m, o->model_dir, &o->load, err))) goto done;
    have_model = 1;
    size_t live_model = st_alloc_live_bytes(); /* the plan counts what comes after separately */
    struct st_error terr;
    if (st_tokenizer_load(&tok, o->model_dir, &terr)) tok = NULL;
    struct st_error cterr = {0};
    enum st_status ctrc = st_chat_template_load(&tmpl, o->model_dir, &cterr);
    if (ctrc) tmpl = NULL;
    if (ctrc && ctrc != ST_ERR_UNSUPPORTED) /* broken, not absent: said now, and fatal for the
                                            * records that would use it */
        st_log(ST_LOG_WARN, "the model's chat template does not load: %s", cterr.msg);
    size_t T = (size_t)(o->max_seq_len < m.cfg.max_seq_len ? o->max_seq_len : m.cfg.max_seq_len);
    if ((size_t)o->max_seq_len > T)
        st_log(ST_LOG_INFO, "--max-seq-len %d is past the model's context: rows of %zu tokens",
               o->max_seq_len, T);
    struct st_train_options oo = *o; /* examples.max_len follows the planned row length */
    oo.examples.max_len = (int)T;
    if (ctrc && ctrc != ST_ERR_UNSUPPORTED) oo.examples.tmpl_error = cterr.msg;
    o = &oo;
    int32_t pad = m.cfg.pad_token_id >= 0 && m.cfg.pad_token_id < m.cfg.vocab_size
                      ? m.cfg.pad_token_id : 0;
    size_t B = (size_t)o->batch_size;

    /* data sources: explicit validation, or a train.. / valid.. split of the data source */
    if (o->val_data) {
        if ((rc = list_urls(o, o->data, &src.train, &src.n_train, NULL, NULL, err))) goto done;
        if ((rc = list_val(o, o->val_data, &src.val, &src.n_val, err))) goto done;
    } else if ((rc = list_urls(o, o->data, &src.train, &src.n_train, &src.val, &src.n_val, err))) {
        goto done;
    }
    if (src.n_val && (rc = load_val(o, src.val, src.n_val, B, T, pad, tok, tmpl, &m.cfg, &vb, &nvb,
                                    &val_records, err)))
        goto done;

    /* adapter: resumed, given, or fresh */
    char ck[4400] = "";
    if (!o->resume && !o->dry_run) { /* a fresh run would overwrite another run's adapter and
                                      * log, and leave its later checkpoints beside its own */
        char lp[4400];
        snprintf(lp, sizeof lp, "%s/checkpoints/latest", o->out_dir);
        if (access(lp, F_OK) == 0) {
            rc = st_errorf(err, ST_ERR_ARG, "%s already holds a training run (%s): --resume %s "
                           "continues it; to start over, remove it or choose another --out",
                           o->out_dir, lp, o->out_dir);
            goto done;
        }
    }
    if (o->resume) {
        if ((rc = find_checkpoint(o->resume, ck, sizeof ck, err))) goto done;
        if ((rc = load_checkpoint(o, ck, &m.cfg, &lo, &m1, &m2, &s, err))) goto done;
    } else if (o->init_adapter) {
        if ((rc = st_lora_load(&lo, &m.cfg, o->init_adapter, err))) goto done;
        if (lo.cfg.rank != o->lora.rank || lo.cfg.targets != o->lora.targets ||
            lo.cfg.alpha != o->lora.alpha || lo.cfg.first_layer != o->lora.first_layer)
            st_log(ST_LOG_INFO, "--adapter %s: its rank %d, alpha %g and modules are used "
                   "(--rank, --alpha, --targets and --layers do not apply)", o->init_adapter,
                   lo.cfg.rank, (double)lo.cfg.alpha);
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
    int mode = (o->grad_checkpoint ? ST_ACTS_CHECKPOINT : ST_ACTS_TRAIN) | ST_ACTS_CHUNKED_HEAD;
    size_t b_weights = m.converted.size + m.qarena.size + m.parena.size + m.mapped_bytes;
    size_t b_lora = lo.n_params * 4 * 4; /* params, grads, two moments */
    size_t b_acts = st_acts_bytes(&m.cfg, B, T, mode, lo.cfg.rank);
    size_t b_valb = 0;
    for (size_t i = 0; i < nvb; i++)
        b_valb += vb[i].B * vb[i].T * (vb[i].seg ? 3 : 2) * sizeof(int32_t);
    size_t b_batches = (size_t)(QCAP + o->grad_accum + 1) * B * T * 3 * sizeof(int32_t) + b_valb;
    size_t b_stream = o->stream.memory_budget; /* a cap; the validation stream is closed first */
    size_t live = st_alloc_live_bytes(), counted = live_model + lo.n_params * 16 + b_valb;
    size_t b_tok = live > counted ? live - counted : 0; /* tokenizer, template, shard lists */
    size_t total = rss0 + b_weights + b_lora + b_acts + b_batches + b_stream + b_tok;
    /* no --max-memory: never plan beyond 90% of this machine's RAM (an over-committed plan would
     * otherwise end in the kernel's OOM killer, not in a message) */
    size_t limit = o->max_memory;
    int limit_is_ram = 0;
    if (!limit) {
        long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        if (pages > 0 && psz > 0) {
            limit = (size_t)((double)pages * (double)psz * 0.9);
            limit_is_ram = 1;
        }
    }
    /* rows in parallel (struct dp): the other groups' activations, gradients and scratch, when
     * they fit the limit */
    int nw = 1, th = st_threads_get();
    size_t per = B, b_dp = 0;
    /* one group per thread, all of the same size (a thread without a group, or with fewer rows,
     * would sit idle: then the batch goes on all threads at once); the groups' activations
     * replace the batch's, plus one set of scratch and adapter gradients per extra group */
    if (th > 1 && th <= DP_MAX && B % (size_t)th == 0 && (m.bf16 || m.f32_panels)) {
        size_t ab = st_acts_bytes(&m.cfg, B / (size_t)th, T, mode, lo.cfg.rank), extra = 0;
        int ok = ab != SIZE_MAX && !st_mul_size((size_t)th, ab, &b_dp) &&
                 !st_mul_size((size_t)(th - 1),
                              lo.n_params * 4 + m.bscratch_bytes + m.qscratch_bytes, &extra) &&
                 !st_add_size(b_dp, extra, &b_dp);
        size_t with = total - b_acts + b_dp;
        if (ok && !(with < total - b_acts) && (!limit || with <= limit)) {
            nw = th, per = B / (size_t)th;
            total = with;
        } else {
            b_dp = 0;
        }
    }
    char plan[2048], x1[32], x2[32], x3[32], x4[32], x5[32], x6[32], x7[32], wdesc[160];
    if (m.quant)
        snprintf(wdesc, sizeof wdesc, "%s%s base, %s, F32 compute", st_quant_name(m.quant),
                 m.quant == ST_QUANT_NF4 && o->load.double_quant ? " double-quantised" : "",
                 m.q_embed.kind ? "embeddings too" : "embeddings unquantised");
    else if (m.bf16)
        snprintf(wdesc, sizeof wdesc, "projections packed in BF16 for %s, F32 norms/embeddings",
                 st_bf16_native() ? st_bf16_kernel_name() : "the portable BF16 kernel");
    else
        snprintf(wdesc, sizeof wdesc, "%s",
                 m.dtype == ST_F32 ? "F32, memory-mapped" : "converted to F32");
    fmt_bytes(x1, sizeof x1, (double)b_weights);
    fmt_bytes(x2, sizeof x2, (double)b_lora);
    fmt_bytes(x3, sizeof x3, (double)(nw > 1 ? b_dp : b_acts));
    fmt_bytes(x4, sizeof x4, (double)(b_batches + b_tok));
    fmt_bytes(x5, sizeof x5, (double)rss0);
    fmt_bytes(x6, sizeof x6, (double)total);
    fmt_bytes(x7, sizeof x7, (double)b_stream);
    char par[128] = "";
    if (nw > 1)
        snprintf(par, sizeof par, "; rows in %d groups of %zu, one per thread, each with its own "
                 "scratch and adapter gradients", nw, per);
    int nmod = 0;
    for (int i = 0; i < m.cfg.n_layers * ST_LIN_COUNT; i++) nmod += lo.mod[i].a != NULL;
    snprintf(plan, sizeof plan,
             "memory plan: batch %zu x %zu tokens (%s), LoRA rank %d on %d modules (%zu params)\n"
             "  model weights      %s (%s)\n"
             "  LoRA + grads + AdamW %s\n"
             "  activations        %s (gradient checkpointing %s%s)\n"
             "  stream buffers     %s (at most: --stream-memory)\n"
             "  batches, tokenizer %s (%d train shards, %d validation shards, %zu validation "
             "records)\n"
             "  process baseline   %s\n"
             "  total              %s",
             B, T, o->pack ? "packed" : "padded", lo.cfg.rank, nmod, lo.n_params, x1,
             wdesc, x2, x3,
             o->grad_checkpoint ? "on" : "off", par, x7, x4, src.n_train, src.n_val, val_records, x5,
             x6);
    if (cb) {
        struct st_train_event ev = {.kind = "plan", .plan_text = plan, .plan_bytes = total,
                                    .total_steps = o->steps};
        cb(ctx, &ev);
    }
    if (limit && total > limit) {
        char lim[48], b1[32], ck1[32];
        fmt_bytes(lim, sizeof lim, (double)limit);
        if (limit_is_ram) strncat(lim, " (90% of this machine's RAM)", sizeof lim - strlen(lim) - 1);
        fmt_bytes(b1, sizeof b1,
                  (double)(total - b_acts + st_acts_bytes(&m.cfg, 1, T, mode, lo.cfg.rank)));
        fmt_bytes(ck1, sizeof ck1,
                  (double)(total - b_acts + st_acts_bytes(&m.cfg, B, T,
                                                          ST_ACTS_CHECKPOINT | ST_ACTS_CHUNKED_HEAD,
                                                          lo.cfg.rank)));
        rc = st_errorf(err, ST_ERR_NOMEM,
                       "the run needs %s but the limit is %s: lower --batch-size (batch 1: "
                       "%s), --max-seq-len (now %zu) or --stream-memory%s%s%s",
                       x6, lim, b1, T, o->grad_checkpoint ? "" : ", or add --grad-checkpoint (",
                       o->grad_checkpoint ? "" : ck1, o->grad_checkpoint ? "" : ")");
        goto done;
    }
    if (o->dry_run) goto done;
    if (nw > 1 && !(dp = st_calloc(1, sizeof *dp))) nw = 1, per = B;
    if (dp) dp->nw = nw, dp->per = per;
    for (int w = 1; w < nw; w++) { /* a group that cannot be set up: the batch on all threads at
                                    * once, as without groups */
        struct st_error werr;
        if (st_model_view(&dp->view[w], &m, &werr) ||
            st_acts_init(&dp->acts[w], &dp->view[w], per, T, mode, &werr) ||
            st_lora_grad_view(&dp->grads[w], &lo, &werr)) {
            st_log(ST_LOG_WARN, "train: the batch on all threads at once, not in %d groups: %s",
                   nw, werr.msg);
            dp_clear(dp);
            st_free(dp);
            dp = NULL;
            nw = 1, per = B;
            break;
        }
    }
    if (nw > 1) st_log(ST_LOG_INFO, "train: rows in %d groups of %zu, one per thread", nw, per);
    /* group 0's activations are the main ones (validation runs through them too, per rows at a
     * time) */
    if ((rc = st_acts_init(&a, &m, per, T, mode, err))) goto done;

    /* the training stream and its loader thread */
    struct st_stream_options so = o->stream;
    so.url = NULL;
    so.urls = (const char *const *)src.train;
    so.n_urls = src.n_train;
    so.seed = o->seed; /* (shuffled unless --no-shuffle: the stream's default) */
    so.epochs = 0;
    so.resume_state = s.data_state;
    L.o = o;
    L.tok = tok;
    L.tmpl = tmpl;
    L.cfg = &m.cfg;
    L.resumed = s.data_state != NULL;
    if ((rc = st_stream_open(&L.stream, &so, err))) goto done;
    if ((rc = st_packer_init(&L.packer, B, T, o->pack, pad, err))) goto done;
    for (size_t i = 0; i < s.n_pending; i++)
        if (st_packer_add(L.packer, &s.pending[i], err) < 0) {
            rc = err->code;
            goto done;
        }
    if (pthread_create(&L.th, NULL, loader_main, &L) != 0) {
        rc = st_errorf(err, ST_ERR_NOMEM, "cannot start the data loader thread");
        goto done;
    }
    L.started = 1;
    micro = st_calloc((size_t)o->grad_accum, sizeof *micro);
    if (!micro) {
        rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        goto done;
    }

    if ((rc = st_mkdirs(o->out_dir, err))) goto done;
    char mpath[4200];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", o->out_dir);
    if (o->resume && (rc = trim_metrics(mpath, s.step, err))) goto done;
    mf = fopen(mpath, o->resume ? "a" : "w");
    if (!mf) {
        rc = st_errorf(err, ST_ERR_IO, "%s: cannot open: %s", mpath, strerror(errno));
        goto done;
    }
    long warmup = o->warmup >= 0 ? o->warmup : (o->steps / 10 < 100 ? o->steps / 10 : 100);
    struct st_adamw opt = {0, 0.9f, 0.999f, 1e-8f, (float)o->weight_decay};
    double t0 = st_time_now();
    size_t tokens_run = 0;
    long first_step = s.step;
    m.training = 1;
    if (nvb && s.step == 0) {
        double vl;
        if ((rc = evaluate(&m, &a, vb, nvb, o->val_batches, &vl, err))) goto done;
        struct st_train_event ev = {.kind = "eval", .step = 0, .total_steps = o->steps,
                                    .val_loss = vl, .elapsed = st_time_now() - t0};
        append_metrics(mf, &ev);
        if (cb) cb(ctx, &ev);
    }
    double wait_before_train = L.wait_s, train_t0 = st_time_now();
    while (s.step < o->steps) {
        double step_t0 = st_time_now();
        /* one optimizer step = grad_accum micro-batches; count the step's target tokens first so
         * every micro-batch's gradient is scaled by 1 / (targets of the whole step) */
        size_t step_count = 0, step_tokens = 0;
        for (int k = 0; k < o->grad_accum; k++) {
            if (loader_pop(&L, &micro[k], err)) {
                rc = err->code ? err->code : ST_ERR_IO;
                for (int q = 0; q < k; q++) {
                    st_batch_free(&micro[q].b);
                    st_free(micro[q].state);
                    pending_free(micro[q].pending, micro[q].n_pending);
                }
                goto done;
            }
            step_count += micro[k].b.targets_n;
            step_tokens += micro[k].b.tokens;
        }
        st_lora_zero_grads(&lo);
        double loss_sum = 0;
        size_t count = 0;
        for (int k = 0; k < o->grad_accum && !rc; k++) {
            struct st_batch *b = &micro[k].b;
            a.T = b->T;
            m.dropout_seed = mix(mix(o->seed, (uint64_t)s.step), (uint64_t)k);
            if (step_count && dp && b->B > dp->per) {
                rc = dp_step(dp, &m, &a, &lo, b, m.dropout_seed, (float)(1.0 / step_count),
                             &loss_sum, &count, err);
            } else if (step_count) {
                /* the head and the cross-entropy run a chunk of rows at a time, their backward
                 * too: the logits are never held whole */
                rc = st_model_forward_loss(&m, &a, b->ids, b->seg, b->targets,
                                           (float)(1.0 / step_count), &loss_sum, &count, err);
                if (!rc)
                    rc = st_model_backward(&m, &a, b->ids, b->targets, b->seg,
                                           (float)(1.0 / step_count), &lo, err);
            }
            a.T = T;
        }
        /* the data position after this step: the last micro-batch's snapshot */
        st_free(s.data_state);
        pending_free(s.pending, s.n_pending);
        s.data_state = micro[o->grad_accum - 1].state;
        s.pending = micro[o->grad_accum - 1].pending;
        s.n_pending = micro[o->grad_accum - 1].n_pending;
        for (int k = 0; k < o->grad_accum; k++) {
            st_batch_free(&micro[k].b);
            if (k < o->grad_accum - 1) {
                st_free(micro[k].state);
                pending_free(micro[k].pending, micro[k].n_pending);
            }
        }
        if (rc) goto done;
        double norm = st_grad_clip(lo.grads, lo.n_params, o->max_grad_norm);
        if (!isfinite(norm) || !isfinite(loss_sum)) {
            /* an update with inf/NaN would poison the adapter and AdamW's moments for good: stop
             * before it, so the adapter keeps its last checkpoint */
            rc = st_errorf(err, ST_ERR_FORMAT,
                           "step %ld: the %s is not finite (loss %g over %zu tokens, gradient "
                           "norm %g); the update was not applied (the last checkpoint, if "
                           "any, is in %s/checkpoints): lower --lr, or check the model's "
                           "weights (an f16 overflow) and the data",
                           s.step + 1, !isfinite(loss_sum) ? "loss" : "gradient",
                           count ? loss_sum / (double)count : 0.0, count, norm, o->out_dir);
            goto done;
        }
        double lr = st_lr_at(o->schedule, o->lr, o->min_lr, warmup, o->steps, s.step);
        opt.lr = (float)lr;
        s.step++;
        st_adamw_step(lo.params, lo.grads, m1, m2, lo.n_params, &opt, s.step);
        s.tokens += count;
        tokens_run += step_tokens;
        double el = st_time_now() - t0, tel = st_time_now() - train_t0;
        struct st_train_event ev = {.kind = "train", .step = s.step, .total_steps = o->steps,
                                    .loss = count ? loss_sum / (double)count : NAN, .lr = lr,
                                    .grad_norm = norm, .tokens = s.tokens,
                                    .tokens_per_s = (double)tokens_run / tel, .elapsed = el,
                                    .step_seconds = st_time_now() - step_t0};
        ev.eta = tel / (double)(s.step - first_step) * (double)(o->steps - s.step);
        ev.data_wait_frac = (L.wait_s - wait_before_train) / (tel > 0 ? tel : 1);
        append_metrics(mf, &ev);
        if (cb) cb(ctx, &ev);
        int last = s.step == o->steps;
        if (nvb && ((o->eval_every > 0 && s.step % o->eval_every == 0) || last)) {
            double vl;
            if ((rc = evaluate(&m, &a, vb, nvb, o->val_batches, &vl, err))) goto done;
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
    loader_stop(&L);
    if (L.started == 0 && L.skipped) /* the loader has stopped: its counts are final */
        st_log(ST_LOG_WARN, "%llu of the %llu records read were skipped: no token to train on",
               (unsigned long long)L.skipped, (unsigned long long)L.records);
    if (mf) fclose(mf);
    st_free(micro);
    st_free(s.data_state);
    pending_free(s.pending, s.n_pending);
    for (size_t i = 0; i < nvb; i++) st_batch_free(&vb[i]);
    st_free(vb);
    sources_free(&src);
    st_free(m1);
    st_free(m2);
    if (dp) dp_clear(dp);
    st_free(dp);
    st_acts_free(&a);
    st_lora_free(&lo);
    st_chat_template_free(tmpl);
    st_tokenizer_free(tok);
    if (have_model) st_model_free(&m);
    return rc;
}
