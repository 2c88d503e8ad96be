/* amx.h: what the AMX-BF16 kernels (gemm_bf16.c, attention.c) share: the tile load behind a
 * compiler barrier, and the configuration they all use, eight tiles of 16 rows x 64 bytes.
 * x86-64 only; include where the caller's functions are built for AMX. */
#ifndef ST_KERNELS_CPU_AMX_H
#define ST_KERNELS_CPU_AMX_H
#include <immintrin.h>
#include <stdint.h>

/* GCC's _tile_loadd is an asm that takes the address in a register and declares no memory read:
 * a compiler barrier first, so that stores to a buffer just filled (a staging tile, P's pairs)
 * are in memory, not dropped or moved past the load, when the tile unit reads it */
#define TILE_LOAD(t, p, s)                                                                        \
    do {                                                                                          \
        __asm__ volatile("" ::: "memory");                                                        \
        _tile_loadd(t, p, s);                                                                     \
    } while (0)

/* ldtilecfg's 64-byte operand (palette 1) */
struct amx_cfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* tiles 0-7: 16 rows of 64 bytes (16 floats, or 16 BF16 pairs) */
__attribute__((target("amx-tile"), always_inline)) static inline void amx_config_16x64(void) {
    struct amx_cfg c = {.palette = 1};
    for (int t = 0; t < 8; t++) c.colsb[t] = 64, c.rows[t] = 16;
    __asm__ volatile("" ::: "memory"); /* as TILE_LOAD: GCC's asm declares too small a read */
    _tile_loadconfig(&c);
}
#endif
