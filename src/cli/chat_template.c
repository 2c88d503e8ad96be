/* chat_template.c: `streamtune chat-template --model DIR --messages FILE [options]`: render a
 * conversation with the model's own chat template (tokenizer_config.json or chat_template.jinja).
 * FILE holds a JSON array of messages, or an object {"messages": [...], "tools": [...]}.
 * --json prints {"text": ..., "spans": [{"message": i, "begin": b, "end": e}, ...]} where the
 * spans are the bytes of each assistant message that training learns (see docs/chat-templates.md). */
#include <cjson/cJSON.h>
#include <string.h>

#include "cli.h"
#include "streamtune/chat.h"

static const char *usage =
    "usage: streamtune chat-template --model DIR --messages FILE.json [options]\n"
    "  --add-generation-prompt  end with the assistant header, ready to generate\n"
    "  --tools FILE.json        a JSON list of tool definitions\n"
    "  --vars JSON              extra template variables, e.g. '{\"enable_thinking\": false}'\n"
    "  --json                   {\"text\": ..., \"spans\": [...]} with the assistant spans\n";

/* A JSON file's text, checked: one JSON value (a list when list is set) and nothing after it, and
 * no \u0000 in its strings (cJSON would cut the string there) */
static char *read_json_file(const char *path, int list, struct st_error *err) {
    char *s;
    size_t n;
    if (st_read_file(path, 256u << 20, &s, &n, err)) return NULL;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(s, n, &end, 0);
    while (j && end < s + n && (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t'))
        end++;
    long z = st_json_nul_escape(s, n);
    if (!j)
        st_errorf(err, ST_ERR_FORMAT, "%s: not valid JSON (near byte %ld)", path,
                  end ? (long)(end - s) : 0L);
    else if (end != s + n)
        st_errorf(err, ST_ERR_FORMAT, "%s: text after the JSON value at byte %ld", path,
                  (long)(end - s));
    else if (list && !cJSON_IsArray(j))
        st_errorf(err, ST_ERR_FORMAT, "%s: expected a JSON list", path);
    else if (z >= 0)
        st_errorf(err, ST_ERR_FORMAT, "%s: byte %ld: a string holds \\u0000 (a NUL character), "
                  "which is not supported", path, z);
    int ok = j && end == s + n && (!list || cJSON_IsArray(j)) && z < 0;
    cJSON_Delete(j);
    if (!ok) {
        st_free(s);
        return NULL;
    }
    return s;
}

int cmd_chat_template(int argc, char **argv) {
    const char *dir = NULL, *mfile = NULL, *tfile = NULL, *vars = NULL;
    int json = 0, agp = 0;
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *v;
        if ((v = cli_opt(argc, argv, &i, "--model", &missing))) dir = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--messages", &missing))) mfile = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--tools", &missing))) tfile = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--vars", &missing))) vars = v;
        else if (missing) return cli_usage(usage, "%s needs a value", argv[i]);
        else if (!strcmp(argv[i], "--add-generation-prompt")) agp = 1;
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--help")) {
            fputs(usage, stdout);
            return 0;
        } else return cli_usage(usage, "chat-template: unknown option '%s'", argv[i]);
    }
    if (!dir || !mfile) return cli_usage(usage, "chat-template: --model and --messages are required");
    if (vars) { /* a --vars that is not a JSON object is a usage error (exit 2) */
        cJSON *vj = cJSON_Parse(vars);
        int ok = cJSON_IsObject(vj);
        cJSON_Delete(vj);
        if (!ok) return cli_usage(usage, "--vars: expected a JSON object, got '%.60s'", vars);
    }
    struct st_error err = {0};
    struct st_chat_template *t;
    if (st_chat_template_load(&t, dir, &err)) return cli_fail(json, &err);
    char *mtext = read_json_file(mfile, 0, &err), *ttext = NULL, *messages = NULL, *tools = NULL;
    int rc = 0;
    if (!mtext) rc = 1;
    if (!rc) {
        /* accept [..] or {"messages": [..], "tools": [..]} */
        cJSON *root = cJSON_Parse(mtext);
        if (!root) {
            st_errorf(&err, ST_ERR_FORMAT, "%s: not valid JSON", mfile);
            rc = 1;
        } else if (cJSON_IsArray(root)) {
            messages = cJSON_PrintUnformatted(root);
        } else if (cJSON_IsObject(root) && cJSON_IsArray(cJSON_GetObjectItem(root, "messages"))) {
            messages = cJSON_PrintUnformatted(cJSON_GetObjectItem(root, "messages"));
            if (cJSON_IsArray(cJSON_GetObjectItem(root, "tools")))
                tools = cJSON_PrintUnformatted(cJSON_GetObjectItem(root, "tools"));
        } else {
            st_errorf(&err, ST_ERR_FORMAT, "%s: expected a list of messages or an object with "
                      "\"messages\"", mfile);
            rc = 1;
        }
        cJSON_Delete(root);
    }
    if (!rc && tfile) {
        ttext = read_json_file(tfile, 1, &err);
        if (!ttext) rc = 1;
    }
    char *out = NULL;
    size_t len = 0, n_spans = 0;
    struct st_chat_span *spans = NULL;
    if (!rc) {
        struct st_chat_input in = {0};
        in.messages_json = messages;
        in.tools_json = ttext ? ttext : tools;
        in.vars_json = vars;
        in.add_generation_prompt = agp;
        if (json && !agp)
            rc = st_chat_render_spans(t, &in, &out, &len, &spans, &n_spans, &err) != ST_OK;
        else
            rc = st_chat_template_render(t, &in, &out, &len, &err) != ST_OK;
    }
    if (!rc) {
        if (json) {
            printf("{\"text\": ");
            cli_json_string_n(stdout, out, len);
            printf(", \"spans\": [");
            for (size_t i = 0; i < n_spans; i++)
                printf("%s{\"message\": %zu, \"begin\": %zu, \"end\": %zu}", i ? ", " : "",
                       spans[i].message, spans[i].begin, spans[i].end);
            printf("]}\n");
        } else {
            fwrite(out, 1, len, stdout);
            if (len && out[len - 1] != '\n') putchar('\n');
        }
    }
    st_free(out);
    st_free(spans);
    st_free(mtext);
    st_free(ttext);
    cJSON_free(messages);
    cJSON_free(tools);
    st_chat_template_free(t);
    return rc ? cli_fail(json, &err) : 0;
}
