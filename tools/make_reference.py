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
  lora_golden.safetensors        LoRA training reference: initial LoRA A/B (PEFT
                                 names), masked targets, loss, gradients, and a
                                 10-step clipped-AdamW trajectory (see README)
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


def forward(spec, W, ids, lora=None, **ov):
    """spec: resolved variant; W: name -> float64 tensor; ids: [B,T] int64.

    lora: None, or (scaling, {module: (A [r,in], B [out,r])}) with module the HF
    module path, e.g. "model.layers.0.self_attn.q_proj"; adds PEFT's
    scaling * (x A^T) B^T to the output of that linear (after its bias).

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

    def lora_add(y, xin, module):
        if lora is None:
            return y
        scaling, AB = lora
        A, Bm = AB[module]
        return y + scaling * ((xin @ A.T) @ Bm.T)

    for l in range(L):
        p = "model.layers.%d." % l
        x = rmsnorm(h, W[p + "input_layernorm.weight"], eps, one_plus)

        def proj(name):
            y = x @ W[p + "self_attn.%s.weight" % name].T
            bn = p + "self_attn.%s.bias" % name
            if bn in W and not ov.get("no_bias"):
                y = y + W[bn]
            return lora_add(y, x, p + "self_attn." + name)

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
        h = h + lora_add(a @ W[p + "self_attn.o_proj.weight"].T, a, p + "self_attn.o_proj")

        x = rmsnorm(h, W[p + "post_attention_layernorm.weight"], eps, one_plus)
        g = lora_add(x @ W[p + "mlp.gate_proj.weight"].T, x, p + "mlp.gate_proj")
        u = lora_add(x @ W[p + "mlp.up_proj.weight"].T, x, p + "mlp.up_proj")
        m = act_fn(act, g) * u
        h = h + lora_add(m @ W[p + "mlp.down_proj.weight"].T, m, p + "mlp.down_proj")

    x = rmsnorm(h, W["model.norm.weight"], eps, one_plus)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return x @ head.T  # [B,T,V]


def next_token_loss(logits, ids):
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    tgt = ids[:, 1:]
    nll = -lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return nll.mean()


# --------------------------------------------------------------------------
# LoRA training reference (lora_golden.safetensors)
# --------------------------------------------------------------------------

LORA_R = 4
LORA_ALPHA = 8.0
LORA_SCALING = LORA_ALPHA / LORA_R        # PEFT: lora_alpha / r (not rsLoRA)
LORA_B_STD = 0.03                         # initial B ~ N(0, 0.03^2) (nonzero on purpose)
LORA_SEED_OFFSET = 5000                   # LoRA generator seed = variant seed + 5000
LORA_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
IGNORE_INDEX = -100
PROMPT_MASK = 3   # targets[0, :3] = -100 (a "prompt")
PAD_MASK = 2      # targets[1, T-2:] = -100 (padding-like)
ADAMW_LR = 1e-2
ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8
ADAMW_WD = 0.01
MAX_GRAD_NORM = 1.0
TRAJ_STEPS = 10


def lora_modules(cfg):
    """[(HF module path, in_features, out_features)] in generation order."""
    D, nh, nkv, hd = (cfg["hidden_size"], cfg["num_attention_heads"],
                      cfg["num_key_value_heads"], cfg["head_dim"])
    H = cfg["intermediate_size"]
    dims = {"self_attn.q_proj": (D, nh * hd), "self_attn.k_proj": (D, nkv * hd),
            "self_attn.v_proj": (D, nkv * hd), "self_attn.o_proj": (nh * hd, D),
            "mlp.gate_proj": (D, H), "mlp.up_proj": (D, H), "mlp.down_proj": (H, D)}
    out = []
    for l in range(cfg["num_hidden_layers"]):
        for m in LORA_MODULES:
            out.append(("model.layers.%d.%s" % (l, m),) + dims[m])
    return out


def peft_key(module, which):
    return "base_model.model.%s.lora_%s.weight" % (module, which)


def init_lora(spec):
    """module -> (A F32 [r, in], B F32 [out, r]); own generator, so the base
    weights / ids of the variant do not depend on it."""
    g = torch.Generator().manual_seed(spec["seed"] + LORA_SEED_OFFSET)
    AB = {}
    for module, fin, fout in lora_modules(spec["cfg"]):
        bound = 1.0 / math.sqrt(fin)
        A = (torch.rand(LORA_R, fin, generator=g, dtype=torch.float64) * 2.0 - 1.0) * bound
        Bm = torch.randn(fout, LORA_R, generator=g, dtype=torch.float64) * LORA_B_STD
        AB[module] = (A.to(torch.float32), Bm.to(torch.float32))
    return AB


def make_targets(ids):
    tg = torch.full_like(ids, IGNORE_INDEX)
    tg[:, :-1] = ids[:, 1:]
    tg[0, :PROMPT_MASK] = IGNORE_INDEX
    tg[1, ids.shape[1] - PAD_MASK:] = IGNORE_INDEX
    return tg


def masked_ce(logits, targets):
    """sum of CE over targets != -100, divided by their count (HF/PyTorch
    cross_entropy(ignore_index=-100, reduction="mean") over the flattened batch)."""
    valid = targets != IGNORE_INDEX
    lp = torch.log_softmax(logits, dim=-1)
    nll = -lp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return nll[valid].sum() / valid.sum().to(logits.dtype)


def lora_flat(modules, AB):
    """Flat parameter list in a fixed order: per module A then B."""
    out = []
    for m, _, _ in modules:
        out.extend(AB[m])
    return out


def lora_unflat(modules, flat):
    return {m: (flat[2 * i], flat[2 * i + 1]) for i, (m, _, _) in enumerate(modules)}


def lora_loss(spec, W, ids, targets, modules, flat, scaling=LORA_SCALING):
    logits = forward(spec, W, ids, lora=(scaling, lora_unflat(modules, flat)))
    return masked_ce(logits, targets), logits


def lora_grads(spec, W, ids, targets, modules, flat):
    leaves = [p.detach().clone().requires_grad_(True) for p in flat]
    loss, logits = lora_loss(spec, W, ids, targets, modules, leaves)
    grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), logits.detach(), [g.detach() for g in grads]


def clip_by_global_norm(grads, max_norm):
    """torch.nn.utils.clip_grad_norm_ (norm_type 2): returns (total_norm, grads)."""
    total = torch.norm(torch.stack([torch.norm(g, 2.0) for g in grads]), 2.0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return total, [g * coef for g in grads]


def adamw_step(params, grads, exp_avg, exp_avg_sq, step, wd=ADAMW_WD):
    """torch 1.13 torch.optim.AdamW, single-tensor path, amsgrad off, in place."""
    b1, b2 = ADAMW_BETAS
    bc1 = 1 - b1 ** step
    bc2 = 1 - b2 ** step
    step_size = ADAMW_LR / bc1
    bc2_sqrt = math.sqrt(bc2)
    for p, g, m, v in zip(params, grads, exp_avg, exp_avg_sq):
        p.mul_(1 - ADAMW_LR * wd)
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / bc2_sqrt).add_(ADAMW_EPS)
        p.addcdiv_(m, denom, value=-step_size)


def lora_trajectory(spec, W, ids, targets, modules, flat0, clip=True, wd=ADAMW_WD,
                    coupled_l2=False, torch_check=False):
    """TRAJ_STEPS steps of (loss, grads, clip, AdamW) on the same batch, float64.
    Returns (final params, losses, pre-clip grad norms, number of clipped steps).
    The options only exist for the teeth checks; torch_check replays every step with
    torch.nn.utils.clip_grad_norm_ + torch.optim.AdamW and asserts agreement."""
    P = [t.clone() for t in flat0]
    m1 = [torch.zeros_like(t) for t in P]
    m2 = [torch.zeros_like(t) for t in P]
    if torch_check:
        tP = [t.clone().requires_grad_(True) for t in flat0]
        opt = torch.optim.AdamW(tP, lr=ADAMW_LR, betas=ADAMW_BETAS, eps=ADAMW_EPS,
                                weight_decay=ADAMW_WD)
    losses, norms = [], []
    clipped = 0
    for step in range(1, TRAJ_STEPS + 1):
        l_k, _, g_k = lora_grads(spec, W, ids, targets, modules, P)
        if coupled_l2:  # plain Adam + L2 in the gradient (the wrong "weight decay")
            g_k = [g + wd * p for g, p in zip(g_k, P)]
        total = torch.norm(torch.stack([torch.norm(g, 2.0) for g in g_k]), 2.0)
        if clip:
            total, g_k = clip_by_global_norm(g_k, MAX_GRAD_NORM)
            clipped += int(MAX_GRAD_NORM / (total.item() + 1e-6) < 1.0)
        losses.append(l_k.item())
        norms.append(total.item())
        adamw_step(P, g_k, m1, m2, step, wd=0.0 if coupled_l2 else wd)
        if torch_check:
            opt.zero_grad()
            tl, _ = lora_loss(spec, W, ids, targets, modules, tP)
            tl.backward()
            tn = torch.nn.utils.clip_grad_norm_(tP, MAX_GRAD_NORM)
            opt.step()
            check(abs(tl.item() - l_k.item()) <= 1e-12 * abs(l_k.item()),
                  "%s: torch replay loss" % spec["name"])
            check(abs(tn.item() - total.item()) <= 1e-12 * total.item(),
                  "%s: clip_grad_norm_ total norm differs" % spec["name"])
            dp = max(maxdiff(a, b.detach()) for a, b in zip(P, tP))
            check(dp < 1e-12, "%s: hand AdamW differs from torch.optim.AdamW (%.3g)"
                  % (spec["name"], dp))
    return P, losses, norms, clipped


def build_lora(spec, folder, W, ids, base_logits):
    """Writes <folder>/lora_golden.safetensors; returns a summary string."""
    name = spec["name"]
    cfg = spec["cfg"]
    modules = lora_modules(cfg)
    AB32 = init_lora(spec)
    flat0 = [t.to(torch.float64) for t in lora_flat(modules, AB32)]  # F32 values, upcast
    targets = make_targets(ids)
    n_valid = int((targets != IGNORE_INDEX).sum())
    check(n_valid == 2 * (T - 1) - PROMPT_MASK - (PAD_MASK - 1), "%s: target count" % name)

    loss, logits, grads = lora_grads(spec, W, ids, targets, modules, flat0)

    # ---- teeth ----
    check(torch.isfinite(logits).all().item() and math.isfinite(loss.item()),
          "%s: lora non-finite" % name)
    dl = maxdiff(logits, base_logits)
    rel = ((logits - base_logits).std() / base_logits.std()).item()
    check(dl > 1e-1 and rel < 0.4,
          "%s: LoRA term changes logits by %.3g (rel std %.3g)" % (name, dl, rel))
    for (m, _, _), gA, gB in zip(modules, grads[0::2], grads[1::2]):
        check(gA.abs().max().item() > 1e-6 and gB.abs().max().item() > 1e-6,
              "%s: zero LoRA grad in %s" % (name, m))
    # alternative interpretations must change the loss
    alt_scaling, _ = lora_loss(spec, W, ids, targets, modules, flat0, scaling=1.0)
    full_tg = targets.clone()
    full_tg[:, :-1] = ids[:, 1:]
    alt_mask = masked_ce(logits, full_tg)
    check(abs(alt_scaling.item() - loss.item()) > 1e-3, "%s: scaling has no effect" % name)
    check(abs(alt_mask.item() - loss.item()) > 1e-3, "%s: masking has no effect" % name)
    # finite differences (4th-order central, float64) on random elements
    gfd = torch.Generator().manual_seed(spec["seed"] + LORA_SEED_OFFSET + 1)
    worst = 0.0
    # flat order per module: A, B; modules q, k, v, o, gate, up, down per layer
    picks = [0, 2, 5, 7, 8, len(flat0) - 4, len(flat0) - 1]
    # = layer 0 q A, k A, v B, o B, gate A; last layer up A, down B
    for pi in picks:
        p0 = flat0[pi]
        for _ in range(3):
            e = int(torch.randint(0, p0.numel(), (1,), generator=gfd))
            h = 1e-4

            def f(delta):
                pp = list(flat0)
                q = p0.clone().reshape(-1)
                q[e] += delta
                pp[pi] = q.reshape(p0.shape)
                with torch.no_grad():
                    return lora_loss(spec, W, ids, targets, modules, pp)[0].item()
            fd = (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h)
            ag = grads[pi].reshape(-1)[e].item()
            r = abs(fd - ag) / max(abs(ag), 1e-300)
            worst = max(worst, r)
            check(r < 1e-6, "%s: finite-difference mismatch param %d elem %d: fd %.12g ag %.12g"
                  % (name, pi, e, fd, ag))

    # ---- AdamW trajectory (hand-written, replayed with torch.optim) ----
    P, traj_loss, traj_norm, clipped = lora_trajectory(spec, W, ids, targets, modules, flat0,
                                                       torch_check=True)
    check(traj_loss[0] == loss.item(), "%s: trajectory step 1 loss" % name)
    with torch.no_grad():
        final_loss = lora_loss(spec, W, ids, targets, modules, P)[0].item()
    check(traj_loss[-1] < traj_loss[0] - 1e-2 and final_loss < traj_loss[-1],
          "%s: trajectory does not decrease: %s -> %.4f" % (name, traj_loss, final_loss))
    check(clipped >= 1, "%s: clipping never active" % name)

    def traj_differs(tag, thr_, **kw):
        Q = lora_trajectory(spec, W, ids, targets, modules, flat0, **kw)[0]
        d = max(maxdiff(a, b) for a, b in zip(P, Q))
        check(d > thr_, "%s: trajectory %s changes final A/B by only %.3g" % (name, tag, d))
        return "%s %.2g" % (tag, d)
    traj_notes = [traj_differs("no_clip", 1e-3, clip=False),
                  traj_differs("l2_not_decoupled", 1e-3, coupled_l2=True),
                  traj_differs("no_wd", 1e-4, wd=0.0)]

    out = {
        "input_ids": ids.to(torch.int32),
        "targets": targets.to(torch.int32),
        "logits": logits.to(torch.float32),
        "loss": loss.reshape(1).to(torch.float32),
        "lora_rank": torch.tensor([LORA_R], dtype=torch.int32),
        "lora_alpha": torch.tensor([LORA_ALPHA], dtype=torch.float32),
        "trajectory_loss": torch.tensor(traj_loss, dtype=torch.float64).to(torch.float32),
        "trajectory_grad_norm": torch.tensor(traj_norm, dtype=torch.float64).to(torch.float32),
    }
    for i, (m, _, _) in enumerate(modules):
        for j, which in enumerate("AB"):
            k = peft_key(m, which)
            out[k] = AB32[m][j]
            out["grad." + k] = grads[2 * i + j].to(torch.float32)
            out["final." + k] = P[2 * i + j].to(torch.float32)
    path = os.path.join(folder, "lora_golden.safetensors")
    save_safetensors(path, out)
    back = load_safetensors(path)
    check(set(back) == set(out) and all(torch.equal(back[k], out[k]) for k in out),
          "%s: lora_golden round trip" % name)
    gmin = min(g.abs().min().item() for g in grads)
    return ("lora: loss %.4f (base %.4f) dlogits %.3g; |g| %.2g..%.2g fd %.1g; traj %.4f -> %.4f "
            "(final %.4f) norm %.3g -> %.3g clipped %d/%d; final A/B vs %s; %d bytes"
            % (loss.item(), masked_ce(base_logits, targets).item(), dl, gmin,
               max(g.abs().max().item() for g in grads), worst, traj_loss[0], traj_loss[-1],
               final_loss, traj_norm[0], traj_norm[-1], clipped, TRAJ_STEPS,
               ", ".join(traj_notes), os.path.getsize(path)))


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

    lora_note = build_lora(spec, folder, W, ids, logits)

    files = sorted(os.listdir(folder))
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    print("%-17s %-5s V=%-3d logits std %.3f range [%.2f, %.2f] loss %.4f  %6d bytes  | %s"
          % (name, _DT_TO_STR[spec["dtype"]], V, std, logits.min().item(),
             logits.max().item(), loss.item(), size, "; ".join(notes)))
    print("%-17s %s" % ("", lora_note))


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
- `lora_golden.safetensors` -- the LoRA training reference, see "LoRA reference" below.

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

## LoRA reference (`lora_golden.safetensors`)

Same weights (as stored, upcast to float64) and same `input_ids` as `golden.safetensors`.
All tensors F32 unless noted; float64 math throughout, rounded to F32 only when written.

LoRA (PEFT semantics) on all 7 linear modules of every layer: `self_attn.{q,k,v,o}_proj`
and `mlp.{gate,up,down}_proj`; rank `r = 4`, `lora_alpha = 8`, `scaling = alpha / r = 2`
(not rsLoRA), dropout 0, no LoRA bias:

    y = x W^T (+ b, qwen2 q/k/v only) + scaling * (x A^T) B^T      A [r, in], B [out, r]

`x` is the input of that linear (for `o_proj` the attention output `[.., nh*head_dim]`,
for `down_proj` `act(gate) * up` -- where gate/up already include their own LoRA terms).
For `k_proj`/`v_proj` `out = nkv * head_dim`: the LoRA delta is added to the kv
projection *before* RoPE and before the GQA expansion (query head `h` uses kv head
`h // (nh / nkv)`), exactly like the base projection. Embeddings, norms and `lm_head`
have no adapters and are frozen.

Keys (PEFT adapter names; `{i}` = layer, `{m}` = `self_attn.q_proj` ... `mlp.down_proj`):

- `base_model.model.model.layers.{i}.{m}.lora_A.weight` `[4, in]` and
  `base_model.model.model.layers.{i}.{m}.lora_B.weight` `[out, 4]` -- the initial values,
  both random and nonzero: `A ~ U(-1/sqrt(in), 1/sqrt(in))`, `B ~ N(0, 0.03^2)`, from
  a generator seeded with the variant seed + 5000 (independent of the base weights).
- `lora_rank` I32 `[1]` = 4, `lora_alpha` F32 `[1]` = 8.
- `input_ids` I32 `[2, 11]` (same as in `golden.safetensors`).
- `targets` I32 `[2, 11]`: `targets[b, t] = input_ids[b, t+1]`, `targets[b, 10] = -100`,
  plus `targets[0, 0:3] = -100` (a "prompt") and `targets[1, 9:11] = -100`
  (padding-like). 16 positions count. Masked positions are still ordinary inputs
  (no attention mask beyond causal / sliding window).
- `logits` F32 `[2, 11, vocab]`: forward with the initial LoRA.
- `loss` F32 `[1]`: `sum over targets != -100 of CE(logits[b, t], targets[b, t])`
  divided by the number of such positions (one mean over the whole batch, not per row;
  = `cross_entropy(ignore_index=-100, reduction="mean")` on the flattened batch).
- `grad.<key>` for every LoRA key above: `d loss / d tensor`, same shape. The base
  weights get no gradients.
- `trajectory_loss` `[10]`, `trajectory_grad_norm` `[10]`, `final.<key>`: starting from
  the initial A/B, 10 steps on the same batch. Step `k = 1..10`: forward + backward at the
  current A/B, record the loss (so `trajectory_loss[0] == loss`) and the global gradient
  norm *before* clipping, clip, AdamW update. `final.<key>` = A/B after the 10th update.
  - clipping, `torch.nn.utils.clip_grad_norm_(max_norm=1)`: `total = sqrt(sum over all
    LoRA grads of g^2)`, `coef = 1 / (total + 1e-6)`, grads `*= coef` only if `coef < 1`.
  - AdamW (torch 1.13 `torch.optim.AdamW`): lr `1e-2` (constant), betas `(0.9, 0.999)`,
    eps `1e-8`, weight_decay `0.01`, applied to every A and B; per element, step `t`
    from 1, moments starting at 0:

        p *= 1 - lr * wd
        m  = b1 * m + (1 - b1) * g
        v  = b2 * v + (1 - b2) * g * g
        p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

Checks in the generator: the LoRA term moves the logits noticeably (max abs > 0.1) but
not wildly (std of the change < 0.4 of the logits std); `scaling = 1` and unmasked
targets each change the loss; every A and B gradient is nonzero; float64 central finite
differences (4th order, h = 1e-4) agree with the autograd gradients to relative 1e-6 on
random elements of 7 of the tensors; the hand-written clipping + AdamW agree with
`clip_grad_norm_` + `torch.optim.AdamW` to 1e-12 at every step; the trajectory loss
decreases; clipping is active on at least one step; and the final A/B move by more than
1e-3 without clipping or with L2-in-the-gradient instead of decoupled decay, and by more
than 1e-4 without weight decay.

Precision note for comparisons in F32: the trajectory is mildly chaotic at elements whose
gradient is near 0 (Adam takes ~`lr`-sized steps there whatever the gradient's size).
Perturbing every gradient by 1e-6 of its tensor's max moves most final elements by
< 1e-5 but a few (llama3_gqa_bf16) by up to ~3e-4. Missing weight decay moves final A/B
by only ~2e-4..4e-4, so a tolerance loose enough for F32 on `final.*` will not see it:
test the optimizer step on its own for that. Single gradient elements go down to ~1e-7
while the largest are ~0.1..0.9, so compare `grad.*` with a tolerance scaled by the
tensor's max abs, not element-wise relative.

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
