#!/usr/bin/env python3
"""make_qlora_golden.py: float64 reference of QLoRA (a quantised frozen base + LoRA) on tiny golden
models, for tests/test_qlora.c (issue 5: quantised logits and LoRA gradients match a float64
reference that uses the same dequantised weights within 1e-4 relative).

Usage: /usr/bin/python3 tools/make_qlora_golden.py [--out tests/golden/qlora] [--check]

Needs numpy and torch; imports the model math from tools/make_reference.py and the bitsandbytes
NF4 scheme from tools/nf4_reference.py (bit-equal to src/model/nf4.c, see tests/test_nf4.c).
Deterministic: rerunning writes byte-identical files.

What the C loader does with st_model_load_ex(quantize = NF4 or INT8), reproduced here:
- quantised: the 7 projections of every layer (q, k, v, o, gate, up, down) and, unless
  keep_embeddings, model.embed_tokens.weight and (untied models) lm_head.weight; norms and biases
  stay float. The stored weight (F32/BF16/F16) is read as float32 first.
- NF4: the weight is ONE flattened row-major tensor of rows*cols elements in blocks of 64 (blocks
  span rows; a tail block is padded), double quantisation of absmax by default (8-bit codes over
  the signed dynamic map, blocks of 256, offset = mean of absmax); w' = bitsandbytes' dequant.
- INT8: per output row, scale = float32(absmax / 127), q = rint(float32(w * float32(1 / scale)))
  clamped to [-127, 127] (0 for an all-zero row), w' = float32(q * scale).
The forward, loss and gradients are then make_reference.py's float64 math over the dequantised
weights (float32 values upcast): the only differences an implementation should see come from its
float32 arithmetic.

Files: <out>/<model>_<quant>.safetensors, see <out>/README.md for the keys.
"""

import argparse
import math
import os
import sys

import numpy as np
import torch

sys.dont_write_bytecode = True  # no tools/__pycache__ from the imports below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_reference as mr  # noqa: E402
import nf4_reference as nf4  # noqa: E402

MODELS = ("llama2_f32", "qwen2_bias")  # untied F32 MHA; tied BF16 GQA with q/k/v biases
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# stored in full (the C test compares st_qweight_dequant_rows with it and reports the max error);
# every quantised tensor is also checked bit for bit through its FNV-1a hash
FULL = "model.layers.0.self_attn.k_proj.weight"
TOL = 1e-4          # the C test's tolerance (relative, see README)
TEETH = 10 * TOL    # every variant the test tells apart must differ by more than this


def quantised_names(cfg, keep_embeddings):
    names = ["model.layers.%d.%s.weight" % (l, p)
             for l in range(cfg["num_hidden_layers"]) for p in PROJ]
    if not keep_embeddings:
        names.append("model.embed_tokens.weight")
        if not cfg["tie_word_embeddings"]:
            names.append("lm_head.weight")
    return names


def dequant_nf4(w, double_quant):
    """w float32 (rows, cols) -> the float32 (rows, cols) bitsandbytes dequantises."""
    flat = np.ascontiguousarray(w, np.float32).reshape(-1)
    packed, absmax = nf4.nf4_quantize(flat)
    if double_quant:
        q, nested, offset = nf4.quantize_absmax(absmax)
        absmax = nf4.dequantize_absmax(q, nested, offset)
    return nf4.nf4_dequantize(packed, absmax, flat.size).reshape(w.shape)


def dequant_int8(w):
    w = np.ascontiguousarray(w, np.float32)
    am = np.abs(w).max(axis=1)
    scale = (am.astype(np.float64) / 127.0).astype(np.float32)  # = float32 division am / 127.0f
    inv = np.where(scale > 0, (1.0 / np.maximum(scale.astype(np.float64), 1e-300)), 0.0)
    inv = inv.astype(np.float32)
    x = nf4.fmul(w, inv[:, None])
    # rint: round half to even, as nearbyintf; through int8 as the C code stores it, so that a
    # value rounding to -0.0 dequantises to +0.0
    q = np.clip(np.rint(x), -127, 127).astype(np.int8).astype(np.float32)
    return nf4.fmul(q, scale[:, None])


def fnv1a64(a):
    h = 0xcbf29ce484222325
    for b in np.ascontiguousarray(a, np.float32).astype("<f4").tobytes():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def put_hashes(out, prefix, deq):
    """prefix<name> I64 [1]: FNV-1a 64 of the little-endian float32 bytes of each dequantised
    tensor (stored as the signed int64 with the same bits)."""
    for n, a in deq.items():
        h = fnv1a64(a)
        out[prefix + n] = torch.tensor([h - (1 << 64) if h >= 1 << 63 else h], dtype=torch.int64)


def quantise_model(W32, cfg, quant, double_quant=True, keep_embeddings=False):
    """W32: name -> float32 numpy. Returns (float64 torch dict for forward, {name: dequant f32})."""
    deq = {}
    for name in quantised_names(cfg, keep_embeddings):
        deq[name] = dequant_nf4(W32[name], double_quant) if quant == "nf4" else \
            dequant_int8(W32[name])
    W = {k: torch.from_numpy(deq.get(k, v).astype(np.float64)) for k, v in W32.items()}
    return W, deq


def row_rel(a, b):
    """max over positions of max_v |a - b| / max_v |b| (the C test's logits metric)."""
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return ((a - b).abs().max(-1).values / b.abs().max(-1).values).max().item()


def tensor_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def build(name, quant, golden_root, out_dir):
    spec = next(s for s in mr.VARIANTS if s["name"] == name)
    cfg = spec["cfg"]
    folder = os.path.join(golden_root, name)
    W_read = mr.load_model_weights(folder)
    W32 = {k: v.to(torch.float32).numpy() for k, v in W_read.items()}
    Wf = {k: v.to(torch.float64) for k, v in W_read.items()}

    # ids, targets and the LoRA init of the model's lora_golden (recomputed, then compared)
    lg = mr.load_safetensors(os.path.join(folder, "lora_golden.safetensors"))
    ids = lg["input_ids"].long()
    targets = mr.make_targets(ids)
    check(torch.equal(targets, lg["targets"].long()), "%s: targets differ from lora_golden" % name)
    modules = mr.lora_modules(cfg)
    AB32 = mr.init_lora(spec)
    for m, _, _ in modules:
        for j, which in enumerate("AB"):
            check(torch.equal(AB32[m][j], lg[mr.peft_key(m, which)]),
                  "%s: LoRA init differs from lora_golden (%s)" % (name, m))
    flat0 = [t.to(torch.float64) for t in mr.lora_flat(modules, AB32)]

    W, deq = quantise_model(W32, cfg, quant)
    logits = mr.forward(spec, W, ids)
    loss, lora_logits, grads = mr.lora_grads(spec, W, ids, targets, modules, flat0)

    # ---- teeth: each thing the C test checks must be visible at its tolerance ----
    notes = []
    base = mr.forward(spec, Wf, ids)
    d = row_rel(base, logits)
    check(d > TEETH, "%s %s: quantisation moves logits by only %.3g" % (name, quant, d))
    notes.append("vs float %.2g" % d)
    _, _, gf = mr.lora_grads(spec, Wf, ids, targets, modules, flat0)
    dg = max(tensor_rel(a, b) for a, b in zip(gf, grads))
    check(dg > TEETH, "%s %s: quantisation moves LoRA grads by only %.3g" % (name, quant, dg))
    notes.append("grads vs float %.2g" % dg)
    check(torch.isfinite(logits).all().item() and math.isfinite(loss.item()), "non-finite")
    for (m, _, _), gA, gB in zip(modules, grads[0::2], grads[1::2]):
        check(gA.abs().max().item() > 1e-6 and gB.abs().max().item() > 1e-6,
              "%s: zero LoRA grad in %s" % (name, m))
    # finite differences on a few elements (the autograd path is make_reference's, checked there)
    worst = 0.0
    for pi in (0, 3, len(flat0) - 1):
        for e in (0, flat0[pi].numel() // 2):
            h = 1e-4

            def f(delta):
                pp = list(flat0)
                q = flat0[pi].clone().reshape(-1)
                q[e] += delta
                pp[pi] = q.reshape(flat0[pi].shape)
                with torch.no_grad():
                    return mr.lora_loss(spec, W, ids, targets, modules, pp)[0].item()
            fd = (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h)
            ag = grads[pi].reshape(-1)[e].item()
            worst = max(worst, abs(fd - ag) / max(abs(ag), 1e-300))
    check(worst < 1e-6, "%s %s: finite differences disagree (%.3g)" % (name, quant, worst))

    out = {
        "input_ids": ids.to(torch.int32),
        "targets": targets.to(torch.int32),
        "logits": logits.to(torch.float32),
        "loss": loss.reshape(1).to(torch.float32),
        "lora_rank": torch.tensor([mr.LORA_R], dtype=torch.int32),
        "lora_alpha": torch.tensor([mr.LORA_ALPHA], dtype=torch.float32),
    }
    for i, (m, _, _) in enumerate(modules):
        for j, which in enumerate("AB"):
            k = mr.peft_key(m, which)
            out[k] = AB32[m][j]
            out["grad." + k] = grads[2 * i + j].to(torch.float32)
    put_hashes(out, "hash.", deq)
    out["deq." + FULL] = torch.from_numpy(deq[FULL].copy())

    # load-option variants: logits without LoRA
    variants = [("keepemb", dict(keep_embeddings=True))]
    if quant == "nf4":
        variants.append(("nodq", dict(double_quant=False)))
    for tag, kw in variants:
        Wv, deqv = quantise_model(W32, cfg, quant, **kw)
        lv = mr.forward(spec, Wv, ids)
        d = row_rel(lv, logits)
        check(d > TEETH, "%s %s: %s moves logits by only %.3g" % (name, quant, tag, d))
        notes.append("%s %.2g" % (tag, d))
        out[tag + ".logits"] = lv.to(torch.float32)
        if tag == "nodq":
            check(all(not np.array_equal(deqv[n], deq[n]) for n in deq),
                  "%s: double quantisation leaves a tensor unchanged" % name)
            put_hashes(out, "nodq.hash.", deqv)

    path = os.path.join(out_dir, "%s_%s.safetensors" % (name, quant))
    mr.save_safetensors(path, out)
    back = mr.load_safetensors(path)
    check(set(back) == set(out) and all(torch.equal(back[k], out[k]) for k in out),
          "%s: round trip" % path)
    werr = max(float(np.abs(deq[n].astype(np.float64) - W32[n]).max() / np.abs(W32[n]).max())
               for n in deq)
    print("%-11s %-4s loss %.6f (float %.6f) fd %.1g | weights max rel err %.3g | logits: %s | "
          "%d bytes" % (name, quant, loss.item(), mr.masked_ce(mr.forward(
              spec, Wf, ids, lora=(mr.LORA_SCALING, mr.lora_unflat(modules, flat0))),
              targets).item(), worst, werr, ", ".join(notes), os.path.getsize(path)))


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--golden", default=os.path.join(root, "tests", "golden"),
                    help="folder with the tiny models (make_reference.py's output)")
    ap.add_argument("--out", default=os.path.join(root, "tests", "golden", "qlora"))
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temporary folder and compare with --out byte for byte")
    args = ap.parse_args()
    torch.set_num_threads(1)  # fixed float64 reduction order: byte-identical reruns
    if args.check:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            for name in MODELS:
                for quant in ("nf4", "int8"):
                    build(name, quant, args.golden, tmp)
            bad = [f for f in sorted(os.listdir(tmp)) if not os.path.exists(
                os.path.join(args.out, f)) or open(os.path.join(tmp, f), "rb").read() !=
                open(os.path.join(args.out, f), "rb").read()]
        print("FAIL: differ from %s: %s" % (args.out, ", ".join(bad)) if bad else
              "ok: qlora goldens regenerate identically")
        return 1 if bad else 0
    os.makedirs(args.out, exist_ok=True)
    for name in MODELS:
        for quant in ("nf4", "int8"):
            build(name, quant, args.golden, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
