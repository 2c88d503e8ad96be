#!/usr/bin/env python3
"""test_bnb.py: checkpoints quantised by bitsandbytes (transformers' 4-bit NF4 serialisation) load
as stored and compute exactly what `--quantize nf4 --keep-embeddings` computes from the 16/32-bit
model (same codes, same absmax, same dequantisation); broken quant states give one-line errors
naming the tensor. The bitsandbytes layout is written by tools/make_bnb_checkpoint.py from the
float64 reference tools/nf4_reference.py (an implementation independent of the C quantiser).
Usage: test_bnb.py path/to/streamtune  (run by ctest; numpy from Debian python3-numpy)."""
import json
import os
import struct
import subprocess
import sys
import tempfile

EXE = sys.argv[1]
SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(SRC, "tests", "golden")
TOOL = os.path.join(SRC, "tools", "make_bnb_checkpoint.py")
# the tool needs numpy: Debian's python3 has it (python3-numpy), a pyenv python on PATH may not
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
failures = 0


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures += 1


def run(*args):
    p = subprocess.run([EXE, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def eval_loss(model, data, *flags):
    rc, out, err = run("eval", "--model", model, "--data", data, "--json", *flags)
    return json.loads(out)["loss"] if rc == 0 else err.strip()


def rewrite(path, edit):
    """Rewrite a safetensors file through edit(header, blobs) -> (header, blobs)."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    blobs = {k: raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
             for k, v in header.items() if k != "__metadata__"}
    header, blobs = edit(header, blobs)
    out, off = {"__metadata__": {"format": "pt"}}, 0
    for k in sorted(blobs):
        out[k] = dict(header[k], data_offsets=[off, off + len(blobs[k])])
        off += len(blobs[k])
    hj = json.dumps(out).encode()
    hj += b" " * ((-len(hj)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs[k] for k in sorted(blobs)))


def set_blob(h, b, name, blob):
    return dict(h, **{name: dict(h[name], shape=[len(blob)])}), dict(b, **{name: blob})


with tempfile.TemporaryDirectory() as t:
    data = os.path.join(t, "ids.jsonl")
    with open(data, "w") as f:
        f.write(json.dumps({"ids": [1, 5, 9, 20, 33, 12, 4, 7, 60, 2, 17, 3]}) + "\n")
        f.write(json.dumps({"ids": [1, 44, 2, 8, 8, 31, 50]}) + "\n")
    for name in ("llama2_f32", "qwen2_bias", "llama3_gqa_bf16"):
        src = os.path.join(GOLDEN, name)
        for dq in (True, False):
            dst = os.path.join(t, f"{name}-{dq}")
            p = subprocess.run([PY, TOOL, src, dst] + ([] if dq else ["--no-double-quant"]),
                               capture_output=True, text=True)
            if p.returncode:
                check(False, f"{name}: make_bnb_checkpoint.py: {p.stderr.strip()[-300:]}")
                continue
            flags = ["--quantize", "nf4", "--keep-embeddings"] + ([] if dq else ["--no-double-quant"])
            a, b, plain = eval_loss(dst, data), eval_loss(src, data, *flags), eval_loss(src, data)
            check(isinstance(a, float) and a == b and a != plain,
                  f"{name} (double quant {dq}): bitsandbytes checkpoint loss {a} == --quantize nf4 "
                  f"{b} (unquantised {plain})")
            rc, out, err = run("info", "--model", dst, "--json")
            check(rc == 0, f"{name}: info reads the bitsandbytes checkpoint")
            # generation goes through the KV-cache path: same tokens
            g1 = run("generate", "--model", dst, "--prompt-ids", "1,5,9", "--max-tokens", "8", "--json")
            g2 = run("generate", "--model", src, "--prompt-ids", "1,5,9", "--max-tokens", "8", "--json",
                     *flags)
            check(g1[0] == 0 and g1[1] == g2[1], f"{name}: generate from the checkpoint == --quantize")

    # broken checkpoints: one-line errors naming the tensor
    src = os.path.join(GOLDEN, "llama2_f32")
    q = "model.layers.0.self_attn.q_proj.weight"
    cases = [
        ("blocksize 128", lambda h, b: set_blob(h, b, q + ".quant_state.bitsandbytes__nf4",
                                                b[q + ".quant_state.bitsandbytes__nf4"].replace(
                                                    b'"blocksize": 64', b'"blocksize": 128')),
         "blocksize is not 64"),
        ("no absmax", lambda h, b: (h, {k: v for k, v in b.items() if k != q + ".absmax"}),
         q + ".absmax"),
        ("fp4", lambda h, b: (dict(h, **{q + ".quant_state.bitsandbytes__fp4": h[q + ".quant_state.bitsandbytes__nf4"]}),
                              {(k.replace("__nf4", "__fp4") if k == q + ".quant_state.bitsandbytes__nf4" else k): v
                               for k, v in b.items()}),
         "FP4"),
        ("short codes", lambda h, b: (dict(h, **{q: dict(h[q], shape=[len(b[q]) - 1, 1])}),
                                      dict(b, **{q: b[q][:-1]})),
         "U8 with"),
    ]
    for what, edit, needle in cases:
        dst = os.path.join(t, "broken-" + what.replace(" ", "-"))
        subprocess.run([PY, TOOL, src, dst], capture_output=True, check=True)
        rewrite(os.path.join(dst, "model.safetensors"), edit)
        rc, out, err = run("eval", "--model", dst, "--data", data)
        lines = err.strip().splitlines()
        check(rc != 0 and len(lines) == 1 and needle in lines[0] and "q_proj" in lines[0],
              f"{what}: one-line error naming the tensor: {err.strip()}")
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    dst = os.path.join(t, "gptq")
    os.makedirs(dst)
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
    rc, out, err = run("info", "--model", dst)
    check(rc != 0 and "gptq is not supported" in err, f"GPTQ config refused: {err.strip()}")

print(f"{failures} failures")
sys.exit(1 if failures else 0)
