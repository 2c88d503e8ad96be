#!/usr/bin/env python3
"""test_train.py: `streamtune train` as users run it.
- kill -9 at a random point (after a checkpoint), then --resume: every later step's loss equals an
  uninterrupted run's bit for bit, and so does the final adapter.
- --grad-checkpoint gives the same losses bit for bit.
- the adapter files follow PEFT's layout (tools/check_peft_adapter.py); fuse == base + adapter.
- --max-memory refuses with a message naming the knobs; bad flags are usage errors.
- (label slow) stories260K on the zed task from ../shared/data: validation loss drops.
Usage: test_train.py path/to/streamtune [fast|slow]"""
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time

EXE = sys.argv[1]
WHICH = sys.argv[2] if len(sys.argv) > 2 else "fast"
SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("ST_SHARED_DIR", os.path.join(SRC, "..", "shared"))
MODEL = os.path.join(SRC, "tests", "golden", "llama2_f32")
failures = 0


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures += 1


def run(*args, **kw):
    return subprocess.run([EXE, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)


def losses(out_dir):
    """step -> list of loss strings as written (every occurrence, in order)"""
    res = {}
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["kind"] == "train":
                res.setdefault(r["step"], []).append(repr(r["loss"]))
    return res


def make_data(path, n, seed, vocab=67):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            k = rng.randint(4, 24)
            f.write(json.dumps({"ids": [rng.randrange(vocab) for _ in range(k)]}) + "\n")


def fast():
    with tempfile.TemporaryDirectory() as t:
        data = os.path.join(t, "train.jsonl")
        val = os.path.join(t, "valid.jsonl")
        make_data(data, 97, 1)
        make_data(val, 13, 2)
        common = ["--model", MODEL, "--data", data, "--val-data", val, "--steps", "30",
                  "--batch-size", "4", "--grad-accum", "2", "--max-seq-len", "32", "--lr", "3e-3", "--rank", "4",
                  "--alpha", "8", "--dropout", "0.1", "--save-every", "4", "--eval-every", "10",
                  "--threads", "2", "--seed", "7", "--json"]
        a = os.path.join(t, "a")
        rc = run("train", *common, "--out", a)
        check(rc.returncode == 0, "uninterrupted run")
        if rc.returncode:
            print(rc.stderr)
            return
        la = losses(a)
        check(len(la) == 30 and all(len(v) == 1 for v in la.values()), "30 steps logged once each")
        ev = [json.loads(l) for l in open(os.path.join(a, "metrics.jsonl")) if '"eval"' in l]
        check(len(ev) >= 2 and ev[-1]["val_loss"] < ev[0]["val_loss"], "validation loss drops")
        # kill -9 after a random checkpoint, then resume
        b = os.path.join(t, "b")
        # from step 5: a kill right after step 4's log line can land before the first checkpoint
        # (--save-every 4) is written, and then there is nothing to resume
        kill_after = random.Random().randrange(5, 25)
        p = subprocess.Popen([EXE, "train", *common, "--out", b], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
        killed_at = None
        for line in p.stdout:
            r = json.loads(line)
            if r.get("kind") == "train" and r["step"] >= kill_after:
                p.send_signal(signal.SIGKILL)
                killed_at = r["step"]
                break
        p.wait()
        check(killed_at is not None and p.returncode == -signal.SIGKILL, f"killed with SIGKILL after step {killed_at}")
        leftovers = [d for d in os.listdir(os.path.join(b, "checkpoints")) if d.startswith(".tmp")]
        rc = run("train", *common, "--out", b, "--resume", b)
        check(rc.returncode == 0, "resume after kill -9")
        if rc.returncode:
            print(rc.stderr)
        lb = losses(b)
        same = all(lb.get(s) and all(x == la[s][0] for x in lb[s]) for s in la)
        check(same and set(lb) == set(la), "every step's loss after resume equals the uninterrupted run bit for bit")
        check(all(len(v) == 1 for v in lb.values()),
              "after resume, metrics.jsonl lists each step once (the killed run's later lines dropped)")
        fa = open(os.path.join(a, "adapter_model.safetensors"), "rb").read()
        fb = open(os.path.join(b, "adapter_model.safetensors"), "rb").read()
        check(fa == fb, "final adapter identical byte for byte")
        print(f"     (killed after step {killed_at}; leftover temp checkpoints {leftovers})")
        # rows in parallel (groups of rows on their own threads, the batch's dropout masks,
        # gradients added in group order): the same training as the batch on one thread, to
        # float summation order, F32 and BF16 (BF16 rounding of activations amplifies the
        # summation order's last bits: 1e-3); 3 threads do not divide a batch of 4: no groups
        # QLoRA too: each group dequantises the tiles it multiplies into its own view's scratch
        for compute, quant in (("f32", "none"), ("bf16", "none"), ("f32", "nf4"), ("bf16", "nf4")):
            base = list(common)
            i = base.index("--threads")
            del base[i:i + 2]
            res = {}
            for threads in ("1", "2", "3"):
                out = os.path.join(t, f"g{compute}{quant}{threads}")
                r = run("--verbose", "train", *base, "--threads", threads, "--steps", "12",
                        "--compute", compute, "--quantize", quant, "--out", out)
                res[threads] = (r.returncode, losses(out) if r.returncode == 0 else {}, r.stderr)
            (r1, l1, _), (r2, l2, e2), (r3, l3, e3) = res["1"], res["2"], res["3"]
            worst = max((abs(float(l1[k][0]) - float(l2[k][0])) / abs(float(l1[k][0])) for k in l1),
                        default=1.0) if l1 and set(l1) == set(l2) else 1.0
            print(f"     {compute} {quant}: threads 1 vs 2 (2 groups of 2 rows), largest relative loss difference {worst:.2e}")
            check(r1 == 0 and r2 == 0 and r3 == 0 and "rows in 2 groups of 2" in e2 and
                  "groups" not in e3 and worst < (1e-5 if compute == "f32" else 1e-3),
                  f"--compute {compute} --quantize {quant}: rows in parallel train as the batch on one thread")
        # gradient checkpointing: same numbers
        c = os.path.join(t, "c")
        rc = run("train", *common, "--out", c, "--grad-checkpoint")
        lc = losses(c)
        check(rc.returncode == 0 and all(lc[s][0] == la[s][0] for s in la),
              "--grad-checkpoint gives identical losses")
        # PEFT layout and fuse
        rc = subprocess.run([sys.executable, os.path.join(SRC, "tools", "check_peft_adapter.py"), a, MODEL],
                            capture_output=True, text=True)
        check(rc.returncode == 0, "adapter follows PEFT's layout: " + rc.stdout.strip())
        fused = os.path.join(t, "fused")
        rc = run("fuse", "--model", MODEL, "--adapter", a, "--out", fused)
        e1 = run("eval", "--model", MODEL, "--adapter", a, "--data", val, "--json")
        e2 = run("eval", "--model", fused, "--data", val, "--json")
        ok = rc.returncode == 0 and e1.returncode == 0 and e2.returncode == 0
        if ok:
            l1, l2 = json.loads(e1.stdout)["loss"], json.loads(e2.stdout)["loss"]
            ok = abs(l1 - l2) <= 1e-4 * abs(l1)
            print(f"     base+adapter loss {l1}, fused {l2}")
        check(ok, "fuse: fused model scores as base + adapter")
        rc = run("fuse", "--model", fused, "--adapter", a, "--out", fused + "/.")
        check(rc.returncode == 1 and "is the base model's folder" in rc.stderr,
              "fuse: --out over the base model is refused")
        # eval with the adapter scores rows in parallel (one per thread, the adapter's BLAS calls
        # on one thread each): the same loss on 1 and 3 threads, F32 and BF16
        rows = os.path.join(t, "rows.jsonl")
        make_data(rows, 12, 5)
        with open(rows, "a") as f:  # rows of up to 512 tokens: several, and one longer record
            rng = random.Random(9)
            for k in (400, 300, 700, 450, 200):
                f.write(json.dumps({"ids": [rng.randrange(67) for _ in range(k)]}) + "\n")
        for compute, quant in (("f32", "none"), ("bf16", "none"), ("f32", "nf4"), ("bf16", "nf4")):
            outs, side = set(), False
            for threads in ("1", "3"):
                e = run("--verbose", "--threads", threads, "eval", "--model", MODEL, "--adapter", a,
                        "--data", rows, "--json", "--compute", compute, "--quantize", quant)
                j = json.loads(e.stdout) if e.returncode == 0 else {}
                outs.add((j["loss"], j["ppl"], j["tokens"]) if j else "error: " + e.stderr)
                side = side or "eval: 3 rows at a time" in e.stderr
            check(len(outs) == 1 and isinstance(next(iter(outs)), tuple) and side,
                  f"eval --adapter --compute {compute} --quantize {quant}: 3 rows at a time on 3 "
                  f"threads, the same loss as on 1: {sorted(outs)}")
        # QLoRA: an NF4 base trains (differently from the F32 base), and fuse dequantises, merges
        # and writes BF16 that scores as the quantised base + adapter (to BF16 rounding)
        q = os.path.join(t, "q")
        rc = run("train", *common, "--out", q, "--quantize", "nf4")
        lq = losses(q)
        evq = [json.loads(l) for l in open(os.path.join(q, "metrics.jsonl")) if '"eval"' in l] if rc.returncode == 0 else []
        check(rc.returncode == 0 and len(lq) == 30 and lq[1] != la[1] and len(evq) >= 2
              and evq[-1]["val_loss"] < evq[0]["val_loss"], "QLoRA (--quantize nf4): trains, validation loss drops")
        qf = os.path.join(t, "qfused")
        rc = run("fuse", "--model", MODEL, "--adapter", q, "--out", qf, "--quantize", "nf4")
        e1 = run("eval", "--model", MODEL, "--quantize", "nf4", "--adapter", q, "--data", val, "--json")
        e2 = run("eval", "--model", qf, "--data", val, "--json")
        e3 = run("eval", "--model", MODEL, "--quantize", "nf4", "--data", val, "--json")  # no adapter
        ok = rc.returncode == 0 and e1.returncode == 0 and e2.returncode == 0 and e3.returncode == 0
        if ok:
            l1, l2, l3 = (json.loads(e.stdout)["loss"] for e in (e1, e2, e3))
            hdr = open(os.path.join(qf, "model.safetensors"), "rb").read()
            hdr = json.loads(hdr[8:8 + struct.unpack("<Q", hdr[:8])[0]])
            cfg = json.load(open(os.path.join(qf, "config.json")))
            ok = (abs(l1 - l2) <= 2e-3 * abs(l1) and abs(l3 - l1) > 10 * abs(l2 - l1)
                  and hdr["model.layers.0.self_attn.q_proj.weight"]["dtype"] == "BF16"
                  and cfg["torch_dtype"] == "bfloat16")
            print(f"     QLoRA: quantised base + adapter {l1}, fused (BF16) {l2}, quantised base alone {l3}")
        check(ok, "QLoRA fuse: BF16 model scoring as the NF4 base + adapter")
        rc = run("train", *common, "--out", os.path.join(t, "q8"), "--quantize", "int8", "--steps", "3")
        check(rc.returncode == 0 and len(losses(os.path.join(t, "q8"))) == 3, "--quantize int8 trains")
        # QLoRA with BF16 compute (the dequantised tiles in BF16 panels; q, k, v and gate, up
        # share one rounding of their input, and the LoRA term joins the tiles' GEMMs): within
        # BF16 rounding of the F32 QLoRA run, and the same run to float summation order without
        # the LoRA fusion (ST_NO_LORA_FUSION=1: separate passes)
        runs = {}
        for tag, env in (("fused", None), ("unfused", dict(os.environ, ST_NO_LORA_FUSION="1"))):
            d = os.path.join(t, "qbf-" + tag)
            rc = run("train", *common, "--out", d, "--quantize", "nf4", "--compute", "bf16", env=env)
            runs[tag] = losses(d) if rc.returncode == 0 else {}
        ok = len(runs["fused"]) == 30 and len(runs["unfused"]) == 30 and len(lq) == 30
        if ok:
            rq = max(abs(float(runs["fused"][s_][0]) - float(lq[s_][0])) / float(lq[s_][0]) for s_ in lq)
            rf = max(abs(float(runs["fused"][s_][0]) - float(runs["unfused"][s_][0])) / float(lq[s_][0])
                     for s_ in lq)
            ok = rq < 0.02 and rf < 1e-3
            print(f"     QLoRA --compute bf16: largest relative loss difference to F32 QLoRA {rq:.2e},"
                  f" fused against unfused LoRA {rf:.2e}")
        check(ok, "QLoRA --compute bf16 trains within 2% of F32 QLoRA, the LoRA fusion to 1e-3")
        # BF16 compute: the same run within BF16 rounding of the F32 one; the portable kernel
        # (ST_NO_AVX512BF16) gives the same losses to float summation order
        bd = os.path.join(t, "bf16")
        rc = run("train", *common, "--out", bd, "--compute", "bf16")
        lbf = losses(bd)
        ok = rc.returncode == 0 and len(lbf) == 30
        if ok:
            rel = max(abs(float(lbf[s_][0]) - float(la[s_][0])) / float(la[s_][0]) for s_ in la)
            ok = rel < 0.02 and lbf[1] != la[1]
            print(f"     --compute bf16: largest relative loss difference to F32 over 30 steps {rel:.2e}")
        check(ok, "--compute bf16 trains within 2% of the F32 losses")
        for name in ("llama2_f32", "qwen2_bias", "gemma_geglu"):
            g = os.path.join(SRC, "tests", "golden", name)
            e32 = run("eval", "--model", g, "--data", val, "--json")
            e16 = run("eval", "--model", g, "--data", val, "--json", "--compute", "bf16")
            env = dict(os.environ, ST_NO_AVX512BF16="1")
            e16p = subprocess.run([EXE, "eval", "--model", g, "--data", val, "--json", "--compute", "bf16"],
                                  capture_output=True, text=True, env=env)
            ok = e32.returncode == 0 and e16.returncode == 0 and e16p.returncode == 0
            if ok:
                a32, a16, a16p = (json.loads(e.stdout)["loss"] for e in (e32, e16, e16p))
                ok = abs(a16 - a32) < 5e-3 * a32 and abs(a16p - a16) < 1e-4 * a32
            check(ok, f"{name}: --compute bf16 eval loss near F32 (native and portable kernels)")
        # memory refusal and usage errors
        rc = run("train", *common, "--out", os.path.join(t, "d"), "--max-memory", "1K")
        check(rc.returncode == 1 and "--batch-size" in rc.stderr and "--grad-checkpoint" in rc.stderr,
              "--max-memory refusal names the knobs")
        rc = run("train", "--model", MODEL, "--data", data, "--out", os.path.join(t, "e"), "--dry-run", "--max-seq-len", "32")
        check(rc.returncode == 0 and "memory plan" in rc.stderr and not os.path.exists(os.path.join(t, "e", "adapter_model.safetensors")),
              "--dry-run prints the plan only")
        rc = run("train", "--model", MODEL, "--data", data, "--out", t, "--rank", "0")
        check(rc.returncode == 2 and "--rank" in rc.stderr, "bad --rank: usage error")
        rc = run("train", "--model", MODEL, "--data", data, "--out", t, "--targets", "q_proj,foo")
        check(rc.returncode == 2 and "foo" in rc.stderr, "unknown target named")
        rc = run("train", *common, "--out", os.path.join(t, "f"), "--resume", os.path.join(t, "nope"))
        check(rc.returncode == 1 and "nope" in rc.stderr, "--resume of a missing run named")
        bad = os.path.join(t, "bad.jsonl")
        open(bad, "w").write('{"ids": [1, 2, 3]}\n{"ids": [1, 999]}\n')
        rc = run("train", "--model", MODEL, "--data", bad, "--out", os.path.join(t, "g"), "--max-seq-len", "32")
        check(rc.returncode == 1 and "bad.jsonl: record 2 (byte offset 19)" in rc.stderr,
              "bad record named by file, record number and byte offset")


def mlx_folders():
    """The mlx-lm style folders of ../shared/data train as they are (text and completions)."""
    model = os.path.join(SHARED, "data", "models", "stories260K")
    for name in ["wikisql", "wwdc25_completions"]:
        d = os.path.join(SHARED, "data", "text", name)
        if not os.path.isdir(model) or not os.path.isdir(d):
            print(f"skip mlx folder {name}: ../shared/data is absent")
            continue
        with tempfile.TemporaryDirectory() as t:
            rc = run("train", "--model", model, "--data", d, "--out", t, "--steps", "3", "--batch-size", "2",
                     "--max-seq-len", "256", "--eval-every", "3", "--val-batches", "3", "--json")
            ev = [json.loads(l) for l in rc.stdout.splitlines() if '"eval"' in l]
            check(rc.returncode == 0 and len(ev) == 2 and ev[1]["val_loss"] < ev[0]["val_loss"],
                  f"mlx-lm folder {name} trains without conversion")


def slow():
    model = os.path.join(SHARED, "data", "models", "stories260K")
    task = os.path.join(SHARED, "data", "tasks", "zed")
    if not os.path.isdir(model) or not os.path.isdir(task):
        print(f"skip zed fine-tune: {model} or {task} is absent")
        return
    with tempfile.TemporaryDirectory() as t:
        t0 = time.time()
        rc = run("train", "--model", model, "--data", task, "--out", t, "--steps", "60", "--batch-size", "16", "--no-pack",
                 "--lr", "1e-3", "--schedule", "constant", "--warmup", "0", "--rank", "8", "--alpha", "16",
                 "--eval-every", "60", "--no-eos", "--json")
        ev = [json.loads(l) for l in rc.stdout.splitlines() if '"eval"' in l]
        ok = rc.returncode == 0 and len(ev) == 2
        if ok:
            base, tuned = ev[0]["val_loss"], ev[-1]["val_loss"]
            print(f"     zed: validation loss {base:.4f} -> {tuned:.4f} after 60 steps ({time.time() - t0:.0f}s)")
            # PyTorch reference: base 2.1066, 0.3958 after 50 steps
            ok = abs(base - 2.1066) < 1e-3 and tuned < 0.6
        check(ok, "stories260K on zed: validation loss drops from 2.1066 to < 0.6 in 60 steps")


def stalled_server():
    """Training over HTTP whose last steps need none of a shard that stalls forever: train exits
    when its steps are done, not after the stall's retries (about 5 minutes with the defaults:
    --stall-timeout 30, --retries 10). Loopback server: a.jsonl whole, b.jsonl headers then
    silence."""
    import http.server
    import threading

    recs = "".join(json.dumps({"ids": [1 + (i + k) % 60 for k in range(20)]}) + "\n" for i in range(40))
    stop = threading.Event()

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = recs.encode()
            if self.path.endswith("/b.jsonl"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                stop.wait(600)  # a server that never sends the body
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    try:
        with tempfile.TemporaryDirectory() as t:
            try:
                rc = run("train", "--model", MODEL, "--data", f"http://127.0.0.1:{port}/{{a,b}}.jsonl",
                         "--out", os.path.join(t, "o"), "--steps", "2", "--batch-size", "2",
                         "--max-seq-len", "32", "--no-shuffle", "--shuffle-shards", "1", "--threads", "1",
                         timeout=150)
                ok, what = rc.returncode == 0, rc.stderr.strip().splitlines()[-1:]
            except subprocess.TimeoutExpired:
                ok, what = False, "still waiting on the stalled shard after 150 s"
            check(ok, f"train over HTTP ends with its steps, not with a stalled shard's retries ({what})")
    finally:
        stop.set()
        srv.shutdown()


if WHICH == "slow":
    slow()
else:
    fast()
    mlx_folders()
    stalled_server()
print(f"{failures} failures")
sys.exit(1 if failures else 0)
