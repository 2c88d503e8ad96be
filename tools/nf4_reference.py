#!/usr/bin/env python3
"""nf4_reference.py: float64 numpy reference of the bitsandbytes NF4 scheme (QLoRA storage), and the
golden file tests/golden/nf4/nf4_golden.safetensors that tests/test_nf4.c compares against.

Usage: /usr/bin/python3 tools/nf4_reference.py [out.safetensors]   (numpy only; torch optional)

The scheme, as bitsandbytes' CUDA kernels implement it (kQuantizeBlockwise / dQuantizeNF4 /
dQuantize / kDequantizeBlockwise, and functional.quantize_4bit for double quantisation):
- NF4: blocks of 64; absmax = max|w| over the block; scale = float32(1 / absmax); x = float32(w *
  scale); the code is chosen by comparing x with the 15 midpoints between sorted code values
  (bnb's decimal literals, rounded directly to float32 as nvcc does) with a strict `>`: code =
  #{t : x > t}. So a value equal to a threshold takes the LOWER code. (A threshold can sit one ulp
  from the float32-rounded exact midpoint, so "ties" are decided by the literal.) dequant = float32(NF4[code] * absmax).
  absmax == 0: bnb computes 0 * inf = NaN, every `>` is false, so the code is 0 (value -1.0 * 0 = 0).
  Packing: two codes per byte, FIRST element in the HIGH nibble. A tail block (n % 64 != 0) is padded
  with zeros, which take code 7 (0.0); an odd n leaves code 7 in the low nibble of the last byte.
- Double quantisation: offset = mean(absmax); v = absmax - offset (float32); blocks of 256 with
  nested_absmax = max|v|; x = float32(v * float32(1 / nested_absmax)); the 8-bit code is bnb's
  dQuantize<0> binary search over the 256-entry signed dynamic map (reproduced exactly below, float32
  midpoints); reconstruction absmax' = float32(float32(map[q] * nested_absmax) + offset).
  offset is the float64 mean rounded to float32 (torch's float32 mean may differ in the last ulp).
Products of two float32 values are formed in float64 and rounded once, which equals float32 math.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

F32 = np.float32

NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)

# The literals of bnb's dQuantizeNF4 decision tree (csrc/kernels.cu), ascending, as written.
BNB_NF4_THRESHOLDS = ["-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906",
                      "-0.33967943489551544", "-0.23460740596055984", "-0.13791173323988914",
                      "-0.045525018125772476", "0.03979014977812767", "0.1202552504837513",
                      "0.2035212516784668", "0.2920137718319893", "0.3893125355243683",
                      "0.5016634166240692", "0.6427869200706482", "0.8614784181118011"]

# bitsandbytes functional.create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) as
# computed by torch (1.13, CPU) in float32: torch.linspace(0.1, 1, 2**i + 1) boundaries, float32
# means, times float32(10**(i-6)), both signs, plus 0 and 1, sorted. 90 of the 256 entries differ by
# one ulp from the same construction done in float64 (torch's float32 linspace rounds differently),
# so the exact table is stored here; with torch installed, dynamic_map_torch() re-derives it.
DYNAMIC_MAP_HEX = [
    '-0x1.fc6666p-1', '-0x1.f53332p-1', '-0x1.eep-1', '-0x1.e6ccccp-1',
    '-0x1.df9998p-1', '-0x1.d86666p-1', '-0x1.d13334p-1', '-0x1.cap-1',
    '-0x1.c2ccccp-1', '-0x1.bb9998p-1', '-0x1.b46666p-1', '-0x1.ad3332p-1',
    '-0x1.a6p-1', '-0x1.9eccccp-1', '-0x1.979998p-1', '-0x1.906666p-1',
    '-0x1.893334p-1', '-0x1.82p-1', '-0x1.7acccep-1', '-0x1.73999ap-1',
    '-0x1.6c6668p-1', '-0x1.653334p-1', '-0x1.5ep-1', '-0x1.56cccep-1',
    '-0x1.4f999ap-1', '-0x1.486666p-1', '-0x1.413334p-1', '-0x1.3ap-1',
    '-0x1.32ccccp-1', '-0x1.2b999ap-1', '-0x1.246668p-1', '-0x1.1d3334p-1',
    '-0x1.16p-1', '-0x1.0eccccp-1', '-0x1.07999ap-1', '-0x1.006666p-1',
    '-0x1.f26668p-2', '-0x1.e4p-2', '-0x1.d59998p-2', '-0x1.c73334p-2',
    '-0x1.b8ccccp-2', '-0x1.aa6664p-2', '-0x1.9cp-2', '-0x1.8d9998p-2',
    '-0x1.7f3334p-2', '-0x1.70ccccp-2', '-0x1.626664p-2', '-0x1.54p-2',
    '-0x1.459998p-2', '-0x1.373334p-2', '-0x1.28ccccp-2', '-0x1.1a6668p-2',
    '-0x1.0cp-2', '-0x1.fb3334p-3', '-0x1.de6668p-3', '-0x1.c1999ap-3',
    '-0x1.a4ccccp-3', '-0x1.88p-3', '-0x1.6b3332p-3', '-0x1.4e6666p-3',
    '-0x1.31999ap-3', '-0x1.14ccccp-3', '-0x1.fp-4', '-0x1.b66668p-4',
    '-0x1.93d70ap-4', '-0x1.8851eap-4', '-0x1.7ccccep-4', '-0x1.7147aep-4',
    '-0x1.65c29p-4', '-0x1.5a3d7p-4', '-0x1.4eb85p-4', '-0x1.433334p-4',
    '-0x1.37ae14p-4', '-0x1.2c28f6p-4', '-0x1.20a3d6p-4', '-0x1.151ebap-4',
    '-0x1.09999ap-4', '-0x1.fc28f4p-5', '-0x1.e51ebap-5', '-0x1.ce147ap-5',
    '-0x1.b70a3ep-5', '-0x1.ap-5', '-0x1.88f5c2p-5', '-0x1.71eb86p-5',
    '-0x1.5ae146p-5', '-0x1.43d70ap-5', '-0x1.2ccccep-5', '-0x1.15c28ep-5',
    '-0x1.fd70a4p-6', '-0x1.cf5c26p-6', '-0x1.a147aep-6', '-0x1.733334p-6',
    '-0x1.451eb8p-6', '-0x1.170a3ep-6', '-0x1.d1eb86p-7', '-0x1.75c29p-7',
    '-0x1.3e76c8p-7', '-0x1.2c083p-7', '-0x1.19999ap-7', '-0x1.072b02p-7',
    '-0x1.e978d4p-8', '-0x1.c49ba6p-8', '-0x1.9fbe76p-8', '-0x1.7ae148p-8',
    '-0x1.56041ap-8', '-0x1.3126e8p-8', '-0x1.0c49bap-8', '-0x1.ced914p-9',
    '-0x1.851eb8p-9', '-0x1.3b645ap-9', '-0x1.e353f8p-10', '-0x1.4fdf3ap-10',
    '-0x1.eecbfep-11', '-0x1.b3d07cp-11', '-0x1.78d5p-11', '-0x1.3dd982p-11',
    '-0x1.02de02p-11', '-0x1.8fc506p-12', '-0x1.19ce0ap-12', '-0x1.47ae16p-13',
    '-0x1.743e96p-14', '-0x1.15df66p-14', '-0x1.6f0068p-15', '-0x1.64840cp-16',
    '-0x1.040bfep-17', '-0x1.b43528p-19', '-0x1.27476ep-21', '0x0.0p+0',
    '0x1.27476ep-21', '0x1.b43528p-19', '0x1.040bfep-17', '0x1.64840cp-16',
    '0x1.6f0068p-15', '0x1.15df66p-14', '0x1.743e96p-14', '0x1.47ae16p-13',
    '0x1.19ce0ap-12', '0x1.8fc506p-12', '0x1.02de02p-11', '0x1.3dd982p-11',
    '0x1.78d5p-11', '0x1.b3d07cp-11', '0x1.eecbfep-11', '0x1.4fdf3ap-10',
    '0x1.e353f8p-10', '0x1.3b645ap-9', '0x1.851eb8p-9', '0x1.ced914p-9',
    '0x1.0c49bap-8', '0x1.3126e8p-8', '0x1.56041ap-8', '0x1.7ae148p-8',
    '0x1.9fbe76p-8', '0x1.c49ba6p-8', '0x1.e978d4p-8', '0x1.072b02p-7',
    '0x1.19999ap-7', '0x1.2c083p-7', '0x1.3e76c8p-7', '0x1.75c29p-7',
    '0x1.d1eb86p-7', '0x1.170a3ep-6', '0x1.451eb8p-6', '0x1.733334p-6',
    '0x1.a147aep-6', '0x1.cf5c26p-6', '0x1.fd70a4p-6', '0x1.15c28ep-5',
    '0x1.2ccccep-5', '0x1.43d70ap-5', '0x1.5ae146p-5', '0x1.71eb86p-5',
    '0x1.88f5c2p-5', '0x1.ap-5', '0x1.b70a3ep-5', '0x1.ce147ap-5',
    '0x1.e51ebap-5', '0x1.fc28f4p-5', '0x1.09999ap-4', '0x1.151ebap-4',
    '0x1.20a3d6p-4', '0x1.2c28f6p-4', '0x1.37ae14p-4', '0x1.433334p-4',
    '0x1.4eb85p-4', '0x1.5a3d7p-4', '0x1.65c29p-4', '0x1.7147aep-4',
    '0x1.7ccccep-4', '0x1.8851eap-4', '0x1.93d70ap-4', '0x1.b66668p-4',
    '0x1.fp-4', '0x1.14ccccp-3', '0x1.31999ap-3', '0x1.4e6666p-3',
    '0x1.6b3332p-3', '0x1.88p-3', '0x1.a4ccccp-3', '0x1.c1999ap-3',
    '0x1.de6668p-3', '0x1.fb3334p-3', '0x1.0cp-2', '0x1.1a6668p-2',
    '0x1.28ccccp-2', '0x1.373334p-2', '0x1.459998p-2', '0x1.54p-2',
    '0x1.626664p-2', '0x1.70ccccp-2', '0x1.7f3334p-2', '0x1.8d9998p-2',
    '0x1.9cp-2', '0x1.aa6664p-2', '0x1.b8ccccp-2', '0x1.c73334p-2',
    '0x1.d59998p-2', '0x1.e4p-2', '0x1.f26668p-2', '0x1.006666p-1',
    '0x1.07999ap-1', '0x1.0eccccp-1', '0x1.16p-1', '0x1.1d3334p-1',
    '0x1.246668p-1', '0x1.2b999ap-1', '0x1.32ccccp-1', '0x1.3ap-1',
    '0x1.413334p-1', '0x1.486666p-1', '0x1.4f999ap-1', '0x1.56cccep-1',
    '0x1.5ep-1', '0x1.653334p-1', '0x1.6c6668p-1', '0x1.73999ap-1',
    '0x1.7acccep-1', '0x1.82p-1', '0x1.893334p-1', '0x1.906666p-1',
    '0x1.979998p-1', '0x1.9eccccp-1', '0x1.a6p-1', '0x1.ad3332p-1',
    '0x1.b46666p-1', '0x1.bb9998p-1', '0x1.c2ccccp-1', '0x1.cap-1',
    '0x1.d13334p-1', '0x1.d86666p-1', '0x1.df9998p-1', '0x1.e6ccccp-1',
    '0x1.eep-1', '0x1.f53332p-1', '0x1.fc6666p-1', '0x1.0p+0',
]
DYNAMIC_MAP = np.array([float.fromhex(h) for h in DYNAMIC_MAP_HEX], dtype=np.float32)


def dynamic_map_torch():
    import torch  # optional: only to re-derive DYNAMIC_MAP
    data = []
    for i in range(7):
        boundaries = torch.linspace(0.1, 1, 2 ** i + 1)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data.append(0)
    data.append(1.0)
    data.sort()
    return torch.tensor(data).numpy()


def f32_from_decimal(text):
    """The float32 nearest to the decimal literal `text`, as a C/CUDA compiler rounds `text`f
    directly. (np.float32(float(text)) rounds twice and differs when the double lands on a float32
    half-way point, which the midpoints of two float32 values often do.)"""
    from fractions import Fraction
    d = Fraction(text)
    c = np.float32(float(text))
    cands = [np.nextafter(c, np.float32(-2)), c, np.nextafter(c, np.float32(2))]
    return min(cands, key=lambda f: abs(Fraction(float(f)) - d))


def nf4_thresholds():
    """bnb's 15 decision-tree literals rounded to float32 (ascending). Each is within one ulp of
    the float32 midpoint of its two code values; the literal, not the midpoint, decides ties."""
    t = np.array([f32_from_decimal(v) for v in BNB_NF4_THRESHOLDS], dtype=np.float32)
    c = NF4.astype(np.float64)
    mid = (c[:-1] + c[1:]) / 2.0
    assert np.all(np.abs(t.astype(np.float64) - mid) <= np.spacing(np.abs(mid).astype(np.float32)))
    return t


def fmul(a, b):
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64)).astype(np.float32)


def nf4_quantize(w, blocksize=64):
    """w float32 (n,) -> packed uint8 ((n+1)//2,), absmax float32 (ceil(n/64),)."""
    w = np.asarray(w, np.float32)
    n = w.size
    nb = (n + blocksize - 1) // blocksize
    wp = np.zeros(nb * blocksize, np.float32)
    wp[:n] = w
    blocks = wp.reshape(nb, blocksize)
    absmax = np.abs(blocks).max(axis=1).astype(np.float32)
    t = nf4_thresholds()
    codes = np.zeros_like(blocks, dtype=np.uint8)
    for b in range(nb):
        if absmax[b] == 0:
            continue  # NaN in bnb: code 0
        scale = F32(1.0 / np.float64(absmax[b]))
        x = fmul(blocks[b], scale)
        codes[b] = (x[:, None] > t[None, :]).sum(axis=1)
    codes = codes.reshape(-1)[: n + (n & 1)]
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8)
    return packed, absmax


def nf4_dequantize(packed, absmax, n, blocksize=64):
    codes = np.empty(packed.size * 2, np.uint8)
    codes[0::2] = packed >> 4
    codes[1::2] = packed & 15
    codes = codes[:n]
    a = np.repeat(absmax, blocksize)[:n]
    return fmul(NF4[codes], a)


def bnb_dquantize(code, x):
    """bnb dQuantize<0>(smem_code, 0, x): float32 binary search, exactly as the CUDA kernel."""
    pivot, upper_pivot, lower_pivot = 127, 255, 0
    lower, upper = F32(-1.0), F32(1.0)
    val = code[pivot]
    i = 64
    while i > 0:
        if x > val:
            lower_pivot, lower = pivot, val
            pivot += i
        else:
            upper_pivot, upper = pivot, val
            pivot -= i
        val = code[pivot]
        i >>= 1
    if upper_pivot == 255:
        upper = code[upper_pivot]
    if lower_pivot == 0:
        lower = code[lower_pivot]
    if x > val:
        mid = F32(F32(upper + val) * F32(0.5))
        return upper_pivot if x > mid else pivot
    mid = F32(F32(lower + val) * F32(0.5))
    return lower_pivot if x < mid else pivot


def quantize_absmax(absmax, blocksize=256):
    """Double quantisation: -> q uint8 (nb,), nested_absmax float32 (ceil(nb/256),), offset float32."""
    absmax = np.asarray(absmax, np.float32)
    nb = absmax.size
    offset = F32(np.mean(absmax.astype(np.float64)))
    v = (absmax.astype(np.float64) - np.float64(offset)).astype(np.float32)
    nn = (nb + blocksize - 1) // blocksize
    nested = np.zeros(nn, np.float32)
    q = np.zeros(nb, np.uint8)
    for j in range(nn):
        blk = v[j * blocksize:(j + 1) * blocksize]
        nested[j] = np.abs(blk).max()
        if nested[j] == 0:
            continue  # NaN in bnb: every comparison false, the search ends at index 0
        scale = F32(1.0 / np.float64(nested[j]))
        x = fmul(blk, scale)
        for k in range(blk.size):
            q[j * blocksize + k] = bnb_dquantize(DYNAMIC_MAP, x[k])
    return q, nested, offset


def dequantize_absmax(q, nested, offset, blocksize=256):
    a = fmul(DYNAMIC_MAP[q], np.repeat(nested, blocksize)[: q.size])
    return (a.astype(np.float64) + np.float64(offset)).astype(np.float32)


def err_stats(ref, got):
    """[mse, max |err|, mean |err|] in float64."""
    e = np.asarray(got, np.float64) - np.asarray(ref, np.float64)
    return np.array([np.mean(e * e), np.max(np.abs(e)), np.mean(np.abs(e))], np.float64)


def write_safetensors(path, tensors):
    dt = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.uint8): "U8"}
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        b = arr.tobytes()
        header[name] = {"dtype": dt[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else \
        Path(__file__).resolve().parent.parent / "tests/golden/nf4/nf4_golden.safetensors"
    try:
        tm = dynamic_map_torch()
        assert np.array_equal(tm, DYNAMIC_MAP), "torch dynamic map differs from the stored table"
        print("dynamic map: stored table == create_dynamic_map(signed=True) via torch")
    except ImportError:
        print("dynamic map: torch absent, using the stored table")
    rng = np.random.default_rng(20240605)
    T = {"nf4_code": NF4, "nf4_thresholds": nf4_thresholds(), "dynamic_map": DYNAMIC_MAP}

    # g: Gaussian weights (std 0.02) in 48 blocks, with outliers, a zero block, and a tie block.
    g = (rng.standard_normal(48 * 64) * 0.02).astype(np.float32)
    g[5 * 64 + 17] = 0.31      # outlier blocks
    g[9 * 64 + 3] = -0.27
    g[20 * 64:21 * 64] = 0.0   # all-zero block: codes 0 (bnb NaN path), dequant 0
    tie = np.zeros(64, np.float32)
    th = nf4_thresholds()
    tie[0] = 1.0                # absmax 1 -> scale 1, x == w exactly
    tie[1:16] = th              # exactly on each midpoint -> lower code
    tie[16:31] = np.nextafter(th, np.float32(2))  # one ulp above -> upper code
    tie[31] = -1.0
    g[30 * 64:31 * 64] = tie
    pg, ag = nf4_quantize(g)
    dg = nf4_dequantize(pg, ag, g.size)
    T.update(g_w=g, g_packed=pg, g_absmax=ag, g_deq=dg, g_stats=err_stats(g, dg))
    qg, ng, og = quantize_absmax(ag)
    rg = dequantize_absmax(qg, ng, og)
    dg2 = nf4_dequantize(pg, rg, g.size)
    T.update(g_dq_q=qg, g_dq_nested=ng, g_dq_offset=np.array([og], np.float32), g_dq_absmax=rg,
             g_dq_stats=err_stats(g, dg2), g_dq_absmax_stats=err_stats(ag, rg))

    # t: a tail: n = 201 (3 full blocks + 9, odd so the last low nibble is padding).
    t = (rng.standard_normal(201) * 0.05).astype(np.float32)
    pt, at = nf4_quantize(t)
    dt_ = nf4_dequantize(pt, at, t.size)
    T.update(t_w=t, t_packed=pt, t_absmax=at, t_deq=dt_, t_stats=err_stats(t, dt_))

    # a: double quantisation of 700 absmax-like values (3 nested blocks, the last partial).
    a = (np.abs(rng.standard_normal((700, 64))).max(axis=1) * 0.02).astype(np.float32)
    qa, na, oa = quantize_absmax(a)
    ra = dequantize_absmax(qa, na, oa)
    T.update(a_absmax=a, a_q=qa, a_nested=na, a_offset=np.array([oa], np.float32), a_rec=ra,
             a_stats=err_stats(a, ra))

    out.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(out, T)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    for k in ("g_stats", "g_dq_stats", "g_dq_absmax_stats", "t_stats", "a_stats"):
        print(f"  {k}: mse={T[k][0]:.6e} max={T[k][1]:.6e} mean={T[k][2]:.6e}")
    try:
        import torch
        print(f"  offset: float64 mean {float(og)!r}, torch float32 mean "
              f"{float(torch.from_numpy(ag).mean())!r}; a: {float(oa)!r} vs "
              f"{float(torch.from_numpy(a).mean())!r}")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
