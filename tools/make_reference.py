#!/usr/bin/env python3
"""Write tiny random Hugging Face-layout model folders plus golden logits.

Usage:  /usr/bin/python3 tools/make_reference.py [--out tests/golden]

Needs only PyTorch and NumPy (no transformers, no safetensors package): the
model math (Llama / Mistral / Qwen2 / Gemma decoder-only forward, HF semantics)
and the safetensors reader/writer are implemented here.

For every variant the folder <out>/<name>/ holds
  config.json                    HF-style config
  model.safetensors              weights in the variant's dtype (or a sharded
                                 set + model.safetensors.index.json)
  golden.safetensors             input_ids I32 [B,T], logits F32 [B,T,V],
                                 loss F32 [1]
The golden logits are computed in float64 from the weights *as stored*: the
weights are read back from the files just written and upcast to float64.

The output is deterministic: each variant uses its own fixed seed, JSON is
written with a fixed key order, and rerunning produces byte-identical files.
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch

B = 2   # batch size of the golden inputs
T = 11  # sequence length of the golden inputs

# --------------------------------------------------------------------------
# safetensors, by hand
# --------------------------------------------------------------------------

_DT_TO_STR = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
              torch.int32: "I32", torch.float64: "F64", torch.int64: "I64"}
_STR_TO_DT = {v: k for k, v in _DT_TO_STR.items()}
_DT_SIZE = {"F32": 4, "BF16": 2, "F16": 2, "I32": 4, "F64": 8, "I64": 8}


def _tensor_bytes(t):
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        arr = t.view(torch.int16).numpy()          # same bits, numpy has no bf16
    else:
        arr = t.numpy()
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(order="C")


def save_safetensors(path, tensors):
    """tensors: dict name -> torch tensor. Data laid out in sorted name order."""
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    off = 0
    for name in sorted(tensors):
        t = tensors[name]
        data = _tensor_bytes(t)
        assert len(data) == t.numel() * _DT_SIZE[_DT_TO_STR[t.dtype]]
        header[name] = {"dtype": _DT_TO_STR[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((-len(hj)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    return off


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        buf = raw[base + b:base + e]
        dt = info["dtype"]
        shape = info["shape"]
        if dt == "BF16":
            a = np.frombuffer(buf, dtype="<i2").copy()
            t = torch.from_numpy(a).view(torch.bfloat16)
        else:
            npdt = {"F32": "<f4", "F16": "<f2", "I32": "<i4", "F64": "<f8", "I64": "<i8"}[dt]
            t = torch.from_numpy(np.frombuffer(buf, dtype=npdt).copy())
        out[name] = t.reshape(shape)
    return out


def load_model_weights(folder):
    idx = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        out = {}
        for fn in sorted(set(wm.values())):
            part = load_safetensors(os.path.join(folder, fn))
            for k, v in part.items():
                assert wm[k] == fn, (k, fn)
                out[k] = v
        assert set(out) == set(wm)
        return out
    return load_safetensors(os.path.join(folder, "model.safetensors"))


# --------------------------------------------------------------------------
# model math (float64, HF semantics)
# --------------------------------------------------------------------------

def rope_inv_freq(cfg, scaling=True):
    """Returns (inv_freq [hd/2] float64, list of llama3 branch tags or None)."""
    hd = cfg["head_dim"]
    theta = float(cfg["rope_theta"])
    j = torch.arange(0, hd, 2, dtype=torch.float64)
    inv_freq = 1.0 / (theta ** (j / hd))
    rs = cfg.get("rope_scaling") if scaling else None
    branches = None
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "linear":
            inv_freq = inv_freq / float(rs["factor"])
        elif kind == "llama3":
            f = float(rs["factor"])
            lf = float(rs["low_freq_factor"])
            hf = float(rs["high_freq_factor"])
            L = float(rs["original_max_position_embeddings"])
            low_wl = L / lf
            high_wl = L / hf
            new = []
            branches = []
            for x in inv_freq.tolist():
                wl = 2 * math.pi / x
                if wl < high_wl:
                    new.append(x)
                    branches.append("keep")
                elif wl > low_wl:
                    new.append(x / f)
                    branches.append("divide")
                else:
                    s = (L / wl - lf) / (hf - lf)
                    new.append((1 - s) * x / f + s * x)
                    branches.append("smooth")
            inv_freq = torch.tensor(new, dtype=torch.float64)
        else:
            raise ValueError("unsupported rope_scaling %r" % (rs,))
    return inv_freq, branches


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_rope(x, cos, sin, interleaved=False):
    # x: [B, heads, T, hd]; cos/sin: [T, hd]
    if not interleaved:
        return x * cos + rotate_half(x) * sin
    # GPT-J style (pairs 2i,2i+1) -- only used for the "teeth" check
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[..., : x.shape[-1] // 2], sin[..., : x.shape[-1] // 2]
    o1 = x1 * c - x2 * s
    o2 = x2 * c + x1 * s
    return torch.stack((o1, o2), dim=-1).flatten(-2)


def rmsnorm(x, w, eps, one_plus):
    y = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps)
    return y * ((1.0 + w) if one_plus else w)


def act_fn(name, x):
    if name == "silu":
        return x * torch.sigmoid(x)
    if name == "gelu_tanh":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if name == "gelu_exact":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    raise ValueError(name)


def forward(spec, W, ids, **ov):
    """spec: resolved variant; W: name -> float64 tensor; ids: [B,T] int64.

    Overrides (only for the sanity "teeth" checks):
      no_window, no_rope_scaling, plain_norm (gemma w instead of 1+w),
      no_embed_scale, act, interleaved_rope, gqa_modulo, no_bias.
    """
    cfg = spec["cfg"]
    fam = spec["family"]
    D = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    hd = cfg["head_dim"]
    L = cfg["num_hidden_layers"]
    eps = cfg["rms_norm_eps"]
    gemma = fam == "gemma"
    one_plus = gemma and not ov.get("plain_norm", False)
    act = ov.get("act", "gelu_tanh" if gemma else "silu")
    window = None
    if fam == "mistral" and cfg.get("sliding_window") and not ov.get("no_window"):
        window = cfg["sliding_window"]
    if fam == "qwen2" and cfg.get("use_sliding_window") and not ov.get("no_window"):
        raise NotImplementedError("qwen2 sliding window layers not modelled")

    Bn, Tn = ids.shape
    h = W["model.embed_tokens.weight"][ids]  # [B,T,D]
    if gemma and not ov.get("no_embed_scale"):
        # HF: normalizer = tensor(hidden_size ** 0.5, dtype=hidden dtype)
        h = h * math.sqrt(D)

    inv_freq, _ = rope_inv_freq(cfg, scaling=not ov.get("no_rope_scaling"))
    pos = torch.arange(Tn, dtype=torch.float64)
    freqs = pos[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)  # [T, hd]
    cos, sin = emb.cos(), emb.sin()

    i = torch.arange(Tn)[:, None]
    j = torch.arange(Tn)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & ((i - j) < window)

    group = nh // nkv
    if ov.get("gqa_modulo"):
        kv_of = [hq % nkv for hq in range(nh)]
    else:
        kv_of = [hq // group for hq in range(nh)]

    for l in range(L):
        p = "model.layers.%d." % l
        x = rmsnorm(h, W[p + "input_layernorm.weight"], eps, one_plus)

        def proj(name):
            y = x @ W[p + "self_attn.%s.weight" % name].T
            bn = p + "self_attn.%s.bias" % name
            if bn in W and not ov.get("no_bias"):
                y = y + W[bn]
            return y

        q = proj("q_proj").view(Bn, Tn, nh, hd).transpose(1, 2)
        k = proj("k_proj").view(Bn, Tn, nkv, hd).transpose(1, 2)
        v = proj("v_proj").view(Bn, Tn, nkv, hd).transpose(1, 2)
        q = apply_rope(q, cos, sin, ov.get("interleaved_rope", False))
        k = apply_rope(k, cos, sin, ov.get("interleaved_rope", False))
        k = k[:, kv_of]
        v = v[:, kv_of]
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(~allowed, float("-inf"))
        a = torch.softmax(s, dim=-1) @ v  # [B,nh,T,hd]
        a = a.transpose(1, 2).reshape(Bn, Tn, nh * hd)
        h = h + a @ W[p + "self_attn.o_proj.weight"].T

        x = rmsnorm(h, W[p + "post_attention_layernorm.weight"], eps, one_plus)
        g = x @ W[p + "mlp.gate_proj.weight"].T
        u = x @ W[p + "mlp.up_proj.weight"].T
        h = h + (act_fn(act, g) * u) @ W[p + "mlp.down_proj.weight"].T

    x = rmsnorm(h, W["model.norm.weight"], eps, one_plus)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return x @ head.T  # [B,T,V]


def next_token_loss(logits, ids):
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    tgt = ids[:, 1:]
    nll = -lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return nll.mean()


# --------------------------------------------------------------------------
# variants
# --------------------------------------------------------------------------

def make_config(family, dtype, D, nh, nkv, hd, H, L, V, tied, theta, eps=1e-5,
                rope_scaling=None, sliding_window=None, max_pos=2048):
    torch_dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16",
                   torch.float16: "float16"}[dtype]
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
            "qwen2": "Qwen2ForCausalLM", "gemma": "GemmaForCausalLM"}[family]
    c = {
        "architectures": [arch],
        "model_type": family,
        "vocab_size": V,
        "hidden_size": D,
        "intermediate_size": H,
        "num_hidden_layers": L,
        "num_attention_heads": nh,
        "num_key_value_heads": nkv,
        "head_dim": hd,
        "hidden_act": "gelu" if family == "gemma" else "silu",
    }
    if family == "gemma":
        c["hidden_activation"] = "gelu_pytorch_tanh"
    c.update({
        "max_position_embeddings": max_pos,
        "initializer_range": 0.02,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": tied,
        "attention_bias": family == "qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": 2 if family == "gemma" else 1,
        "eos_token_id": 1 if family == "gemma" else 2,
    })
    if family == "gemma":
        c["pad_token_id"] = 0
    if family == "llama":
        c["mlp_bias"] = False
        c["pretraining_tp"] = 1
    if family == "mistral":
        c["sliding_window"] = sliding_window
    if family == "qwen2":
        c["use_sliding_window"] = False
        c["sliding_window"] = 4096
        c["max_window_layers"] = L
    c["torch_dtype"] = torch_dtype
    c["transformers_version"] = "4.44.0"
    c["use_cache"] = True
    return c


VARIANTS = [
    dict(name="llama2_f32", seed=1001, family="llama", dtype=torch.float32,
         cfg=make_config("llama", torch.float32, D=40, nh=4, nkv=4, hd=10, H=72, L=2,
                         V=67, tied=False, theta=10000.0, max_pos=4096),
         tests="Llama-2 baseline: MHA (nkv == nh), head_dim 10 (not a multiple of 16), "
               "rotate_half RoPE theta 1e4, SiLU MLP, separate lm_head, F32 weights."),
    dict(name="llama3_gqa_bf16", seed=1002, family="llama", dtype=torch.bfloat16,
         cfg=make_config("llama", torch.bfloat16, D=48, nh=6, nkv=2, hd=8, H=80, L=2,
                         V=91, tied=True, theta=500000.0, max_pos=2048,
                         rope_scaling={"factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 256,
                                       "rope_type": "llama3"}),
         tests="Llama-3: GQA 3:1 (query head h uses kv head h // 3), llama3 rope_scaling "
               "(all three branches: keep / smooth / divide occur), theta 5e5, "
               "tied embeddings (no lm_head.weight), BF16 weights."),
    dict(name="llama_linear_f16", seed=1003, family="llama", dtype=torch.float16,
         cfg=make_config("llama", torch.float16, D=32, nh=4, nkv=2, hd=8, H=64, L=2,
                         V=53, tied=False, theta=10000.0, max_pos=4096,
                         rope_scaling={"factor": 2.0, "rope_type": "linear"}),
         tests="Linear RoPE scaling (inv_freq / 2), GQA 2:1, F16 weights, untied."),
    dict(name="mistral_window", seed=1004, family="mistral", dtype=torch.float32,
         cfg=make_config("mistral", torch.float32, D=32, nh=4, nkv=1, hd=8, H=56, L=2,
                         V=61, tied=False, theta=1000000.0, sliding_window=4,
                         max_pos=32768),
         tests="Mistral sliding-window attention, window 4 < T: position i attends to "
               "j with j <= i and i - j < 4. MQA (nkv = 1), theta 1e6, F32."),
    dict(name="qwen2_bias", seed=1005, family="qwen2", dtype=torch.bfloat16,
         cfg=make_config("qwen2", torch.bfloat16, D=36, nh=6, nkv=2, hd=6, H=60, L=2,
                         V=71, tied=True, theta=1000000.0, eps=1e-6, max_pos=32768),
         tests="Qwen2: q/k/v projection biases (o_proj has none), head_dim 6, GQA 3:1, "
               "tied, eps 1e-6, use_sliding_window false (sliding_window in config must "
               "be ignored), BF16."),
    dict(name="gemma_geglu", seed=1006, family="gemma", dtype=torch.float32,
         cfg=make_config("gemma", torch.float32, D=40, nh=4, nkv=1, hd=12, H=64, L=2,
                         V=79, tied=True, theta=10000.0, eps=1e-6, max_pos=8192),
         tests="Gemma: embeddings scaled by sqrt(hidden_size), RMSNorm multiplies by "
               "(1 + w), GeGLU with tanh-approx GELU (hidden_activation "
               "gelu_pytorch_tanh), explicit head_dim 12 so nh*hd = 48 != hidden 40, "
               "MQA, tied, F32."),
    dict(name="smollm_sharded", seed=1007, family="llama", dtype=torch.float32,
         cfg=make_config("llama", torch.float32, D=32, nh=4, nkv=2, hd=8, H=64, L=3,
                         V=83, tied=True, theta=10000.0, max_pos=2048),
         sharded=True,
         tests="SmolLM-like Llama, 3 layers, tied, F32, weights sharded into "
               "model-00001-of-00002 / model-00002-of-00002 with "
               "model.safetensors.index.json (one layer is split across the two shards)."),
]


def init_weights(spec):
    cfg = spec["cfg"]
    g = torch.Generator().manual_seed(spec["seed"])
    D, nh, nkv, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    H, L, V = cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    gemma = spec["family"] == "gemma"

    def randn(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * std + mean

    def norm_w():
        return randn(D, std=0.1) if gemma else randn(D, std=0.1, mean=1.0)

    W = {}
    W["model.embed_tokens.weight"] = randn(V, D, std=0.3)
    for l in range(L):
        p = "model.layers.%d." % l
        W[p + "input_layernorm.weight"] = norm_w()
        W[p + "self_attn.q_proj.weight"] = randn(nh * hd, D, std=1.5 / math.sqrt(D))
        W[p + "self_attn.k_proj.weight"] = randn(nkv * hd, D, std=1.5 / math.sqrt(D))
        W[p + "self_attn.v_proj.weight"] = randn(nkv * hd, D, std=1.0 / math.sqrt(D))
        if cfg["attention_bias"]:
            W[p + "self_attn.q_proj.bias"] = randn(nh * hd, std=0.1)
            W[p + "self_attn.k_proj.bias"] = randn(nkv * hd, std=0.1)
            W[p + "self_attn.v_proj.bias"] = randn(nkv * hd, std=0.1)
        W[p + "self_attn.o_proj.weight"] = randn(D, nh * hd, std=0.7 / math.sqrt(nh * hd))
        W[p + "post_attention_layernorm.weight"] = norm_w()
        W[p + "mlp.gate_proj.weight"] = randn(H, D, std=1.0 / math.sqrt(D))
        W[p + "mlp.up_proj.weight"] = randn(H, D, std=1.0 / math.sqrt(D))
        W[p + "mlp.down_proj.weight"] = randn(D, H, std=0.7 / math.sqrt(H))
    W["model.norm.weight"] = norm_w()
    if not cfg["tie_word_embeddings"]:
        W["lm_head.weight"] = randn(V, D, std=0.3)
    ids = torch.randint(0, V, (B, T), generator=g, dtype=torch.int64)
    return {k: v.to(spec["dtype"]) for k, v in W.items()}, ids


def write_weights(folder, spec, W):
    if not spec.get("sharded"):
        save_safetensors(os.path.join(folder, "model.safetensors"), W)
        return ["model.safetensors"]
    names = sorted(W)
    sizes = [W[n].numel() * W[n].element_size() for n in names]
    total = sum(sizes)
    shards = [{}, {}]
    acc = 0
    for n, s in zip(names, sizes):
        shards[0 if acc + s / 2 <= total / 2 else 1][n] = W[n]
        acc += s
    assert shards[0] and shards[1]
    files = ["model-%05d-of-%05d.safetensors" % (i + 1, 2) for i in range(2)]
    wm = {}
    for fn, sh in zip(files, shards):
        save_safetensors(os.path.join(folder, fn), sh)
        for n in sh:
            wm[n] = fn
    index = {"metadata": {"total_size": total},
             "weight_map": {n: wm[n] for n in sorted(wm)}}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return files + ["model.safetensors.index.json"]


def maxdiff(a, b, sl=None):
    if sl is not None:
        a, b = a[sl], b[sl]
    return (a - b).abs().max().item()


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def build(spec, out_root):
    name = spec["name"]
    cfg = spec["cfg"]
    folder = os.path.join(out_root, name)
    os.makedirs(folder, exist_ok=True)
    # remove stale weight files from a previous layout
    for fn in os.listdir(folder):
        if fn.startswith("model") and (fn.endswith(".safetensors") or fn.endswith(".json")):
            os.remove(os.path.join(folder, fn))

    W_stored, ids = init_weights(spec)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    write_weights(folder, spec, W_stored)

    # read back what was written, upcast to float64
    W_read = load_model_weights(folder)
    check(set(W_read) == set(W_stored), "%s: tensor name mismatch" % name)
    for k in W_stored:
        check(W_read[k].dtype == spec["dtype"] and torch.equal(W_read[k], W_stored[k]),
              "%s: round trip failed for %s" % (name, k))
    W = {k: v.to(torch.float64) for k, v in W_read.items()}

    logits = forward(spec, W, ids)
    loss = next_token_loss(logits, ids)
    save_safetensors(os.path.join(folder, "golden.safetensors"), {
        "input_ids": ids.to(torch.int32),
        "logits": logits.to(torch.float32),
        "loss": loss.reshape(1).to(torch.float32),
    })
    gold = load_safetensors(os.path.join(folder, "golden.safetensors"))
    check(torch.equal(gold["input_ids"].long(), ids), "golden ids round trip")

    # ---- sanity checks ("teeth") ----
    V = cfg["vocab_size"]
    std = logits.std().item()
    check(torch.isfinite(logits).all().item(), "%s: non-finite logits" % name)
    check(std > 0.1, "%s: degenerate logits (std %.4g)" % (name, std))
    check(tuple(logits.shape) == (B, T, V), "%s: logits shape" % name)
    notes = []
    thr = 1e-2  # every alternative interpretation must move logits by more than this

    def differs(tag, **ov):
        d = maxdiff(logits, forward(spec, W, ids, **ov))
        check(d > thr, "%s: %s changes logits by only %.3g" % (name, tag, d))
        notes.append("%s %.3g" % (tag, d))

    fam = spec["family"]
    rs = cfg.get("rope_scaling")
    if rs:
        differs("no_rope_scaling", no_rope_scaling=True)
        if rs.get("rope_type") == "llama3":
            _, br = rope_inv_freq(cfg)
            check({"keep", "smooth", "divide"} <= set(br),
                  "%s: llama3 branches %s" % (name, br))
            notes.append("llama3 branches %s" % "/".join(br))
    if cfg["num_key_value_heads"] not in (1, cfg["num_attention_heads"]):
        differs("gqa_modulo", gqa_modulo=True)
    if fam == "mistral":
        alt = forward(spec, W, ids, no_window=True)
        W_ = cfg["sliding_window"]
        d_before = maxdiff(logits, alt, (slice(None), slice(0, W_)))
        d_after = maxdiff(logits, alt, (slice(None), slice(W_, None)))
        check(d_before < 1e-9, "%s: window changed positions < W (%.3g)" % (name, d_before))
        check(d_after > thr, "%s: window has no effect at positions >= W (%.3g)" % (name, d_after))
        notes.append("no_window pos<%d %.1g pos>=%d %.3g" % (W_, d_before, W_, d_after))
    if fam == "qwen2":
        differs("no_bias", no_bias=True)
    if fam == "gemma":
        differs("plain_norm(w not 1+w)", plain_norm=True)
        differs("no_embed_scale", no_embed_scale=True)
        d = maxdiff(logits, forward(spec, W, ids, act="gelu_exact"))
        check(d > 1e-5, "%s: tanh vs exact gelu indistinguishable (%.3g)" % (name, d))
        notes.append("gelu_exact %.3g" % d)
    if name == "llama2_f32":
        differs("interleaved_rope", interleaved_rope=True)

    files = sorted(os.listdir(folder))
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    print("%-17s %-5s V=%-3d logits std %.3f range [%.2f, %.2f] loss %.4f  %6d bytes  | %s"
          % (name, _DT_TO_STR[spec["dtype"]], V, std, logits.min().item(),
             logits.max().item(), loss.item(), size, "; ".join(notes)))


README = """# Golden reference models

Tiny random models in Hugging Face layout, with reference logits, written by
`tools/make_reference.py` (PyTorch, float64 math, no `transformers`).

Regenerate (deterministic, byte-identical on rerun with the same torch build):

    /usr/bin/python3 tools/make_reference.py --out tests/golden

## Layout of each `<variant>/` folder

- `config.json` -- HF-style config (`model_type`, `hidden_size`, `head_dim`, `rope_scaling`, ...).
- `model.safetensors` -- weights in the variant's dtype, HF tensor names
  (`model.embed_tokens.weight`, `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`,
  `model.layers.{i}.mlp.{gate,up,down}_proj.weight`, `model.layers.{i}.input_layernorm.weight`,
  `model.layers.{i}.post_attention_layernorm.weight`, `model.norm.weight`, and
  `lm_head.weight` only when `tie_word_embeddings` is false). `smollm_sharded` instead has
  `model-00001-of-00002.safetensors`, `model-00002-of-00002.safetensors` and
  `model.safetensors.index.json`.
- `golden.safetensors`:
  - `input_ids` I32 `[2, 11]` (B = 2, T = 11, uniform random in `[0, vocab_size)`, no BOS added),
  - `logits` F32 `[2, 11, vocab_size]`, positions 0..10, no padding, no KV cache,
  - `loss` F32 `[1]` = mean cross-entropy of `logits[:, t]` against `input_ids[:, t+1]`
    over all 2 * 10 predictions.

Logits are computed in float64 from the weights *as stored* (the BF16/F16 weights are
read back and upcast), so the only differences an implementation should see come from its
own arithmetic precision. The script asserts that the logits are not degenerate and
that each tested feature really changes the logits (see "teeth" below).

## Variants

| variant | family | dtype | what it tests |
|---|---|---|---|
"""

README_TAIL = """
## Math (HF semantics)

- `h = embed[ids] * (sqrt(hidden_size) if gemma else 1)`
- per layer: `h += o_proj(attn(rmsnorm(h, input_layernorm)))`,
  `h += down(act(gate(x)) * up(x))` with `x = rmsnorm(h, post_attention_layernorm)`
- `logits = rmsnorm(h, model.norm) @ lm_head^T` (`lm_head = embed_tokens` when tied)
- `rmsnorm(x, w) = x / sqrt(mean(x^2) + eps) * w`, gemma: `* (1 + w)`
- RoPE: HF `rotate_half` (first half / second half of each head, not interleaved pairs),
  `inv_freq[j] = theta^(-2j/head_dim)`, positions 0..T-1, applied to q and k after bias.
  `linear`: `inv_freq /= factor`. `llama3`: wavelength-banded scaling as in HF
  `_compute_llama3_parameters`.
- attention: `softmax(q k^T / sqrt(head_dim) + causal mask) v`, GQA maps query head `h`
  to kv head `h // (nh / nkv)`; mistral sliding window keeps `j <= i and i - j < window`.
- act: SiLU, or for gemma tanh-approximate GELU.

## Teeth

For each variant the generator recomputes the logits with a plausible mistake and asserts
they differ by more than 1e-2 (max abs): without rope scaling (llama3, linear), with
modulo instead of integer-division GQA head mapping, without the sliding window (and,
for mistral, that positions < 4 are identical), without qkv bias (qwen2), with `w`
instead of `1 + w` and without the embedding scale (gemma), with GPT-J interleaved RoPE
(llama2). Gemma tanh-GELU vs exact GELU differs only slightly (~1e-4..1e-3), so a
tolerance around 1e-4 is needed to catch that one.

## Note on llama3_gqa_bf16

`original_max_position_embeddings` is 256 (not a realistic 8192, nor 16): with
head_dim 8 and theta 5e5 the RoPE wavelengths are about 6.3, 167, 4443 and 118000
positions, so with low/high_freq_factor 1/4 the bands are `< 64` (keep), `64..256`
(smooth) and `> 256` (divide by factor 8), and each branch is hit once or more.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "golden"))
    ap.add_argument("--only", action="append", help="generate only this variant (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # keep float64 reductions in a fixed order
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for spec in VARIANTS:
        rows.append("| `%s` | %s | %s | %s |" % (spec["name"], spec["family"],
                                                 _DT_TO_STR[spec["dtype"]], spec["tests"]))
        if args.only and spec["name"] not in args.only:
            continue
        build(spec, args.out)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(README + "\n".join(rows) + "\n" + README_TAIL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
