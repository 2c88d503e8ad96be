/* streamtune examples: records (JSON) -> token ids + labels, and packing into training batches.
 *
 * DESIGN: a record becomes an example: ids and a label per token (the token id where the token is
 * trained, -100 where it is not: prompts, system/user/tool turns, padding). Formats, detected per
 * record or forced: text {"text"}, completions {"prompt", "completion"}, chat {"messages"[,
 * "tools"]}, ids {"ids"}. Chat records are rendered with the model's own chat template and the
 * tokens whose first byte lies inside an assistant span are trained (spans from st_chat); a
 * completions record uses the chat template too when the model has one (as mlx-lm does), else
 * prompt + completion text with the prompt's tokens masked. The packer lays examples into rows of T
 * tokens with a segment id per document (attention and RoPE positions restart per document), or
 * one example per row when packing is off. */
#ifndef STREAMTUNE_EXAMPLES_H
#define STREAMTUNE_EXAMPLES_H

#include "streamtune/chat.h"
#include "streamtune/config.h"
#include "streamtune/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

enum st_data_format { ST_FMT_AUTO = 0, ST_FMT_TEXT, ST_FMT_COMPLETIONS, ST_FMT_CHAT, ST_FMT_IDS };
enum st_status st_data_format_parse(const char *s, enum st_data_format *out, struct st_error *err);

struct st_example_options {
    enum st_data_format format;
    const char *text_field, *prompt_field, *completion_field, *messages_field, *tools_field;
    int train_on_prompt; /* train every token (chat and completions too) */
    int add_eos;         /* append EOS to text and completion records */
    int max_len;         /* truncate to this many tokens */
    /* why the model's chat template did not load (NULL: it loaded, or the model has none): chat
     * and completion records, which would use it, are then an error quoting it */
    const char *tmpl_error;
};
void st_example_options_default(struct st_example_options *o);

struct st_example {
    int32_t *ids, *labels; /* labels[t]: ids[t] when token t is trained, else -100 */
    size_t n, cap;
};
void st_example_free(struct st_example *e);

/* Convert one JSON record (len bytes) into *ex (reset first). where names the record in errors
 * ("file.jsonl:17"). tmpl may be NULL (then chat records are an error). */
enum st_status st_example_from_json(struct st_example *ex, const char *json, size_t len,
                                    const char *where, const struct st_tokenizer *tok,
                                    const struct st_chat_template *tmpl,
                                    const struct st_model_config *cfg,
                                    const struct st_example_options *o, struct st_error *err);

/* ---- packing ---- */
struct st_batch {
    size_t B, T;          /* rows, tokens per row (T = the longest row when not packing) */
    int32_t *ids;         /* (B, T) */
    int32_t *targets;     /* (B, T): target for position t = label of token t+1, or -100 */
    int32_t *seg;         /* (B, T) document id per token (padding: -1); NULL when not packing */
    size_t tokens;        /* non-padding tokens */
    size_t targets_n;     /* positions with a target */
};
void st_batch_free(struct st_batch *b);

struct st_packer;
/* rows per batch B, tokens per row T, pack: several documents per row. pad: the padding id. */
enum st_status st_packer_init(struct st_packer **out, size_t B, size_t T, int pack, int32_t pad,
                              struct st_error *err);
void st_packer_free(struct st_packer *p);
/* Add an example (copied). Returns 1 when a batch is complete and st_packer_take will return it
 * (the example that closed it is kept for the next batch). */
int st_packer_add(struct st_packer *p, const struct st_example *ex, struct st_error *err);
/* Take the completed batch (caller owns it), or, with flush, whatever is pending. 0 when none. */
int st_packer_take(struct st_packer *p, struct st_batch *out, int flush);
/* Examples added but not yet in a taken batch (part of the data resume state). */
size_t st_packer_pending(const struct st_packer *p, const struct st_example **out);

#ifdef __cplusplus
}
#endif
#endif
