/* fuzz_jinja.c: libFuzzer target for the chat-template parser and interpreter.
 * First input byte picks the mode:
 *   even: the rest is a template; if it parses, render it with a fixed small conversation (and
 *         tools and extra variables) and compute assistant spans, under small caps (output,
 *         memory, steps, macro depth) so every input terminates quickly.
 *   odd:  the rest is a messages JSON document, rendered with a fixed Qwen3-like template that
 *         touches content, tool calls and namespaces.
 * Properties checked (abort on violation): spans lie inside the output, in order, begin <= end. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "streamtune/chat.h"

static const char *FUZZ_MESSAGES =
    "[{\"role\": \"system\", \"content\": \"sys\"}, {\"role\": \"user\", \"content\": \"hi "
    "\\u00e9\"},"
    " {\"role\": \"assistant\", \"content\": \"yo\", \"reasoning_content\": \"r\", \"tool_calls\":"
    " [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": {\"a\": 1}}}]},"
    " {\"role\": \"tool\", \"content\": \"out\"}, {\"role\": \"user\", \"content\": [{\"type\": "
    "\"text\", \"text\": \"p\"}]},"
    " {\"role\": \"assistant\", \"content\": \"done\"}]";
static const char *FUZZ_TOOLS = "[{\"type\": \"function\", \"function\": {\"name\": \"f\", "
                                "\"parameters\": {\"type\": \"object\"}}}]";

static const char *FIXED_TEMPLATE =
    "{%- set ns = namespace(last=-1) %}{%- for m in messages %}{%- if m.role == 'user' %}{% set "
    "ns.last = loop.index0 %}{% endif %}{% endfor %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content | "
    "trim }}"
    "{% elif m.content is iterable %}{% for p in m.content %}{{ p.text if p.type == 'text' else "
    "'<img>' }}{% endfor %}{% endif %}"
    "{% if m.tool_calls %}{% for tc in m.tool_calls %}{% set f = tc.function if tc.function else "
    "tc %}"
    "<tool_call>{{ {'name': f.name, 'arguments': f.arguments} | tojson }}</tool_call>{% endfor "
    "%}{% endif %}"
    "{% if loop.index0 > ns.last and m.reasoning_content is defined %}{{ "
    "m.reasoning_content.strip() }}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

static void fuzz_check_spans(const char *out, size_t len, const struct st_chat_span *sp, size_t n) {
    (void)out;
    size_t prev = 0;
    for (size_t i = 0; i < n; i++) {
        if (sp[i].begin > sp[i].end || sp[i].end > len || sp[i].begin < prev) abort();
        prev = sp[i].end;
    }
}

static void fuzz_run(const struct st_chat_template *t, struct st_chat_input *in) {
    struct st_error err;
    char *out = NULL;
    size_t len = 0;
    if (st_chat_template_render(t, in, &out, &len, &err) == ST_OK) {
        if (len > in->limits.max_output_bytes) abort();
        st_free(out);
        struct st_chat_span *sp = NULL;
        size_t ns = 0;
        if (st_chat_render_spans(t, in, &out, &len, &sp, &ns, &err) == ST_OK) {
            fuzz_check_spans(out, len, sp, ns);
            st_free(out);
            st_free(sp);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > (1u << 16)) return 0;
    struct st_chat_input in = {0};
    in.tools_json = FUZZ_TOOLS;
    in.vars_json = "{\"enable_thinking\": false, \"date_string\": \"26 Jul 2024\"}";
    in.bos_token = "<s>";
    in.eos_token = "</s>";
    in.fixed_time = 1;
    in.now = 1721980800;
    in.limits.max_output_bytes = 1 << 16;
    in.limits.max_memory_bytes = 16u << 20;
    in.limits.max_steps = 50000;
    in.limits.max_depth = 16;
    struct st_error err;
    struct st_chat_template *t = NULL;
    if ((data[0] & 1) == 0) {
        if (st_chat_template_parse(&t, (const char *)data + 1, size - 1, "fuzz", &err) != ST_OK)
            return 0;
        in.messages_json = FUZZ_MESSAGES;
        fuzz_run(t, &in);
        in.add_generation_prompt = 1;
        fuzz_run(t, &in);
    } else {
        if (st_chat_template_parse(&t, FIXED_TEMPLATE, strlen(FIXED_TEMPLATE), "fixed", &err) !=
            ST_OK)
            abort();
        char *msgs = malloc(size);
        if (!msgs) return 0;
        memcpy(msgs, data + 1, size - 1);
        in.messages_json = msgs;
        in.messages_len = size - 1;
        if (size > 1) fuzz_run(t, &in);
        free(msgs);
    }
    st_chat_template_free(t);
    return 0;
}
