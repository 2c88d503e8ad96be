/* streamtune formats: safetensors (memory-mapped, single or sharded) and Hugging Face config.json.
 *
 * DESIGN: the header parser works on a byte buffer (so it can be fuzzed and reused for remote
 * reads); the file layer mmaps each shard read-only and hands out views that point into the map.
 */
#ifndef STREAMTUNE_FORMATS_H
#define STREAMTUNE_FORMATS_H

#include "streamtune/core.h"

#ifdef __cplusplus
extern "C" {
#endif

enum st_dtype {
    ST_DTYPE_INVALID = 0,
    ST_F32, ST_F16, ST_BF16, ST_F64,
    ST_I8, ST_U8, ST_I16, ST_U16, ST_I32, ST_U32, ST_I64, ST_U64, ST_BOOL,
    ST_F8_E4M3, ST_F8_E5M2,
};
size_t st_dtype_size(enum st_dtype t);
const char *st_dtype_name(enum st_dtype t);          /* safetensors spelling, e.g. "BF16" */
enum st_dtype st_dtype_from_name(const char *name);  /* ST_DTYPE_INVALID when unknown */

float st_bf16_to_f32(uint16_t h);
uint16_t st_f32_to_bf16(float f); /* round to nearest even */
float st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_f16(float f);
/* Convert n elements of type t at src to float32 (F32, F16, BF16, F64 only). */
enum st_status st_convert_to_f32(float *dst, const void *src, enum st_dtype t, size_t n,
                                 struct st_error *err);

#define ST_MAX_DIMS 8

/* A tensor inside a safetensors file: points into the file's map; valid until st_safetensors_close. */
struct st_tensor_view {
    const char *name;
    enum st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t nbytes;
    const void *data;
    const char *file;   /* path of the shard that holds it */
    uint64_t offset;    /* byte offset of the data in that file */
};
int64_t st_tensor_numel(const struct st_tensor_view *t);

/* ---- header parsing (pure, fuzzable) ---- */
struct st_st_header {
    struct st_tensor_view *tensors; /* data == NULL; offset is relative to the data buffer */
    int n_tensors;
    char *names;                    /* storage for the tensor names */
};
/* Parse the JSON header `json` (json_len bytes, not necessarily NUL-terminated) of a safetensors
 * file whose data buffer is `data_len` bytes. Validates dtypes, shapes, dtype x shape = bytes,
 * offsets in range and non-overlapping. `what` names the file in messages. */
enum st_status st_st_header_parse(struct st_st_header *h, const char *json, size_t json_len,
                                  uint64_t data_len, const char *what, struct st_error *err);
void st_st_header_free(struct st_st_header *h);

/* ---- files ---- */
struct st_safetensors; /* opaque: one or more mmapped shards */

/* Open a model's weights: `path` is a .safetensors file, or a directory holding
 * model.safetensors or model.safetensors.index.json (+ shards). */
enum st_status st_safetensors_open(struct st_safetensors **out, const char *path,
                                   struct st_error *err);
void st_safetensors_close(struct st_safetensors *s);
/* Find a tensor by name; NULL when absent. */
const struct st_tensor_view *st_safetensors_find(const struct st_safetensors *s, const char *name);
int st_safetensors_count(const struct st_safetensors *s);
/* Drop the mapped pages from this process's resident set (after converting tensors to another
 * dtype); the mapping stays valid and pages fault back in from the file when read again. */
void st_safetensors_drop_cache(const struct st_safetensors *s);
/* Release the mapped pages under one tensor (after it was converted or quantised), so a
 * tensor-by-tensor load never holds the whole file in RSS. */
void st_tensor_drop_pages(const struct st_tensor_view *t);
const struct st_tensor_view *st_safetensors_at(const struct st_safetensors *s, int i);
/* Like find, but a missing tensor or a shape other than the expected one is an error naming both. */
enum st_status st_safetensors_expect(const struct st_safetensors *s, const char *name, int ndim,
                                     const int64_t *shape, const struct st_tensor_view **out,
                                     struct st_error *err);

/* Write tensors to a safetensors file atomically (temp file, fsync, rename). */
struct st_tensor_out {
    const char *name;
    enum st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
};
enum st_status st_safetensors_write(const char *path, const struct st_tensor_out *tensors, int n,
                                    struct st_error *err);

#ifdef __cplusplus
}
#endif
#endif
