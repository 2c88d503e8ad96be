/* streamtune training: optimizer, learning-rate schedules, gradient clipping, and the trainer.
 *
 * DESIGN: the optimizer is one loop over flat arrays (the adapter's params/grads and two moment
 * arrays of the same length). Its arithmetic is torch.optim.AdamW's (PyTorch 1.13) so a loss
 * trajectory can be compared with a PyTorch run step by step. */
#ifndef STREAMTUNE_TRAIN_H
#define STREAMTUNE_TRAIN_H

#include <stddef.h>

#include "streamtune/core.h"
#include "streamtune/lora.h"
#include "streamtune/data.h"
#include "streamtune/examples.h"
#include "streamtune/model.h"

#ifdef __cplusplus
extern "C" {
#endif

struct st_adamw {
    float lr, beta1, beta2, eps, weight_decay;
};
/* One AdamW step (t counts from 1): p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). */
void st_adamw_step(float *p, const float *g, float *m, float *v, size_t n,
                   const struct st_adamw *o, long t);

/* Global L2 norm of g (n floats), accumulated in double. */
double st_grad_norm(const float *g, size_t n);
/* Clip to max_norm the way torch.nn.utils.clip_grad_norm_ does: coef = max_norm / (norm + 1e-6),
 * applied when coef < 1. Returns the norm before clipping. max_norm <= 0: no clipping. */
double st_grad_clip(float *g, size_t n, double max_norm);

enum st_schedule { ST_SCHED_CONSTANT = 0, ST_SCHED_COSINE, ST_SCHED_LINEAR };
/* Learning rate at optimizer step `step` (0-based) of `total`: linear warm-up from lr/warmup to
 * lr over `warmup` steps, then constant, cosine or linear decay to min_lr at step total - 1. */
double st_lr_at(enum st_schedule s, double lr, double min_lr, long warmup, long total, long step);
enum st_status st_schedule_parse(const char *s, enum st_schedule *out, struct st_error *err);

/* ---- the trainer ---- */

struct st_train_options {
    const char *model_dir;
    /* Training data: any source of the stream (file, directory, file://, http(s)://, s3://,
     * index manifest). When its shards include train.. and valid.. (or val..) files (mlx-lm style
     * folder or prefix), the train ones train and the valid ones validate. */
    const char *data;
    const char *val_data;  /* optional explicit validation source */
    struct st_stream_options stream; /* budget, S3 settings, retries ... (url/seed/shuffle set here) */
    struct st_example_options examples;
    int pack;              /* pack several documents per row (default on) */
    const char *out_dir;
    const char *resume;    /* output dir (or checkpoint dir) of an earlier run */
    const char *init_adapter; /* start from this PEFT adapter instead of a fresh one */
    long steps;            /* optimizer steps */
    int batch_size, grad_accum, max_seq_len;
    double lr, min_lr, weight_decay, max_grad_norm;
    long warmup;
    enum st_schedule schedule;
    struct st_lora_config lora;
    uint64_t seed;
    long eval_every, save_every;
    long val_batches;      /* 0: the whole validation file */
    int keep_checkpoints;
    int grad_checkpoint;
    struct st_model_load_options load; /* --quantize nf4|int8 (QLoRA), --no-double-quant ... */
    size_t max_memory;     /* bytes; 0: no limit */
    int dry_run;           /* print the plan and stop */
};
void st_train_options_default(struct st_train_options *o);

/* What the trainer reports, once per optimizer step (kind "train"), per evaluation ("eval"),
 * per checkpoint ("save") and once for the plan ("plan"). */
struct st_train_event {
    const char *kind;
    long step, total_steps;
    double loss, val_loss, lr, grad_norm;
    double tokens_per_s, elapsed, eta, data_wait;
    size_t tokens;          /* trained (non-masked) tokens so far */
    double step_seconds;    /* train: wall time of this optimizer step (data wait included) */
    double data_wait_frac;  /* fraction of the run's time spent waiting for data */
    const char *path;       /* save: checkpoint directory */
    const char *plan_text;  /* plan: human-readable memory plan */
    size_t plan_bytes;
};
typedef void (*st_train_cb)(void *ctx, const struct st_train_event *ev);

/* Run training. Writes DIR/adapter_config.json + DIR/adapter_model.safetensors at the end,
 * DIR/metrics.jsonl as it goes, and DIR/checkpoints/step-NNNNNNN/ every save_every steps. */
enum st_status st_train(const struct st_train_options *o, st_train_cb cb, void *ctx,
                        struct st_error *err);

/* Parse sizes like "512M", "8G", "1.5GiB", "1000000". */
int st_parse_bytes(const char *s, size_t *out);

#ifdef __cplusplus
}
#endif
#endif
