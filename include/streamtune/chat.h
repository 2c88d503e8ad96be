/* streamtune chat templates: render a conversation with the model's own Jinja chat_template,
 * byte for byte as Hugging Face does, and find which bytes of the rendering each assistant turn
 * owns, so training can mask everything else.
 *
 * DESIGN: a template is parsed once into an immutable tree (safe to share between threads) and
 * rendered by a small Jinja2 interpreter (src/tokenizer/jinja*.c) with HF's settings
 * (trim_blocks, lstrip_blocks). Inputs are JSON text, exactly what transformers'
 * apply_chat_template receives: `messages` (role, content as a string or a list of typed parts,
 * tool_calls, reasoning_content, ...), optional `tools`, add_generation_prompt, bos/eos tokens and
 * any extra variables (enable_thinking, date_string, ...). Every render is bounded (output bytes,
 * memory, steps, macro depth) so a hostile template cannot hang or exhaust memory.
 * Assistant spans come from incremental rendering (see st_chat_render_spans and
 * docs/chat-templates.md).
 */
#ifndef STREAMTUNE_CHAT_H
#define STREAMTUNE_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "streamtune/core.h"

#ifdef __cplusplus
extern "C" {
#endif

struct st_chat_template; /* opaque; immutable after parse/load */

/* Parse template source (len bytes of UTF-8). `what` names it in messages; errors read
 * "WHAT:LINE:COL: why" (unclosed block, unknown tag, bad expression, ...). */
enum st_status st_chat_template_parse(struct st_chat_template **out, const char *src, size_t len,
                                      const char *what, struct st_error *err);

/* Load the chat template of a model directory: DIR/chat_template.jinja when present, else
 * DIR/tokenizer_config.json key "chat_template" (a string, or a list of {name, template} of which
 * "default" is used), else DIR/chat_template.json {"chat_template": ...}. bos_token/eos_token
 * come from tokenizer_config.json (strings or {"content": ...} objects) when present. A model with
 * no template at all is ST_ERR_UNSUPPORTED; one that does not read or parse, ST_ERR_FORMAT. */
enum st_status st_chat_template_load(struct st_chat_template **out, const char *model_dir,
                                     struct st_error *err);
void st_chat_template_free(struct st_chat_template *t);

/* The BOS / EOS strings loaded with the template (NULL when unknown). */
const char *st_chat_template_bos(const struct st_chat_template *t);
const char *st_chat_template_eos(const struct st_chat_template *t);
/* The template source. */
const char *st_chat_template_source(const struct st_chat_template *t, size_t *len);

/* Caps for one render; 0 picks the default (16 MiB of text, 256 MiB of memory, 20M steps,
 * macro depth 64). */
struct st_chat_limits {
    size_t max_output_bytes;
    size_t max_memory_bytes;
    uint64_t max_steps;
    int max_depth;
};

struct st_chat_input {
    const char *messages_json; /* JSON array of messages (required) */
    size_t messages_len;       /* 0: strlen */
    const char *tools_json;    /* JSON array or NULL (then `tools` is none, as in transformers) */
    size_t tools_len;
    const char *vars_json; /* JSON object of extra variables or NULL */
    size_t vars_len;
    int add_generation_prompt;
    const char *bos_token; /* NULL: the template's (from load); still NULL: undefined */
    const char *eos_token;
    int fixed_time;          /* strftime_now uses `now` (UTC) instead of the clock */
    int64_t now;             /* seconds since the epoch */
    const char *end_of_turn; /* spans: end-of-turn marker; NULL = detect, "" = none */
    struct st_chat_limits limits;
};

/* Render. *out is NUL-terminated, *len bytes, freed by the caller with st_free. Template errors
 * (raise_exception, type errors, caps) name the template line:column. */
enum st_status st_chat_template_render(const struct st_chat_template *t,
                                       const struct st_chat_input *in, char **out, size_t *len,
                                       struct st_error *err);

enum st_chat_span_method {
    ST_CHAT_SPAN_PREFIX = 1,    /* render(msgs[:i+1]) is a prefix of the full render */
    ST_CHAT_SPAN_COMMON_PREFIX, /* it is not (the template appends text after the last turn),
                                   the turn ends at the end-of-turn marker before they diverge */
    ST_CHAT_SPAN_CONTENT,       /* earlier turns render differently in the full conversation
                                   (Qwen3 drops old reasoning): located by the content string */
};

/* The trainable bytes of one assistant message: [begin, end) of the full rendering. */
struct st_chat_span {
    size_t message; /* index in messages */
    size_t begin, end;
    int method; /* enum st_chat_span_method */
};

/* Render the conversation (as st_chat_template_render) and find each assistant message's span:
 *   begin = len(render(messages[:i], add_generation_prompt=true)) when that is a prefix of the
 *           full rendering; else just after the generation prompt's text at its first
 *           occurrence after the previous span (docs/chat-templates.md; else ST_ERR_UNSUPPORTED
 *           naming message i);
 *   end   = just after the end-of-turn marker (<|eot_id|>, <|im_end|>, <end_of_turn>, eos, ...)
 *           that closes the turn in render(messages[:i+1], add_generation_prompt=false), or the
 *           end of that rendering when the template has no marker.
 * So a span covers the assistant's content, tool calls and (for templates that emit it after the
 * generation prompt) reasoning, plus the end-of-turn marker, and nothing of system/user/tool
 * turns. *spans (st_free) gets one entry per assistant message, in order. */
enum st_status st_chat_render_spans(const struct st_chat_template *t,
                                    const struct st_chat_input *in, char **out, size_t *len,
                                    struct st_chat_span **spans, size_t *n_spans,
                                    struct st_error *err);

#ifdef __cplusplus
}
#endif
#endif
