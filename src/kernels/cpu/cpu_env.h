/* cpu_env.h: environment switches of the cpu kernels (ST_NO_AVX512, ST_NO_AVX512BF16,
 * ST_ATTENTION_PORTABLE; ST_NO_NEON on AArch64), with which tests and users force a portable
 * kernel. */
#ifndef ST_KERNELS_CPU_ENV_H
#define ST_KERNELS_CPU_ENV_H
#include <stdlib.h>
#include <string.h>

/* 1 when the variable is set to something other than "" or "0" */
static inline int st_env_flag(const char *name) {
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}
#endif
