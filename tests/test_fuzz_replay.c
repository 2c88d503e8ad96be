/* test_fuzz_replay.c: replays every saved fuzz input through the libFuzzer entry points, compiled
 * into a plain test binary, so ordinary builds (gcc, no libFuzzer) keep each input that ever broke
 * a parser fixed: fuzz/corpus/<target>/ (seeds, must not be empty) and fuzz/crashers/<target>/
 * (saved crashers, may be absent). The entry points abort on a violated property; a signal
 * handler names the input being replayed. */
#define LLVMFuzzerTestOneInput st_fuzz_safetensors_one
#include "../fuzz/fuzz_safetensors.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput st_fuzz_config_one
#include "../fuzz/fuzz_config.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput st_fuzz_tokenizer_one
#include "../fuzz/fuzz_tokenizer.c"
#undef LLVMFuzzerTestOneInput

#include <dirent.h>
#include <signal.h>

#include "harness.h"

static char replay_current[1024];

static void replay_on_signal(int sig) {
    const char *a = "test_fuzz_replay: crashed while replaying ";
    ssize_t r = write(2, a, strlen(a));
    r = write(2, replay_current, strlen(replay_current));
    r = write(2, "\n", 1);
    (void)r;
    signal(sig, SIG_DFL);
    raise(sig);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Run fn over every regular file in dir (sorted); returns the number of files. */
static int replay_dir(const char *dir, int (*fn)(const uint8_t *, size_t)) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            names = realloc(names, (size_t)cap * sizeof *names);
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (n > 1) qsort(names, (size_t)n, sizeof *names, cmp_str);
    int count = 0;
    for (int i = 0; i < n; i++) {
        snprintf(replay_current, sizeof replay_current, "%s/%s", dir, names[i]);
        free(names[i]);
        struct stat sb;
        if (stat(replay_current, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        FILE *f = fopen(replay_current, "rb");
        if (!f) continue;
        size_t len = (size_t)sb.st_size;
        uint8_t *buf = malloc(len ? len : 1); /* exactly len bytes: ASan sees over-reads */
        size_t got = len ? fread(buf, 1, len, f) : 0;
        fclose(f);
        CHECKF(got == len, "short read of %s", replay_current);
        fn(buf, got);
        free(buf);
        count++;
    }
    free(names);
    replay_current[0] = '\0';
    return count;
}

TEST(replay_safetensors) {
    int n = replay_dir(ST_SOURCE_DIR "/fuzz/corpus/safetensors", st_fuzz_safetensors_one);
    CHECKF(n > 0, "no seeds in fuzz/corpus/safetensors");
    int k = replay_dir(ST_SOURCE_DIR "/fuzz/crashers/safetensors", st_fuzz_safetensors_one);
    printf("     %d seeds, %d crashers\n", n, k < 0 ? 0 : k);
}

TEST(replay_config) {
    int n = replay_dir(ST_SOURCE_DIR "/fuzz/corpus/config", st_fuzz_config_one);
    CHECKF(n > 0, "no seeds in fuzz/corpus/config");
    int k = replay_dir(ST_SOURCE_DIR "/fuzz/crashers/config", st_fuzz_config_one);
    printf("     %d seeds, %d crashers\n", n, k < 0 ? 0 : k);
}

TEST(replay_tokenizer) {
    int n = replay_dir(ST_SOURCE_DIR "/fuzz/corpus/tokenizer", st_fuzz_tokenizer_one);
    CHECKF(n > 0, "no seeds in fuzz/corpus/tokenizer");
    int k = replay_dir(ST_SOURCE_DIR "/fuzz/crashers/tokenizer", st_fuzz_tokenizer_one);
    printf("     %d seeds, %d crashers\n", n, k < 0 ? 0 : k);
}

int main(void) {
    signal(SIGABRT, replay_on_signal);
    signal(SIGSEGV, replay_on_signal);
    signal(SIGBUS, replay_on_signal);
    signal(SIGFPE, replay_on_signal);
    RUN(replay_safetensors);
    RUN(replay_config);
    RUN(replay_tokenizer);
    return test_finish();
}
