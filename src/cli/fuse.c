/* fuse.c: `streamtune fuse --model DIR --adapter DIR --out DIR [--json]`. */
#include <string.h>

#include "cli.h"

static const char *usage =
    "usage: streamtune fuse --model DIR --adapter DIR --out DIR [--json]\n"
    "  writes a merged Hugging Face model folder (same dtypes as the base; merging into a\n"
    "  16-bit base rounds the merged weights to 16 bits)\n"
    "  QLoRA: give the --quantize the adapter was trained with (a bitsandbytes checkpoint needs\n"
    "  none): the base is dequantised, merged and written as BF16 (never back to 4 bits)\n"
    CLI_LOAD_HELP;

int cmd_fuse(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *out = NULL;
    int json = 0, q;
    struct st_model_load_options lo;
    st_model_load_options_init(&lo);
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *v;
        if ((v = cli_opt(argc, argv, &i, "--model", &missing))) model = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--adapter", &missing))) adapter = v;
        else if (!missing && (v = cli_opt(argc, argv, &i, "--out", &missing))) out = v;
        else if (missing) return cli_usage(usage, "%s needs a value", argv[i]);
        else if ((q = cli_load_flag(argc, argv, &i, &lo)) != 0) {
            if (q < 0) return 2;
        } else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--help")) {
            fputs(usage, stdout);
            return 0;
        } else return cli_usage(usage, "fuse: unknown option '%s'", argv[i]);
    }
    if (!model || !adapter || !out)
        return cli_usage(usage, "fuse: --model, --adapter and --out are required");
    struct st_error err = {0};
    if (st_model_fuse_ex(model, adapter, out, &lo, &err)) return cli_fail(json, &err);
    if (json) {
        printf("{\"model\": ");
        cli_json_string(stdout, out);
        printf("}\n");
    } else {
        printf("fused model written to %s\n", out);
    }
    return 0;
}
