#!/usr/bin/env bash
# test_aarch64.sh: the AArch64 GEMM kernels (NEON F32 in gemm_f32.c, BFDOT BF16 in gemm_bf16.c)
# and their portable fallbacks, without an ARM machine: tests/test_f32.c and tests/test_bf16.c are
# cross-compiled statically with only the sources they link (the kernel file; core/util.c,
# core/status.c and core/alloc.c for st_env_flag and the BF16 GEMM's scratch; formats/dtype.c)
# and run under qemu-user:
#   -cpu max         NEON and FEAT_BF16: the NEON F32 kernel and the BFDOT kernel, with
#                    OMP_NUM_THREADS=1 and 3 (each test also compares 1 and 3 threads bitwise)
#   -cpu cortex-a72  no FEAT_BF16: HWCAP2_BF16 is clear, the portable BF16 kernel runs
#   ST_NO_NEON=1     the portable F32 and BF16 kernels on -cpu max
# Each run checks the kernel the test reports ("kernel: ..."), so a broken CPU check cannot pass
# by running the portable kernel everywhere. qemu's timing says nothing about speed.
# Exits 77 (ctest: skipped) without aarch64-linux-gnu-gcc, its static libc/libgomp, or
# qemu-aarch64 (scripts/setup installs gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user).
set -u

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cc="${ST_AARCH64_CC:-aarch64-linux-gnu-gcc}"
qemu="${ST_QEMU_AARCH64:-}"
if [ -z "$qemu" ]; then
    for q in qemu-aarch64 qemu-aarch64-static; do
        if command -v "$q" >/dev/null 2>&1; then qemu="$q"; break; fi
    done
fi
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "SKIP: $cc not found (apt-get install gcc-aarch64-linux-gnu, or scripts/setup)"
    exit 77
fi
if [ -z "$qemu" ] || ! command -v "$qemu" >/dev/null 2>&1; then
    echo "SKIP: qemu-aarch64 not found (apt-get install qemu-user, or scripts/setup)"
    exit 77
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# the flags of CMakeLists.txt for GCC (warnings as errors), static so qemu needs no sysroot
flags=(-std=c11 -O2 -static -fopenmp -ffp-contract=fast -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE
       -Wall -Wextra -Wshadow -Wno-unused-parameter -Wno-format-truncation -Werror
       -I"$src/include" -I"$src/src" -I"$src/tests")
# static libgomp warns that dlopen needs the build's glibc at run time: true, and harmless here
quiet() { grep -v -e "requires at runtime the shared libraries" -e "in function \`goacc_" || true; }

echo 'int main(void) { return 0; }' >"$tmp/probe.c"
if ! "$cc" "${flags[@]}" "$tmp/probe.c" -o "$tmp/probe" >"$tmp/probe.log" 2>&1; then
    cat "$tmp/probe.log"
    echo "SKIP: $cc cannot link a static OpenMP program (apt-get install libc6-dev-arm64-cross)"
    exit 77
fi

build() { # build NAME SOURCES...
    local name="$1"
    shift
    local rc=0
    echo "== $cc $name"
    "$cc" "${flags[@]}" "$src/tests/$name.c" "$@" -lm -o "$tmp/$name" >"$tmp/$name.log" 2>&1 ||
        rc=$?
    quiet <"$tmp/$name.log"
    return "$rc"
}

fails=0
run() { # run WANT_KERNEL NAME CPU [VAR=VALUE...]
    local want="$1" name="$2" cpu="$3" out
    shift 3
    echo "== $qemu -cpu $cpu $name $* (expect kernel: $want)"
    if ! out="$(env "$@" "$qemu" -cpu "$cpu" "$tmp/$name" 2>&1)"; then
        echo "$out"
        echo "FAIL: $name on -cpu $cpu $*"
        fails=$((fails + 1))
        return
    fi
    echo "$out"
    if ! grep -qx "kernel: $want" <<<"$out"; then
        echo "FAIL: $name on -cpu $cpu $* ran another kernel than '$want'"
        fails=$((fails + 1))
    fi
}

k="$src/src/kernels/cpu"
build test_f32 "$k/gemm_f32.c" "$src/src/core/util.c" "$src/src/core/status.c" \
    "$src/src/core/alloc.c" || { echo "FAIL: test_f32 does not cross-compile"; exit 1; }
build test_bf16 "$k/gemm_bf16.c" "$src/src/formats/dtype.c" "$src/src/core/status.c" \
    "$src/src/core/alloc.c" "$src/src/core/util.c" ||
    { echo "FAIL: test_bf16 does not cross-compile"; exit 1; }

run native test_f32 max OMP_NUM_THREADS=1
run native test_f32 max OMP_NUM_THREADS=3
run portable test_f32 max ST_NO_NEON=1
run "AArch64 BFDOT" test_bf16 max OMP_NUM_THREADS=1
run "AArch64 BFDOT" test_bf16 max OMP_NUM_THREADS=3
run portable test_bf16 cortex-a72
run portable test_bf16 max ST_NO_NEON=1

if [ "$fails" -ne 0 ]; then
    echo "test_aarch64: $fails run(s) failed"
    exit 1
fi
echo "test_aarch64: all runs passed"
