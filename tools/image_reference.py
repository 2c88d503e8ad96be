#!/usr/bin/python3
"""image_reference.py: test images and Pillow + torchvision reference outputs (test_image.c).

Writes tests/golden/image/ (inputs, expected outputs, cases.txt). Run with Debian's python3
(Pillow 9.4, torch 1.13, torchvision 0.14):

    /usr/bin/python3 tools/image_reference.py [OUTDIR]
    /usr/bin/python3 tools/image_reference.py --fuzz-seeds fuzz/corpus/image
    /usr/bin/python3 tools/image_reference.py --check     (regenerate, compare with the goldens)

Inputs are generated (gradients + noise, odd sizes) and saved by Pillow as JPEG (4:2:0, 4:4:4
progressive, grayscale, CMYK), PNG (RGB, gray, palette with transparency, RGBA, LA, 1-bit,
16-bit gray written by Pillow, 16-bit RGB and Adam7-interlaced RGB written by hand) and WebP
(lossy, lossless + alpha; an animated one for the refusal).

Each line of cases.txt is one check (fields separated by spaces):
  decode  IN EXPECTED.png TOL                  Image.open(IN).convert("RGB")
  resize  IN W H FILTER EXPECTED.png TOL       .resize((W, H), FILTER)
  center  IN SIZE RESIZE FILTER JPEG_SCALE EXPECTED.png TOL
          Resize(RESIZE, FILTER) + CenterCrop(SIZE) (JPEG_SCALE 1: decoded with Image.draft)
  none    IN SIZE FILTER EXPECTED.png TOL      Resize((SIZE, SIZE), FILTER)
  random  IN SIZE FILTER SEED S0 S1 R0 R1 FLIP B C S H EXPECTED.png TOL
          the random pipeline with our RNG (port below): RandomResizedCrop params, hflip, then
          ColorJitter's adjust_* in our order with our factors, on torchvision functionals
  adjust  IN B C S H EXPECTED.png TOL          brightness, contrast, saturation, hue (PIL)
  norm    IN MEAN0 MEAN1 MEAN2 STD0 STD1 STD2 EXPECTED.f32 EXPECTED.bf16
          ToTensor + Normalize (float32 CHW), and that tensor .to(torch.bfloat16)
  clip    IN JPEG_SCALE EXPECTED.png TOL       the CLIP preset (224) end to end, as float32
          compared with torchvision's ToTensor + Normalize of EXPECTED (the norm_clip.f32 table)
  seed    SEED EPOCH KEY VALUE                 st_image_seed (hash port below)
TOL is the largest per-pixel difference allowed in 8-bit units (float cases: absolute).
"""
import math
import os
import struct
import sys
import zlib

try:
    import numpy as np
    import torch
    from PIL import Image, ImageEnhance
    import torchvision.transforms as T
    import torchvision.transforms.functional as F
except ImportError as e:
    if "--check" in sys.argv:  # ctest: a machine without the reference stack skips
        print("skip: %s (needs python3-pil, python3-torchvision: scripts/setup)" % e)
        sys.exit(0)
    raise

FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
TV_FILTERS = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
M64 = (1 << 64) - 1


def f32(x):
    """The float32 value of x, as a Python float (the C side keeps these parameters as float)."""
    return float(np.float32(x))


# ---- our RNG and seed hash, ported from src/core/util.c and src/data/image_transform.c ----
def splitmix64_next(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return x, z ^ (z >> 31)


def mix64(z):
    return splitmix64_next(z)[1]


def image_seed(seed, epoch, key):
    h = 0xCBF29CE484222325
    for b in key.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return mix64(mix64(mix64(seed) ^ epoch) ^ h)


class Rng:
    def __init__(self, seed):
        self.s = []
        x = seed
        for _ in range(4):
            x, v = splitmix64_next(x)
            self.s.append(v)

    def u64(self):
        s = self.s
        rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & M64
        result = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def uniform(self):
        return (self.u64() >> 11) * 2.0**-53


def random_crop(w, h, scale, ratio, rng):
    """torchvision 0.14 RandomResizedCrop.get_params with our RNG, in double precision."""
    area = float(w) * float(h)
    s0, s1 = scale
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * (s0 + (s1 - s0) * rng.uniform())
        ar = math.exp(lr0 + (lr1 - lr0) * rng.uniform())
        cw = round(math.sqrt(target * ar))
        ch = round(math.sqrt(target / ar))
        if 0 < cw <= w and 0 < ch <= h:
            y = rng.u64() % (h - ch + 1)
            x = rng.u64() % (w - cw + 1)
            return x, y, cw, ch
    in_ratio = float(w) / float(h)
    cw, ch = w, h
    if in_ratio < min(ratio):
        ch = int(round(cw / min(ratio)))
    elif in_ratio > max(ratio):
        cw = int(round(ch * max(ratio)))
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def random_pipeline(img, size, filt, seed, scale, ratio, flip_p, jitter):
    """What st_image_apply does for CROP_RANDOM, on torchvision's functionals."""
    rng = Rng(seed)
    x, y, cw, ch = random_crop(img.width, img.height, scale, ratio, rng)
    out = F.resized_crop(img, y, x, ch, cw, [size, size], TV_FILTERS[filt])
    if flip_p > 0 and rng.uniform() < flip_p:
        out = F.hflip(out)
    if any(r > 0 for r in jitter):
        order = [0, 1, 2, 3]
        for i in range(3, 0, -1):
            j = rng.u64() % (i + 1)
            order[i], order[j] = order[j], order[i]
        factor = [1.0, 1.0, 1.0, 0.0]
        for k in range(4):
            r = jitter[k]
            if not r > 0:
                continue
            lo = -r if k == 3 else (1.0 - r if r < 1 else 0.0)
            hi = r if k == 3 else 1.0 + r
            factor[k] = f32(lo + (hi - lo) * rng.uniform())
        for k in order:
            if jitter[k] > 0:
                out = apply_op(out, k, factor[k])
    return out


def apply_op(img, k, f):
    if k == 0:
        return F.adjust_brightness(img, f)
    if k == 1:
        return F.adjust_contrast(img, f)
    if k == 2:
        return F.adjust_saturation(img, f)
    # F.adjust_hue does np.uint8(hue * 255), undefined for negative floats in C; do it defined
    h, s, v = img.convert("HSV").split()
    nh = np.array(h, dtype=np.uint8)
    nh = ((nh.astype(np.int64) + int(f * 255)) % 256).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(nh, "L"), s, v)).convert("RGB")


# ---- test images ----
def pattern(w, h, seed, noise=4.0, period=1.0):
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * xx / max(w - 1, 1)
    g = 255 * yy / max(h - 1, 1)
    b = 127.5 + 127.5 * np.sin(xx / (5.0 * period)) * np.cos(yy / (7.0 * period))
    a = np.stack([r, g, b], -1) + rs.normal(0, noise, (h, w, 3))
    # a few hard edges (a disc and a bar): where resampling filters ring
    disc = (xx - w * 0.6) ** 2 + (yy - h * 0.4) ** 2 < (min(w, h) * 0.2) ** 2
    a[disc] = [250, 20, 40]
    a[(xx > w * 0.2) & (xx < w * 0.25)] = [10, 10, 10]
    return np.clip(a, 0, 255).astype(np.uint8)


def write_png16_rgb(path, arr16):
    """A 16-bit RGB PNG (Pillow cannot write one)."""
    h, w, _ = arr16.shape
    raw = b"".join(b"\0" + arr16[y].astype(">u2").tobytes() for y in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9))
    data += chunk(b"IEND", b"")
    open(path, "wb").write(data)


def write_png_interlaced(path, arr):
    """An Adam7-interlaced 8-bit RGB PNG (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b""
    for x0, y0, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                           (1, 0, 2, 2), (0, 1, 1, 2)]:
        sub = arr[y0::dy, x0::dx]
        if sub.shape[0] and sub.shape[1]:
            raw += b"".join(b"\0" + sub[y].tobytes() for y in range(sub.shape[0]))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9))
    open(path, "wb").write(data + chunk(b"IEND", b""))


def make_inputs(d):
    ins = {}
    def save(name, img, **kw):
        img.save(os.path.join(d, name), **kw)
        ins[name] = os.path.join(d, name)
    rgb = Image.fromarray(pattern(97, 61, 1))
    save("grad_97x61.png", rgb)
    save("noise_64x48.png", Image.fromarray(np.random.RandomState(2).randint(0, 256, (48, 64, 3),
                                                                             dtype=np.uint8)))
    save("photo_131x97.jpg", Image.fromarray(pattern(131, 97, 3)), quality=90)
    save("prog444_120x90.jpg", Image.fromarray(pattern(120, 90, 4)), quality=92, progressive=True,
         subsampling=0)
    save("gray_73x55.jpg", Image.fromarray(pattern(73, 55, 5)[..., 1]), quality=90)
    save("cmyk_40x30.jpg", Image.fromarray(pattern(40, 30, 6)).convert("CMYK"), quality=90)
    save("big_900x500.jpg", Image.fromarray(pattern(900, 500, 7, noise=0.0, period=10.0)),
         quality=75)
    save("gray_59x41.png", Image.fromarray(pattern(59, 41, 8)[..., 0]))
    pal = Image.fromarray(pattern(63, 47, 9)).convert("P", palette=Image.ADAPTIVE, colors=37)
    save("palette_63x47.png", pal, transparency=5)
    rgba = Image.fromarray(np.dstack([pattern(45, 67, 10), pattern(45, 67, 11)[..., 0]]), "RGBA")
    save("rgba_45x67.png", rgba)
    save("la_33x21.png", Image.fromarray(np.dstack([pattern(33, 21, 12)[..., 0],
                                                    pattern(33, 21, 13)[..., 1]]), "LA"))
    save("bits_29x19.png", Image.fromarray(pattern(29, 19, 14)[..., 2]).convert("1"))
    g16 = (pattern(31, 23, 15)[..., 0].astype(np.uint16) * 257 + 91).astype(np.uint16)
    save("gray16_31x23.png", Image.fromarray(g16, "I;16"))
    rgb16 = pattern(37, 29, 16).astype(np.uint16) * 257 + np.random.RandomState(17).randint(
        0, 200, (29, 37, 3)).astype(np.uint16)
    write_png16_rgb(os.path.join(d, "rgb16_37x29.png"), rgb16)
    ins["rgb16_37x29.png"] = os.path.join(d, "rgb16_37x29.png")
    write_png_interlaced(os.path.join(d, "adam7_29x23.png"), pattern(29, 23, 22))
    ins["adam7_29x23.png"] = os.path.join(d, "adam7_29x23.png")
    save("lossy_81x53.webp", Image.fromarray(pattern(81, 53, 18)), quality=80)
    save("alpha_47x39.webp", rgba.resize((47, 39)), lossless=True)
    frames = [Image.fromarray(pattern(8, 8, 19 + i)) for i in range(2)]
    frames[0].save(os.path.join(d, "anim_8x8.webp"), save_all=True, append_images=frames[1:],
                   duration=100, loop=0, lossless=True)
    return ins


def expected_decode(path):
    img = Image.open(path)
    if img.mode in ("I;16", "I;16B", "I"):
        # Pillow 9.4 clips 16-bit gray to 255 on convert("RGB"); our convention is the high byte
        a = np.array(img, dtype=np.int64) >> 8
        return Image.fromarray(np.repeat(a.astype(np.uint8)[..., None], 3, -1))
    return img.convert("RGB")


def write_fuzz_seeds(d):
    """Small inputs of every kind for fuzz/fuzz_image.c: two parameter bytes, then the image."""
    os.makedirs(d, exist_ok=True)
    import io
    def put(name, img, params=b"\x00\x17", **kw):
        b = io.BytesIO()
        img.save(b, **kw)
        open(os.path.join(d, name), "wb").write(params + b.getvalue())
    rgb = Image.fromarray(pattern(24, 16, 30))
    put("rgb.jpg", rgb, format="JPEG", quality=85)
    put("prog444.jpg", rgb, b"\x03\x09", format="JPEG", quality=85, progressive=True,
        subsampling=0)
    put("gray.jpg", rgb.convert("L"), b"\x05\x21", format="JPEG")
    put("cmyk.jpg", rgb.convert("CMYK"), b"\x06\x08", format="JPEG")
    put("rgb.png", rgb, b"\x02\x0f", format="PNG")
    put("palette_trns.png", rgb.convert("P", palette=Image.ADAPTIVE, colors=7), b"\x04\x10",
        format="PNG", transparency=2)
    put("la.png", rgb.convert("LA"), b"\x07\x05", format="PNG")
    put("bits.png", rgb.convert("1"), format="PNG")
    put("gray16.png", Image.fromarray(np.array(rgb.convert("L"), np.uint16) * 250, "I;16"),
        format="PNG")
    put("lossy.webp", rgb, b"\x02\x30", format="WEBP", quality=70)
    put("alpha.webp", rgb.convert("RGBA"), b"\x05\x11", format="WEBP", lossless=True)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if len(sys.argv) > 2 and sys.argv[1] == "--fuzz-seeds":
        write_fuzz_seeds(sys.argv[2])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--check":
        # regenerate into a temporary folder: the committed goldens must come out byte for byte
        import filecmp
        import tempfile
        gold = os.path.join(root, "tests", "golden", "image")
        with tempfile.TemporaryDirectory() as tmp:
            sys.argv = [sys.argv[0], tmp]
            main()
            a, b = sorted(os.listdir(gold)), sorted(os.listdir(tmp))
            bad = [f for f in b if f not in a or not filecmp.cmp(os.path.join(gold, f),
                                                                  os.path.join(tmp, f), False)]
            bad += [f for f in a if f not in b]
            if bad:
                sys.exit("FAIL: tools/image_reference.py output differs from tests/golden/image: "
                         + " ".join(bad))
            print("ok: image goldens regenerate identically (%d files)" % len(a))
        return
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "golden", "image")
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    ins = make_inputs(d)
    lines = []
    count = {}

    def out_png(img, kind, src):
        """Expected output, named after the check and its input (stable when cases are added)."""
        key = "%s-%s" % (kind, os.path.splitext(src)[0])
        count[key] = count.get(key, 0) + 1
        name = "exp-%s-%d.png" % (key, count[key])
        img.save(os.path.join(d, name), compress_level=9)
        return name

    for name in sorted(ins):
        if name.startswith("big_"):
            continue  # its full decode would be most of the golden size; the crops cover it
        e = out_png(expected_decode(ins[name]), "decode", name)
        lines.append("decode %s %s 0" % (name, e))

    def rgb(name):
        return expected_decode(ins[name])

    # resize: down, up, mixed, odd sizes, both filters
    for name, w, h in [("grad_97x61.png", 31, 17), ("grad_97x61.png", 110, 70),
                       ("noise_64x48.png", 23, 71), ("photo_131x97.jpg", 64, 48),
                       ("rgba_45x67.png", 45, 20), ("palette_63x47.png", 63, 47),
                       ("gray16_31x23.png", 11, 9), ("lossy_81x53.webp", 40, 40)]:
        for filt in ("bilinear", "bicubic"):
            e = rgb(name).resize((w, h), FILTERS[filt])
            lines.append("resize %s %d %d %s %s 0" % (name, w, h, filt, out_png(e, "resize", name)))

    # resize shortest side + center crop (CLIP style), and square (SigLIP style)
    for name, size, rs, filt in [("photo_131x97.jpg", 48, 48, "bicubic"),
                                 ("photo_131x97.jpg", 33, 40, "bilinear"),
                                 ("grad_97x61.png", 24, 24, "bicubic"),
                                 ("rgba_45x67.png", 21, 30, "bicubic"),
                                 ("prog444_120x90.jpg", 57, 57, "bicubic"),
                                 ("cmyk_40x30.jpg", 17, 17, "bicubic")]:
        tf = T.Compose([T.Resize(rs, TV_FILTERS[filt]), T.CenterCrop(size)])
        e = out_png(tf(rgb(name)), "center", name)
        lines.append("center %s %d %d %s 0 %s 0" % (name, size, rs, filt, e))
    # JPEG decoded with DCT scaling: Pillow's draft() picks the same 1/2 scale here
    for name, size, rs, filt in [("big_900x500.jpg", 96, 100, "bilinear")]:
        img = Image.open(ins[name])
        w, h = img.size
        ow, oh = (rs, int(rs * h / w)) if w <= h else (int(rs * w / h), rs)
        img.draft("RGB", (ow, oh))
        img = img.convert("RGB")
        tf = T.Compose([T.Resize(rs, TV_FILTERS[filt]), T.CenterCrop(size)])
        e = out_png(tf(img), "center", name)
        lines.append("center %s %d %d %s 1 %s 0" % (name, size, rs, filt, e))
    for name, size, filt in [("photo_131x97.jpg", 64, "bilinear"),
                             ("grad_97x61.png", 40, "bilinear"),
                             ("lossy_81x53.webp", 100, "bicubic")]:
        e = T.Resize((size, size), TV_FILTERS[filt])(rgb(name))
        lines.append("none %s %d %s %s 0" % (name, size, filt, out_png(e, "none", name)))

    # the random pipeline (crop, flip, jitter) with our RNG on torchvision's functionals
    s_def, r_def = (f32(0.08), 1.0), (f32(3 / 4), f32(4 / 3))
    for name, size, filt, seed, sc, ra, flip, jit in [
            ("photo_131x97.jpg", 48, "bilinear", 1, s_def, r_def, 0.5, (0, 0, 0, 0)),
            ("photo_131x97.jpg", 48, "bicubic", 2, s_def, r_def, 0.5, (0, 0, 0, 0)),
            ("photo_131x97.jpg", 32, "bilinear", 3, s_def, r_def, 1.0, (0, 0, 0, 0)),
            ("big_900x500.jpg", 64, "bilinear", 4, s_def, r_def, 0.5, (0, 0, 0, 0)),
            ("big_900x500.jpg", 40, "bicubic", 5, (f32(0.5), 1.0), r_def, 0.5, (0, 0, 0, 0)),
            ("grad_97x61.png", 50, "bilinear", 6, s_def, r_def, 0.5, (0, 0, 0, 0)),
            ("grad_97x61.png", 30, "bilinear", 7, s_def, (5.0, 9.0), 0.0, (0, 0, 0, 0)),
            ("noise_64x48.png", 40, "bicubic", 8, s_def, r_def, 0.5,
             (f32(0.4), f32(0.4), f32(0.4), f32(0.1))),
            ("photo_131x97.jpg", 56, "bilinear", 9, s_def, r_def, 0.5,
             (f32(0.8), f32(0.3), f32(1.5), f32(0.5))),
            ("lossy_81x53.webp", 36, "bicubic", 10, s_def, r_def, 0.5,
             (0, f32(0.6), 0, f32(0.2)))]:
        seed64 = image_seed(seed, 0, "%06d" % seed)
        e = random_pipeline(rgb(name), size, filt, seed64, sc, ra, flip, jit)
        lines.append("random %s %d %s %d %r %r %r %r %r %r %r %r %r %s 0" % (
            name, size, filt, seed64, sc[0], sc[1], ra[0], ra[1], flip, jit[0], jit[1], jit[2],
            jit[3], out_png(e, "random", name)))

    # colour adjustments with fixed factors (PIL ImageEnhance order: B, C, S, then hue)
    for name, b, c, s, h in [("prog444_120x90.jpg", 1.3, 1.0, 1.0, 0.0),
                             ("prog444_120x90.jpg", 0.6, 1.0, 1.0, 0.0),
                             ("grad_97x61.png", 1.0, 1.7, 1.0, 0.0),
                             ("grad_97x61.png", 1.0, 0.4, 1.0, 0.0),
                             ("noise_64x48.png", 1.0, 1.0, 0.0, 0.0),
                             ("noise_64x48.png", 1.0, 1.0, 1.8, 0.0),
                             ("grad_97x61.png", 1.0, 1.0, 1.0, 0.25),
                             ("prog444_120x90.jpg", 1.0, 1.0, 1.0, -0.4),
                             ("lossy_81x53.webp", 0.9, 1.2, 0.7, 0.05)]:
        b, c, s, h = f32(b), f32(c), f32(s), f32(h)
        img = rgb(name)
        if b != 1:
            img = ImageEnhance.Brightness(img).enhance(b)
        if c != 1:
            img = ImageEnhance.Contrast(img).enhance(c)
        if s != 1:
            img = ImageEnhance.Color(img).enhance(s)
        if h != 0:
            img = apply_op(img, 3, h)
        e = out_png(img, "adjust", name)
        lines.append("adjust %s %r %r %r %r %s 0" % (name, b, c, s, h, e))

    # normalisation: every byte value in every channel, CLIP and SigLIP mean/std
    ramp = np.zeros((16, 16, 3), np.uint8)
    v = np.arange(256, dtype=np.uint8).reshape(16, 16)
    ramp[..., 0], ramp[..., 1], ramp[..., 2] = v, 255 - v, (v.astype(np.int64) * 7 % 256)
    Image.fromarray(ramp).save(os.path.join(d, "ramp_16x16.png"))
    for tag, mean, std in [("clip", CLIP_MEAN, CLIP_STD), ("siglip", (0.5,) * 3, (0.5,) * 3)]:
        t = T.Normalize(mean, std)(T.ToTensor()(Image.fromarray(ramp)))
        t.numpy().astype("<f4").tofile(os.path.join(d, "norm_%s.f32" % tag))
        t.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tofile(
            os.path.join(d, "norm_%s.bf16" % tag))
        lines.append("norm ramp_16x16.png %s %s norm_%s.f32 norm_%s.bf16" % (
            " ".join(repr(f32(x)) for x in mean), " ".join(repr(f32(x)) for x in std), tag, tag))

    # the CLIP preset end to end: full decode (jpeg_scale 0) and DCT-scaled (1, Pillow's draft
    # picks the same 1/2). The expected floats are torchvision's ToTensor + Normalize of the
    # expected bytes, looked up in norm_clip.f32 (elementwise, so that is exact).
    clip = T.Compose([T.Resize(224, T.InterpolationMode.BICUBIC), T.CenterCrop(224)])
    e = out_png(clip(rgb("big_900x500.jpg")), "clip", "big_900x500.jpg")
    lines.append("clip big_900x500.jpg 0 %s 0" % e)
    img = Image.open(ins["big_900x500.jpg"])
    img.draft("RGB", (403, 224))
    e = out_png(clip(img.convert("RGB")), "clip", "big_900x500.jpg")
    lines.append("clip big_900x500.jpg 1 %s 0" % e)
    for seed, epoch, key in [(0, 0, ""), (1234, 3, "000123"), (2**63 + 5, 2**40, "shard-7/x.jpg")]:
        lines.append("seed %d %d %s %d" % (seed, epoch, key or "-", image_seed(seed, epoch, key)))

    with open(os.path.join(d, "cases.txt"), "w") as f:
        f.write("# generated by tools/image_reference.py (Pillow %s, torch %s, torchvision %s); "
                "do not edit\n" % (Image.__version__, torch.__version__,
                                   __import__("torchvision").__version__))
        f.write("\n".join(lines) + "\n")
    total = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print("%s: %d cases, %d files, %d bytes" % (d, len(lines), len(os.listdir(d)), total))


if __name__ == "__main__":
    main()
