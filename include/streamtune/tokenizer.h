/* streamtune tokenizer: Hugging Face tokenizer.json (BPE), id for id with the `tokenizers` library.
 *
 * DESIGN: the pipeline is HF's: added tokens are split out first (leftmost-longest), then each
 * remaining segment is normalized, pre-tokenized into pieces, and each piece is run through BPE;
 * the post-processor adds BOS/EOS. Every piece keeps, per byte, the byte offset of the input it
 * came from, so each token knows where it starts in the input (chat masking needs that).
 * Invalid UTF-8 input is read the way a text reader does: each byte that is not part of a valid
 * sequence becomes U+FFFD before anything else runs. */
#ifndef STREAMTUNE_TOKENIZER_H
#define STREAMTUNE_TOKENIZER_H

#include "streamtune/core.h"

#ifdef __cplusplus
extern "C" {
#endif

struct st_tokenizer; /* opaque; immutable after load, safe to share between threads */

/* Load DIR/tokenizer.json (and DIR/tokenizer_config.json for bos/eos names when present), or a
 * tokenizer.json file path. Unsupported components are refused with a message naming them. */
enum st_status st_tokenizer_load(struct st_tokenizer **out, const char *path,
                                 struct st_error *err);
/* Parse tokenizer.json text (what names it in messages). */
enum st_status st_tokenizer_parse(struct st_tokenizer **out, const char *json, size_t len,
                                  const char *what, struct st_error *err);
void st_tokenizer_free(struct st_tokenizer *t);

int st_tokenizer_vocab_size(const struct st_tokenizer *t); /* max id + 1 */
/* The token string of an id (NULL when unknown). */
const char *st_tokenizer_id_to_token(const struct st_tokenizer *t, int32_t id);
/* The id of a token string (vocab or added), -1 when absent. */
int32_t st_tokenizer_token_to_id(const struct st_tokenizer *t, const char *token);
int st_tokenizer_is_special(const struct st_tokenizer *t, int32_t id);
/* BOS / EOS ids from tokenizer_config.json (or the post-processor), -1 when unknown. */
int32_t st_tokenizer_bos_id(const struct st_tokenizer *t);
int32_t st_tokenizer_eos_id(const struct st_tokenizer *t);

/* A growable list of ids (and, optionally, each token's start byte in the input). */
struct st_ids {
    int32_t *ids;
    int32_t *offsets; /* start byte of each token in the input; -1 for added-by-template tokens */
    size_t n, cap;
};
void st_ids_free(struct st_ids *v);

/* Encode text (len bytes). add_special: apply the post-processor (BOS/EOS) as HF's
 * add_special_tokens=True does. Appends to out. */
enum st_status st_tokenizer_encode(const struct st_tokenizer *t, const char *text, size_t len,
                                   int add_special, struct st_ids *out, struct st_error *err);
/* Encode n texts on up to `threads` threads (<= 0: st_threads_get()). out[i] gets text i. */
enum st_status st_tokenizer_encode_batch(const struct st_tokenizer *t, const char *const *texts,
                                         const size_t *lens, size_t n, int add_special,
                                         struct st_ids *out, int threads, struct st_error *err);

/* Decode ids to text (caller frees *text with st_free). skip_special drops special tokens. */
enum st_status st_tokenizer_decode(const struct st_tokenizer *t, const int32_t *ids, size_t n,
                                   int skip_special, char **text, size_t *len,
                                   struct st_error *err);

/* Streaming decode for generation: feed ids one at a time, get back the new text that is now
 * complete (never a broken UTF-8 sequence). */
struct st_decode_stream {
    const struct st_tokenizer *t;
    int skip_special;
    int32_t *ids;        /* window of recent ids (context + not yet emitted) */
    size_t n, cap;
    size_t prefix_index; /* ids before this are context only */
    size_t read_index;   /* ids before this are already emitted */
    char *prefix;        /* decode(ids[prefix_index..read_index]) */
    size_t prefix_len;
    char *piece;         /* the text returned by the last step or flush */
};
void st_decode_stream_init(struct st_decode_stream *s, const struct st_tokenizer *t,
                           int skip_special);
/* Start after ids (a prompt): its last few ids are context, never emitted, so the first new
 * token decodes as it does after them (its leading space kept where a Strip or Metaspace decoder
 * would drop it at the start of a text). */
enum st_status st_decode_stream_prefill(struct st_decode_stream *s, const int32_t *ids, size_t n,
                                        struct st_error *err);
/* Append id; *piece (owned by s, valid until the next call) is the new text, maybe "". */
enum st_status st_decode_stream_step(struct st_decode_stream *s, int32_t id, const char **piece,
                                     struct st_error *err);
/* At the end of generation: whatever was held back (text ending in U+FFFD). */
const char *st_decode_stream_flush(struct st_decode_stream *s);
void st_decode_stream_free(struct st_decode_stream *s);

#ifdef __cplusplus
}
#endif
#endif
