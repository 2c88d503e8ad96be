/* streamtune BF16 GEMM: frozen weights packed once into BF16 panels, multiplied with float
 * activations rounded to BF16 on the fly, accumulated in float (AVX512_BF16 vdpbf16ps or AArch64
 * BF16 BFDOT where the CPU has it, a portable loop otherwise: same results up to float summation
 * order).
 * See src/kernels/cpu/gemm_bf16.c for the layout. */
#ifndef STREAMTUNE_BF16_H
#define STREAMTUNE_BF16_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when this CPU runs a native BF16 kernel: AVX512_BF16 on x86-64 (ST_NO_AVX512BF16=1 forces
 * the portable one), BFDOT on AArch64 with FEAT_BF16 (ST_NO_NEON=1 forces the portable one). */
int st_bf16_native(void);
/* 1 when the native kernel is AMX-BF16's tile multiply (x86-64 with AMX, enabled by the OS;
 * ST_NO_AMX=1 forces AVX512_BF16). X's packed layout depends on it (st_bf16_x_bytes). */
int st_bf16_amx(void);
/* The kernel st_bf16_gemm runs here: "AMX-BF16", "AVX512_BF16", "AArch64 BFDOT" or "portable". */
const char *st_bf16_kernel_name(void);

/* Bytes of the packed panels of a (K, N) right-hand side. */
size_t st_bf16_panels_bytes(size_t K, size_t N);
/* Pack W (OC, C) for out = X W^T (K = C, N = OC): dst has st_bf16_panels_bytes(C, OC) bytes. */
void st_bf16_pack_wt(uint16_t *dst, const float *w, size_t OC, size_t C);
/* Pack W (OC, C) for dX = dY W (K = OC, N = C): dst has st_bf16_panels_bytes(OC, C) bytes. */
void st_bf16_pack_w(uint16_t *dst, const float *w, size_t OC, size_t C);

/* The same packings with W's rows produced one at a time by fn (for example dequantised from
 * NF4): fn(ctx, r, buf) writes row r (C floats) into buf; rows are split over threads, so fn must
 * be safe to call concurrently for different rows. scratch holds scratch_rows x C floats (16
 * rows per thread for the AVX512_BF16 "wt" packing, else two: fewer threads are used when it is
 * smaller). */
typedef void (*st_bf16_row_fn)(void *ctx, size_t r, float *buf);
void st_bf16_pack_wt_rows(uint16_t *dst, size_t OC, size_t C, st_bf16_row_fn fn, void *ctx,
                          float *scratch, size_t scratch_rows);
void st_bf16_pack_w_rows(uint16_t *dst, size_t OC, size_t C, st_bf16_row_fn fn, void *ctx,
                         float *scratch, size_t scratch_rows);

/* Scratch for the BF16 copy of X (M, K). */
size_t st_bf16_x_bytes(size_t M, size_t K);
/* The most rows of X (M, K) whose copy fits in bytes (a whole number of the kernel's row tiles;
 * 0 when not even one fits). */
size_t st_bf16_x_rows(size_t bytes, size_t K);

/* out (M, N; row stride ldo) = X (M, K; stride ldx) @ B (+ bias (N) if not NULL), or += when
 * accumulate. panels: B packed as above; xscratch: st_bf16_x_bytes(M, K) bytes. */
void st_bf16_gemm(float *out, size_t ldo, const float *x, size_t ldx, const uint16_t *panels,
                  const float *bias, size_t M, size_t K, size_t N, int accumulate,
                  uint32_t *xscratch);

/* The two halves of st_bf16_gemm, for callers that multiply one X by several panel sets (tiles of
 * a quantised weight): X (M, K; stride ldx) rounded into xp (st_bf16_x_bytes(M, K)), then
 * out (+)= X @ B from that copy. */
void st_bf16_pack_x(uint32_t *xp, const float *x, size_t M, size_t K, size_t ldx);
void st_bf16_gemm_px(float *out, size_t ldo, const uint32_t *xp, const uint16_t *panels,
                     const float *bias, size_t M, size_t K, size_t N, int accumulate);

/* The rows of a softmax cross-entropy for st_bf16_pack_ce_grad: row m's loss (lse - x[target],
 * as crossentropy_forward gives it), its target (< 0: ignored), the loss's gradient dloss, and
 * col0: the vocabulary column of x's first column (0, or where a slice of the logits starts:
 * a target outside the slice adds no -1 there, and its logit is read at x[target - col0]) */
struct st_ce_rows {
    const float *loss;
    const int32_t *targets;
    float dloss;
    size_t col0;
};

/* st_bf16_pack_x of the softmax cross-entropy's gradient rather than of x itself: row m of the
 * logits x (M, K; stride ldx) becomes dloss (softmax(x row) - onehot(targets[m])), all 0 for a
 * target < 0 (targets below the vocabulary size, as the loss checked). The gradient never exists in float
 * (crossentropy_backward wrote it and st_bf16_pack_x read it back: two passes over a (M, vocab)
 * array). With col0, x is the slice [col0, col0 + K) of rows of the whole logits. */
void st_bf16_pack_ce_grad(uint32_t *xp, const float *logits, const struct st_ce_rows *ce, size_t M,
                          size_t K, size_t ldx);

/* A low-rank term added to a GEMM's output tiles on their last k block, in float, before they
 * are stored (a LoRA path's out += s xa b^T and dinp += dxa a were passes of their own over the
 * output): out[m][n] += s sum_j<r x[m r + j] W(n, j), W(n, j) = w[n wn + j wj]. */
#define ST_LOWRANK_MAX 128 /* most ranks st_bf16_gemm_px_lr takes */
struct st_lowrank {
    const float *x; /* (M, r) */
    size_t r;       /* 1..ST_LOWRANK_MAX */
    const float *w;
    size_t wn, wj;
    float s;
};
/* st_bf16_gemm_px over a slice of k: out (M, N) (+)= X (M, K) @ rows [k0, k0 + K) of the B that
 * panels packs (Kp rows in all), X packed from its K columns into xp (st_bf16_x_bytes(M, K)).
 * k0 even, and K even unless the slice is the last (k0 + K == Kp). Slice by slice with accumulate
 * after the first, the sums are bitwise those of one call over all Kp (each slice starts on a
 * pair, and the partial sums stay F32). For a K too wide for all M rows of X in the scratch (an
 * LM head's backward, K = the vocabulary): rows in chunks would stream all the panels per chunk. */
void st_bf16_gemm_px_k(float *out, size_t ldo, const uint32_t *xp, const uint16_t *panels,
                       size_t Kp, size_t k0, size_t M, size_t K, size_t N, int accumulate);
/* st_bf16_gemm_px plus the low-rank term lr (NULL: none) */
void st_bf16_gemm_px_lr(float *out, size_t ldo, const uint32_t *xp, const uint16_t *panels,
                        const float *bias, size_t M, size_t K, size_t N, int accumulate,
                        const struct st_lowrank *lr);

#ifdef __cplusplus
}
#endif
#endif
