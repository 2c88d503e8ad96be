/* cli.h: what the subcommands share: option parsing, error exit, JSON output, progress bar. */
#ifndef ST_CLI_H
#define ST_CLI_H

#include <stdio.h>

#include "streamtune/streamtune.h"

/* Subcommand entry points: argv[0] is the subcommand name. Return the process exit code. */
int cmd_info(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_data(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_fuse(int argc, char **argv);
int cmd_chat_template(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);

/* Exit codes: 0 ok, 1 runtime error (bad file, ...), 2 usage error. */
#define CLI_EXIT_ERR 1
#define CLI_EXIT_USAGE 2

/* Print "streamtune: error: <msg>" (or a JSON {"error": ...} object when json) and return 1. */
int cli_fail(int json, const struct st_error *err);
/* Print a usage error with the subcommand's usage text and return 2. */
int cli_usage(const char *usage, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Option parsing: returns the value of "--name V" / "--name=V" at argv[*i] (advancing *i), or NULL
 * when argv[*i] is not that option. *missing is set when the option has no value. */
const char *cli_opt(int argc, char **argv, int *i, const char *name, int *missing);

/* Common numeric option helpers: 0 on success. */
int cli_int(const char *s, long lo, long hi, long *out);
int cli_float(const char *s, double lo, double hi, double *out);

/* Progress bar on stderr (only when stderr is a terminal). */
struct cli_progress {
    const char *label;
    double total, start, last_draw;
    int enabled;
};
void cli_progress_start(struct cli_progress *p, const char *label, double total);
void cli_progress_update(struct cli_progress *p, double done, const char *extra);
void cli_progress_end(struct cli_progress *p);

/* s as a JSON string literal (with quotes) to f: escaped, and each byte that is not part of well-formed UTF-8 as U+FFFD
 * (the _n form takes n bytes, NULs included) */
void cli_json_string(FILE *f, const char *s);
void cli_json_string_n(FILE *f, const char *s, size_t n);

/* Model-loading flags shared by eval, generate, info and fuse: --quantize nf4|int8|none (with its
 * value at argv[*i + 1]), --no-double-quant, --keep-embeddings. Returns 1 when argv[*i] was one
 * (advancing *i past a value), 0 when not, -1 on a bad value (message printed). */
int cli_load_flag(int argc, char **argv, int *i, struct st_model_load_options *o);
/* --compute VALUE into o: bf16, f32 (packed F32 panels) or f32-blas; nonzero if unknown. */
int cli_compute(const char *v, struct st_model_load_options *o);
#define CLI_LOAD_HELP                                                                              \
    "  --quantize nf4|int8  store the base quantised (as train --quantize; QLoRA adapters)\n"      \
    "  --no-double-quant, --keep-embeddings   see train --help\n"                               \
    "  --compute bf16|f32   BF16 matmuls for the frozen weights (AVX512_BF16; default f32;\n"    \
    "                       f32-blas: plain F32 weights through BLAS calls; quantised\n"   \
    "                       weights still go through the F32 panel GEMM)\n"
#endif
