/* streamtune model: a Hugging Face decoder LLM (Llama, Mistral, Qwen2, Gemma) as one configurable
 * transformer block, with planned activation buffers, KV-cache decoding and sampling.
 *
 * DESIGN: weights stay in the read-only safetensors maps when they are F32; BF16/F16 tensors are
 * converted once into one arena (the fast bf16 path comes with the performance issue). Activations
 * for (B, T) are sized by st_acts_plan before anything runs and live in one arena. */
#ifndef STREAMTUNE_MODEL_H
#define STREAMTUNE_MODEL_H

#include "streamtune/config.h"
#include "streamtune/formats.h"
#include "streamtune/kernels.h"
#include "streamtune/lora.h"
#include "streamtune/quant.h"

#ifdef __cplusplus
extern "C" {
#endif

struct st_layer_weights {
    const float *in_norm;                 // (D)
    const float *wq, *wk, *wv, *wo;        // (nh*hd, D), (nkv*hd, D), (nkv*hd, D), (D, nh*hd)
    const float *bq, *bk, *bv, *bo;        // biases or NULL
    const float *post_norm;               // (D)
    const float *wg, *wu, *wd;            // (H, D), (H, D), (D, H)
    const float *bg, *bu, *bd;            // biases or NULL
    struct st_qweight q[ST_LIN_COUNT];     // quantised projections (kind NONE: use the floats)
    const void *bf[ST_LIN_COUNT];          // packed panels for X W^T (BF16 or F32; else NULL)
    const void *bb[ST_LIN_COUNT];          // ... and for dY W
};

/* Load options. quantize: store the frozen projections (and, unless keep_embeddings, the
 * embedding and the LM head) as NF4 or int8, quantised tensor by tensor from F32/BF16/F16 while
 * loading (peak memory never holds the full 16-bit model). double_quant (default 1): NF4 absmax
 * in 8 bits with a nested scale (bitsandbytes' compress_statistics). A checkpoint already saved
 * by bitsandbytes (NF4 with .absmax/.quant_map/... tensors) is used as stored. */
struct st_model_load_options {
    enum st_quant quantize;
    int double_quant;
    int keep_embeddings;
    /* compute_bf16: the frozen unquantised projections and head are packed once into BF16 and
     * multiplied with BF16-rounded activations, accumulating in float (AVX512_BF16 when the CPU
     * has it, a portable loop otherwise); the F32 copies are not kept. Adapters stay F32.
     * Attention's matrix products also run in BF16 (st_kernels_cpu_bf16). */
    int compute_bf16;
    /* pack_f32 (without compute_bf16): the same for F32: frozen unquantised projections and head
     * packed once into F32 panels for the AVX-512 F32 GEMM (f32.h) instead of BLAS calls; the
     * F32 copies are not kept. For training and evaluation; fuse needs the plain weights. */
    int pack_f32;
};
void st_model_load_options_init(struct st_model_load_options *o);

struct st_model {
    struct st_model_config cfg;
    const struct st_kernels *k;
    const float *embed;      // (V, D)
    const float *final_norm; // (D)
    const float *lm_head;    // (V, D); == embed when tied
    struct st_layer_weights *layers;
    float *inv_freq;         // (hd/2)
    struct st_safetensors *st;
    struct st_arena converted; // F32 copies of BF16/F16 tensors
    /* quantised storage (quant.h) */
    enum st_quant quant;         // NONE, or the format of the quantised matrices
    struct st_qweight q_embed;   // the embedding when quantised (kind NONE otherwise)
    struct st_qweight q_head;    // the LM head when quantised and untied
    struct st_arena qarena;      // codes and scales of matrices quantised at load
    float *qscratch;             // tile scratch of the quantised matmuls (one forward at a
                                 // time: other threads use st_model_view)
    size_t qscratch_bytes;
    size_t qbytes;               // bytes of quantised storage
    size_t mapped_bytes;         // bytes used straight from the safetensors map (F32 tensors)
    /* packed frozen weights: BF16 compute (bf16.h) or F32 panels (f32.h) */
    int bf16;
    int f32_panels;
    /* BF16 panels: a LoRA path's scale xa b^T (forward) and dxa a (backward) are added to the
     * GEMM's output tiles before they are stored, not in passes of their own over the output
     * (ST_NO_LORA_FUSION=1 keeps the separate passes: for tests and A/B runs) */
    int lora_fused;
    const void *head_bf, *head_bb;     // the head packed (NULL: plain F32 or quantised head)
    struct st_arena parena;            // packed panels and the activation scratch
    uint32_t *bscratch;                // BF16 copy (or F32 packed tiles) of a chunk of activation rows
    size_t bscratch_bytes;
    size_t n_params;
    size_t bytes_on_disk;      // sum of the tensors' stored bytes
    enum st_dtype dtype;       // dtype of the embedding (the model's storage dtype)
    char path[1024];
    /* attached adapter (may be NULL) and training-time settings read by the forward */
    const struct st_lora *lora;
    int training;           /* apply LoRA dropout */
    uint64_t dropout_seed;  /* per step: masks are a pure function of (seed, layer, module, i) */
    size_t dropout_tok0;    /* i counts from this many tokens in (a group of rows run alone) */
    int view;               /* st_model_view: shares another model's weights, owns its scratch */
};

/* Load DIR (config.json + safetensors). Validates every tensor's presence, shape and dtype. */
enum st_status st_model_load(struct st_model *m, const char *dir, struct st_error *err);
enum st_status st_model_load_ex(struct st_model *m, const char *dir,
                                const struct st_model_load_options *o, struct st_error *err);
/* Bytes the weights of a model with config c take in memory when loaded with o (the memory plan
 * of train; stored dtype is the checkpoint's, F32 computation). */
size_t st_model_weight_bytes(const struct st_model_config *c,
                             const struct st_model_load_options *o);
void st_model_free(struct st_model *m);
/* A view of m for another thread: the same weights, config and adapter (shared, read-only), with
 * its own matmul scratch, so that a forward on the view may run while another runs on m or on
 * another view. Freed with st_model_free (which then frees only the scratch); m must outlive it
 * and stay unchanged (no adapter attached or detached) while it is in use. */
enum st_status st_model_view(struct st_model *view, const struct st_model *m,
                             struct st_error *err);

/* Activation buffers for a batch of B sequences of T tokens. Modes:
 *   ST_ACTS_INFER: layers share one set of buffers, no gradients.
 *   ST_ACTS_TRAIN: every layer keeps its activations for backward; gradient buffers too.
 *   ST_ACTS_CHECKPOINT: only each layer's input is kept; backward recomputes the layer first
 *   (gradient checkpointing: less memory, one extra forward, identical gradients).
 * LoRA buffers are sized for the adapter attached to the model (m->lora) at init. */
enum st_acts_mode { ST_ACTS_INFER = 0, ST_ACTS_TRAIN = 1, ST_ACTS_CHECKPOINT = 2 };
/* Or'ed into a mode: logits are never held whole; st_model_forward_loss and st_model_score run a
 * chunk of rows at a time through the head and the cross-entropy (at most 256 MiB of logits,
 * whole blocks of 512 rows where they fit), which keeps a 128k vocabulary's N x V logits out of
 * memory while each chunk streams the head's weights (or dequantises a quantised head) once. */
#define ST_ACTS_CHUNKED_HEAD 4
struct st_layer_acts {
    float *res_mid;           // (N, D) residual after attention
    float *rstd1, *rstd2;     // (N)
    float *xn1, *xn2;         // (N, D) normed inputs
    float *q, *k, *v;         // (N, nh*hd), (N, nkv*hd) x2, after RoPE
    float *lse;               // (B, nh, T) attention log-sum-exp (flash-style backward)
    float *ay;                // (N, nh*hd) attention output before o_proj
    float *gate, *up, *g;     // (N, H)
    float *xa[ST_LIN_COUNT];  // (N, r) LoRA low-rank activations (NULL without an adapter)
};
struct st_acts {
    size_t B, T;
    int keep_all; /* enum st_acts_mode */
    int chunked;  /* ST_ACTS_CHUNKED_HEAD: logits hold head_rows rows */
    size_t head_rows;
    int head_grad; /* forward_loss left d loss / d xf in dxn for backward */
    int rank;     /* LoRA rank the buffers were planned for (0: none) */
    float *res;               // (L+1, N, D) with keep_all, else (2, N, D): residual stream
    struct st_layer_acts *layer; // L entries (all alias entry 0 without keep_all)
    float *rstdf;             // (N)
    float *xf;                // (N, D) final normed
    float *logits;            // (N, V), or (head_rows, V) when chunked
    float *tmp;               // (N, max(D, H)) scratch
    float *cos, *sin;         // (T, hd/2)
    int32_t *pos;             // (N)
    float *losses;            // (N)
    int32_t *targets;         // (N) st_model_score's next-token targets
    float *xd;                // (N, max(D, H)) LoRA dropout input scratch
    /* gradient buffers (training modes only) */
    float *dres0, *dres1, *dxn;       // (N, D)
    float *dq, *day;                  // (N, nh*hd)
    float *dk, *dv;                   // (N, nkv*hd)
    float *dg, *dgate, *dup;          // (N, H)
    float *dxa;                       // (N, r)
    float *dxd;                       // (N, max(D, H))
    struct st_arena arena;
};
/* Bytes st_acts_init will allocate for (B, T) in mode keep_all with LoRA rank (0: none). */
size_t st_acts_bytes(const struct st_model_config *c, size_t B, size_t T, int keep_all, int rank);
enum st_status st_acts_init(struct st_acts *a, const struct st_model *m, size_t B, size_t T,
                            int keep_all, struct st_error *err);
void st_acts_free(struct st_acts *a);

/* Forward B sequences of T tokens (ids (B, T), each in [0, V)): fills a->logits (B*T, V).
 * seg (B, T) may be NULL; otherwise tokens attend only within their segment and pos restarts
 * per segment (packing). Returns ST_ERR_ARG for an out-of-range id (naming its index). */
enum st_status st_model_forward(const struct st_model *m, struct st_acts *a, const int32_t *ids,
                                const int32_t *seg, struct st_error *err);

/* After st_model_forward: losses of positions whose target (B*T, -100 = ignored) is set.
 * *loss_sum += sum of their cross-entropies, *count += their number. Validates targets. */
enum st_status st_model_loss(const struct st_model *m, struct st_acts *a, const int32_t *targets,
                             double *loss_sum, size_t *count, struct st_error *err);
/* Forward and loss without whole logits (any acts; needed for ST_ACTS_CHUNKED_HEAD): rows go
 * through the head and the cross-entropy head_rows at a time. *loss_sum, *count as st_model_loss.
 * With grad_scale != 0 (training acts) the head's backward runs right there and st_model_backward
 * continues from it, with the same gradients chunked or not. With BF16 head panels the gradient
 * of the logits is packed to BF16 straight from the logits and losses, so gradients can differ
 * from st_model_loss + st_model_backward's by BF16 rounding (F32: the same bits). */
enum st_status st_model_forward_loss(const struct st_model *m, struct st_acts *a,
                                     const int32_t *ids, const int32_t *seg,
                                     const int32_t *targets, float grad_scale, double *loss_sum,
                                     size_t *count, struct st_error *err);
/* After st_model_forward (and st_model_loss): backward of grad_scale * sum of the losses into
 * the adapter gradients of lo (lo->grads, `+=`): m's attached adapter, or a gradient view of it
 * (st_lora_grad_view). The base model is frozen, embeddings included: no gradient of the
 * embeddings' output is formed (layer 0's q, k, v pass only their LoRA gradients). Overwrites
 * the logits. Needs a TRAIN or CHECKPOINT acts. */
enum st_status st_model_backward(const struct st_model *m, struct st_acts *a, const int32_t *ids,
                                 const int32_t *targets, const int32_t *seg, float grad_scale,
                                 struct st_lora *lo, struct st_error *err);

/* Next-token cross-entropy of n tokens in a (B = 1, T >= n): *loss_sum += -log p(ids[t+1] |
 * ids[..t]) summed over the t whose next token is in the same segment, *count += their number.
 * seg (n) NULL: one sequence (n - 1 predictions). Otherwise a segment id per token: several
 * records packed in one row score as if each ran alone (positions restart per segment and
 * attention stays within it), so short records share one forward. The head and the loss run
 * head_rows rows at a time: with ST_ACTS_CHUNKED_HEAD the whole logits never exist. */
enum st_status st_model_score(const struct st_model *m, struct st_acts *a, const int32_t *ids,
                              const int32_t *seg, size_t n, double *loss_sum, size_t *count,
                              struct st_error *err);

/* ---- inference with a KV cache ---- */
struct st_kv_state;
/* A cache for up to max_T positions; forward chunks of at most chunk tokens at a time. */
enum st_status st_kv_init(struct st_kv_state **out, const struct st_model *m, size_t max_T,
                          size_t chunk, struct st_error *err);
void st_kv_free(struct st_kv_state *s);
size_t st_kv_len(const struct st_kv_state *s); /* positions filled so far */
void st_kv_reset(struct st_kv_state *s);
/* Append n tokens (n <= chunk, len + n <= max_T) and return the logits (V) of the last one
 * (valid until the next call). */
enum st_status st_kv_forward(const struct st_model *m, struct st_kv_state *s, const int32_t *ids,
                             size_t n, const float **logits, struct st_error *err);

/* ---- sampling ---- */
struct st_sampler {
    float temperature; /* <= 0: greedy */
    int top_k;         /* <= 0: off */
    float top_p;       /* >= 1: off */
};
/* Pick a token from logits (V). scratch holds V floats + V ints (st_sample_scratch_bytes). */
size_t st_sample_scratch_bytes(size_t V);
int32_t st_sample(const float *logits, size_t V, const struct st_sampler *s, struct st_rng *rng,
                  void *scratch);

/* Merge the PEFT adapter in adapter_dir into the model in model_dir and write a Hugging Face model
 * folder to out_dir (same dtypes; one model.safetensors; config and tokenizer files copied). */
enum st_status st_model_fuse(const char *model_dir, const char *adapter_dir, const char *out_dir,
                             struct st_error *err);
/* The same for a QLoRA adapter: the base is loaded with o (--quantize, or a bitsandbytes
 * checkpoint), every quantised matrix is dequantised (the weights the adapter was trained
 * against), merged and written as BF16: merging into a 4-bit base would lose the adapter's
 * update in the rounding, so fuse always writes 16 bits. quantization_config is dropped. */
enum st_status st_model_fuse_ex(const char *model_dir, const char *adapter_dir,
                                const char *out_dir, const struct st_model_load_options *o,
                                struct st_error *err);

struct st_gen_params {
    int max_tokens;
    struct st_sampler sampler;
    uint64_t seed;
    int stop_at_eos; /* stop after emitting an eos id of the config */
};
/* Generate up to p->max_tokens ids after the prompt into out (capacity p->max_tokens); *n_out is
 * the number written. on_token (may be NULL) sees each id as it is produced; returning non-zero
 * stops early. */
enum st_status st_model_generate(const struct st_model *m, const int32_t *prompt, size_t n_prompt,
                                 const struct st_gen_params *p, int32_t *out, size_t *n_out,
                                 int (*on_token)(void *ctx, int32_t id), void *ctx,
                                 struct st_error *err);

#ifdef __cplusplus
}
#endif
#endif
