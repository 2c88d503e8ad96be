#!/usr/bin/python3
"""image_bench.py: image decode + augment throughput, streamtune vs Pillow + torchvision.

    /usr/bin/python3 bench/image_bench.py [--build build] [--images 200] [--rounds 5] [--seconds 3]

Both sides do the same work per image, one thread, from JPEG bytes already in memory: decode
(~500x375, quality 90, 4:2:0), RandomResizedCrop(224) (scale 0.08-1, ratio 3/4-4/3, bilinear),
horizontal flip with p = 0.5, ToTensor + Normalize (CLIP mean/std) to float32 CHW.
  streamtune: st_image_load + st_image_to_f32 (build/tests/test_image --bench DIR SECONDS):
              the JPEG is decoded only over the rows/columns the crop's resize reads, at a DCT
              scale when the crop allows (rarely, here: 1/2 needs a crop >= 448 px each way);
              and, as a second figure, st_image_decode of the whole image + st_image_apply,
              which decodes exactly what Pillow decodes.
  peer:       Image.open(BytesIO).convert("RGB") -> torchvision.transforms.Compose([...]),
              torch.set_num_threads(1).
The rounds interleave the three measurements (the machine is shared: each side sees the same
background load on average); the medians and the ratio of medians are printed.
"""
import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, ImageDraw

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def make_images(d, n, w=500, h=375):
    """Photo-like JPEGs: smooth random fields, shapes, texture noise; quality 90."""
    paths = []
    for i in range(n):
        rs = np.random.RandomState(1000 + i)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.zeros((h, w, 3), np.float32)
        for c in range(3):
            for _ in range(3):
                fx, fy, ph = rs.uniform(0.002, 0.03), rs.uniform(0.002, 0.03), rs.uniform(0, 6.3)
                img[..., c] += rs.uniform(20, 60) * np.sin(xx * fx + yy * fy + ph)
            img[..., c] += rs.uniform(60, 190)
        im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        dr = ImageDraw.Draw(im)
        for _ in range(12):
            x0, y0 = rs.randint(0, w), rs.randint(0, h)
            box = [x0, y0, x0 + rs.randint(10, 160), y0 + rs.randint(10, 120)]
            col = tuple(int(v) for v in rs.randint(0, 256, 3))
            (dr.ellipse if rs.rand() < 0.5 else dr.rectangle)(box, fill=col)
        a = np.array(im).astype(np.float32) + rs.normal(0, 7, (h, w, 3))
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
        p = os.path.join(d, "%04d.jpg" % i)
        im.save(p, quality=90)
        paths.append(p)
    return paths


def peer_rate(blobs, seconds):
    tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(CLIP_MEAN, CLIP_STD)])
    done, check = 0, 0.0
    t0 = time.perf_counter()
    while True:
        b = blobs[done % len(blobs)]
        x = tf(Image.open(io.BytesIO(b)).convert("RGB"))
        check += float(x[0, 4, 104])
        done += 1
        el = time.perf_counter() - t0
        if el >= seconds and done >= len(blobs):
            return done / el


def ours_rate(exe, d, seconds):
    out = subprocess.run([exe, "--bench", d, str(seconds)], check=True, capture_output=True,
                         text=True, env=dict(os.environ, OMP_NUM_THREADS="1")).stdout
    rates = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 3 and f[1] == "images/s":
            rates[f[0]] = float(f[2])
    return rates["streamtune"], rates["streamtune_decode_all"]


def main():
    ap = argparse.ArgumentParser()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--build", default=os.path.join(root, "build"))
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    exe = os.path.join(a.build, "tests", "test_image")
    if not os.path.exists(exe):
        sys.exit("no %s: build first (scripts/build)" % exe)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        paths = make_images(d, a.images)
        blobs = [open(p, "rb").read() for p in paths]
        print("images: %d JPEGs 500x375 q90, %.1f KB mean; %s; %s" % (
            len(blobs), sum(map(len, blobs)) / len(blobs) / 1024, platform.processor() or
            platform.machine(), time.strftime("%Y-%m-%d")))
        peer, ours, full = [], [], []
        for r in range(a.rounds):
            o, f = ours_rate(exe, d, a.seconds)
            p = peer_rate(blobs, a.seconds)
            ours.append(o), full.append(f), peer.append(p)
            print("round %d: streamtune %.1f img/s, streamtune whole decode %.1f img/s, "
                  "Pillow+torchvision %.1f img/s" % (r + 1, o, f, p), flush=True)
        mo, mf, mp = statistics.median(ours), statistics.median(full), statistics.median(peer)
        print("median images/s: streamtune %.1f, streamtune whole decode %.1f, "
              "Pillow+torchvision %.1f" % (mo, mf, mp))
        print("ratio vs Pillow+torchvision: %.2fx (st_image_load), %.2fx (whole decode + apply)"
              % (mo / mp, mf / mp))


if __name__ == "__main__":
    main()
