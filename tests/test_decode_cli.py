#!/usr/bin/env python3
"""test_decode_cli.py: `streamtune data cat|bench|preview` with decoding and mixing, as a user
runs them, on the datasets test_decode writes (JPEG/PNG/FLAC/WAV WebDataset shards, JSONL text,
a shard of bad samples):
- cat --decode --json: one line per sample with shapes and checksums; the same lines for 1 and 4
  decode threads; --state-out after N samples + --resume in a new process = the uninterrupted
  run (locally, and over S3 through the fault proxy when node/s3rver are installed);
- --on-bad-sample skip: the four bad samples counted and named by --stats; fail: exit 1 with a
  one-line message naming the sample;
- preview: a valid PNG (signature, IHDR size = the reported grid); bench --decode --json;
- --data NAME=URL:WEIGHT mixing: resume, rough weights, usage errors (exit 2).
Usage: test_decode_cli.py path/to/streamtune path/to/test_decode"""
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib

EXE, GEN = sys.argv[1], sys.argv[2]
SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
failures = 0


def run(*args, env=None):
    p = subprocess.run([EXE, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    return p.returncode, p.stdout, p.stderr


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures += 1


def lines(out):
    return [json.loads(l) for l in out.splitlines() if l.strip()]


def signature(rec):
    """(key, source, every field's checksum) of one decoded sample line"""
    fields = tuple(sorted((k, v["fnv1a64"]) for k, v in rec.items() if not k.startswith("__")))
    return (rec["__key__"], rec.get("__source__"), fields)


AUG = ["--decode", "--shuffle", "--seed", "5", "--shuffle-buffer", "4", "--random-crop", "--flip", "0.5",
       "--color-jitter", "0.2,0.2,0.2,0.05", "--image-size", "32", "--audio-gain-db", "-6,6",
       "--time-masks", "2,40", "--json"]


def local(t):
    img, txt, bad = (os.path.join(t, d) for d in ("img", "txt", "bad/bad.tar"))
    rc, out, err = run("data", "cat", img, *AUG, "--decode-threads", "1")
    full = lines(out) if rc == 0 else []
    check(rc == 0 and len(full) == 144 and len({r["__key__"] for r in full}) == 144,
          f"cat --decode: 144 distinct samples ({len(full)}) {err[-300:]}")
    shapes = {tuple(v["shape"]) for r in full for k, v in r.items() if isinstance(v, dict) and "shape" in v}
    check(shapes == {(3, 32, 32), (80, 3000)}, f"tensor shapes {sorted(shapes)}")
    rc, out4, _ = run("data", "cat", img, *AUG, "--decode-threads", "4", "--decode-ahead", "7")
    check(rc == 0 and out4 == out, "the same lines (keys, shapes, checksums) with 4 decode threads")
    # resume in a new process, at several points
    st = os.path.join(t, "st.json")
    for k in (1, 50, 143):
        rc1, a, _ = run("data", "cat", img, *AUG, "--limit", str(k), "--state-out", st)
        rc2, b, e2 = run("data", "cat", img, *AUG, "--resume", st, "--decode-threads", "3")
        got = [signature(r) for r in lines(a) + lines(b)]
        check(rc1 == 0 and rc2 == 0 and got == [signature(r) for r in full],
              f"--state-out after {k} + --resume = the uninterrupted run {e2[-200:]}")
    # bad samples
    rc, out, err = run("data", "cat", bad, "--decode", "--on-bad-sample", "skip", "--stats", "--json")
    stats = [json.loads(l) for l in err.splitlines() if l.startswith("{")]
    ok = rc == 0 and len(lines(out)) == 5 and stats
    if ok:
        s = stats[-1]
        keys = [x["key"] for x in s["skipped_samples"]]
        ok = (s["skipped"] == 4 and s["skipped_limit"] == 1 and s["skipped_corrupt"] == 3 and
              keys == ["bad-huge", "bad-trunc", "bad-crc", "bad-empty"] and s["decoded"] == 5)
    check(ok, "--on-bad-sample skip: 5 delivered, 4 skipped, counted by class and named in --stats")
    # --epochs 3: every epoch is read, also one that ends at once because all its samples were
    # skipped (two ENDs in a row are not the end of the stream)
    only_bad = os.path.join(t, "only_bad.tar")
    with tarfile.open(only_bad, "w") as tf:
        blob = b"\xff\xd8\xff\xe0 not a jpeg"
        ti = tarfile.TarInfo("k1.jpg")
        ti.size = len(blob)
        tf.addfile(ti, io.BytesIO(blob))
    rc, out, err = run("data", "cat", only_bad, "--decode", "--on-bad-sample", "skip", "--epochs", "3",
                       "--stats", "--json")
    stats = [json.loads(l) for l in err.splitlines() if l.startswith("{")]
    check(rc == 0 and stats and stats[-1]["skipped"] == 3 and stats[-1]["decoded"] == 0,
          "--epochs 3 with every sample skipped: all three epochs read")
    rc, out, err = run("data", "cat", bad, "--decode")
    msg = [l for l in err.splitlines() if l.startswith("streamtune: error:")]
    check(rc == 1 and len(lines(out)) == 1 and len(msg) == 1 and "bad-huge.jpg" in msg[0] and
          "30000x30000" in msg[0], f"--on-bad-sample fail (default): exit 1, one line naming the sample: {msg}")
    rc, out, err = run("data", "cat", bad, "--decode", "--on-bad-sample", "skip", "--stats")
    check(rc == 0 and "skipped 4 bad samples" in err and "bad-crc: " in err and "CRC" in err,
          "--stats (text) names the skipped samples")
    # preview
    png = os.path.join(t, "grid.png")
    rc, out, err = run("data", "preview", img, "--out", png, "--n", "6", "--random-crop", "--flip", "0.5",
                       "--transform", "clip", "--json")
    ok = rc == 0 and os.path.isfile(png)
    if ok:
        info = json.loads(out)
        data = open(png, "rb").read()
        w, h = struct.unpack(">II", data[16:24])
        ihdr_ok = data[12:16] == b"IHDR" and struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])
        ok = (data[:8] == b"\x89PNG\r\n\x1a\n" and ihdr_ok and (w, h) == (info["width"], info["height"]) and
              info["tiles"] == 6 and w == 3 * 224 + 4 * 4 and h == 2 * 224 + 3 * 4 and data[-8:-4] == b"IEND")
        print(f"     preview: {w}x{h}, {info['images']} images, {info['audio']} log-mel pictures")
    check(ok, f"data preview writes a valid PNG (signature, IHDR with CRC, size) {err[-200:]}")
    rc, out, err = run("data", "preview", img)
    check(rc == 2 and "--out" in err, "data preview without --out is a usage error")
    # bench
    rc, out, err = run("data", "bench", img, "--decode", "--image-size", "64", "--json")
    ok = rc == 0
    if ok:
        b = json.loads(out)
        ok = b["decoded"] == 144 and b["samples_per_s"] > 0 and b["images"] + b["audio"] == 144
        print(f"     bench --decode: {b['samples_per_s']:.0f} samples/s, {b['decode_s']:.2f} decode thread-s")
    check(ok, "data bench --decode --json reports decoded samples/s")
    rc, out, err = run("data", "bench", img, "--decode")
    check(rc == 0 and "decoded samples" in out, "data bench --decode (text)")
    # mixing
    mix = ["--data", f"img={img}:0.3", "--data", f"txt={txt}:0.7", "--image-size", "32", "--shuffle",
           "--seed", "3", "--json"]
    rc, out, err = run("data", "cat", *mix, "--limit", "300")
    full = lines(out)
    n_img = sum(r["__source__"] == "img" for r in full)
    check(rc == 0 and len(full) == 300 and 0.2 < n_img / 300 < 0.4,
          f"--data mix: 300 samples, {n_img} from img (weight 0.3) {err[-200:]}")
    rc1, a, _ = run("data", "cat", *mix, "--limit", "120", "--state-out", st)
    rc2, b, e2 = run("data", "cat", *mix, "--limit", "180", "--resume", st)
    check(rc1 == 0 and rc2 == 0 and [signature(r) for r in lines(a) + lines(b)] == [signature(r) for r in full],
          f"--data mix: --state-out + --resume = the uninterrupted run {e2[-200:]}")
    rc, out, err = run("data", "cat", "--data", f"img={img}:0.3", "--data", f"other={txt}:0.7", "--resume", st,
                       "--limit", "1")
    check(rc == 1 and "other sources" in err, "a mix state is refused by other sources")
    rc, out, err = run("data", "cat", "--data", f"img={img}:0.5", "--data", f"t={txt}:0.5", "--mix-stop", "all",
                       "--image-size", "32", "--json")
    got = lines(out)
    check(rc == 0 and len({r["__key__"] for r in got if r["__source__"] == "img"}) == 144 and
          len({r["__key__"] for r in got if r["__source__"] == "t"}) == 300,
          "--mix-stop all: the mix epoch holds every sample of both sources")
    for args, needle in ((["--data", "x=nowhere"], "NAME=URL:WEIGHT"), (["--data", "x=/a:-1"], "weight"),
                         (["--data", f"img={img}:1", img], "not both"),
                         (["--data", f"img={img}:1", "--data-memory", "zz=1M"], "no --data source"),
                         (["--data", f"img={img}:1", "--mix-stop", "sometimes"], "first or all"),
                         ([img, "--decode", "--on-bad-sample", "maybe"], "skip or fail"),
                         ([img, "--decode", "--transform", "vit"], "clip")):
        rc, out, err = run("data", "cat", *args)
        check(rc == 2 and needle in err, f"usage error: {' '.join(args[-2:])} -> exit 2 mentioning '{needle}'")


def start(script, *args):
    p = subprocess.Popen(["node", "--openssl-legacy-provider", os.path.join(SRC, "tests", "servers", script), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    if not line.startswith("PORT "):
        p.kill()
        raise RuntimeError(f"{script} did not start")
    return p, int(line.split()[1])


def s3(t):
    if subprocess.run(["node", "--version"], capture_output=True).returncode != 0 or \
       not os.path.isdir(os.path.join(SRC, "tools", "node_modules", "@20minutes", "s3rver")):
        print("skip s3: node or tools/node_modules/@20minutes/s3rver is absent (run scripts/setup)")
        return
    env = dict(os.environ, AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER", AWS_REGION="us-east-1")
    procs = []
    try:
        srv, port = start("s3rver.js", "--bucket", "mmcli")
        procs.append(srv)
        for name in sorted(os.listdir(os.path.join(t, "img"))):
            r = subprocess.run(["curl", "-sf", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "S3RVER:S3RVER",
                                "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-T", os.path.join(t, "img", name),
                                f"http://127.0.0.1:{port}/mmcli/img/{name}"])
            check(r.returncode == 0, f"upload {name}")
        px, pport = start("faultproxy.js", "--target", f"127.0.0.1:{port}", "--fault-rate", "0.3", "--seed", "3",
                          "--stall-ms", "1500", "--retry-after", "0")
        procs.append(px)
        net = ["--retries", "12", "--backoff", "0.02", "--backoff-max", "0.2", "--stall-timeout", "1",
               "--part-size", "16K"]
        direct = ["data", "cat", "s3://mmcli/img/", "--endpoint-url", f"http://127.0.0.1:{port}", *AUG]
        faulty = ["data", "cat", "s3://mmcli/img/", "--endpoint-url", f"http://127.0.0.1:{pport}", *AUG, *net]
        p = subprocess.run([EXE, *direct], capture_output=True, text=True, env=env)
        full = [signature(r) for r in lines(p.stdout)]
        check(p.returncode == 0 and len(full) == 144, f"s3: decoded 144 samples {p.stderr[-300:]}")
        st = os.path.join(t, "s3state.json")
        p1 = subprocess.run([EXE, *faulty, "--limit", "61", "--state-out", st, "--stats"], capture_output=True,
                            text=True, env=env)
        p2 = subprocess.run([EXE, *faulty, "--resume", st, "--stats"], capture_output=True, text=True, env=env)
        got = [signature(r) for r in lines(p1.stdout) + lines(p2.stdout)]
        retries = sum(json.loads(l)["stream"]["retries"] for l in (p1.stderr + p2.stderr).splitlines()
                      if l.startswith("{"))
        ok = p1.returncode == 0 and p2.returncode == 0 and got == full and retries > 0
        check(ok, f"s3 + 30% faults: stop after 61, resume in a new process = the fault-free run "
                  f"({retries} retries) {'' if ok else p1.stderr[-300:] + p2.stderr[-300:]}")
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main():
    with tempfile.TemporaryDirectory() as t:
        r = subprocess.run([GEN, "--write-dataset", t])
        if r.returncode != 0:
            check(False, "test_decode --write-dataset")
            return
        local(t)
        s3(t)


main()
print(f"{failures} failures")
sys.exit(1 if failures else 0)
