#!/usr/bin/python3
"""train_cpu_peer.py: the PyTorch side of bench/train_cpu (issue 8).

A minimal Llama-style decoder in plain torch (written the way Hugging Face's LlamaModel and
PEFT compute it): RMSNorm, rotate-half RoPE, grouped-query attention written out with matmul +
causal mask + fp32 softmax (torch 1.13 has no F.scaled_dot_product_attention), SwiGLU MLP, tied or
separate LM head, mean cross-entropy over the shifted targets. The base is frozen; LoRA (rank r,
alpha, scale alpha/r, no dropout, A kaiming-uniform, B zero) on q,k,v,o; AdamW on the LoRA
parameters only (lr 2e-4, betas 0.9/0.999, eps 1e-8, weight decay 0) and global-norm clipping 1.0,
as `streamtune train` does by default.

Weights: the same random safetensors file streamtune reads (F32 or BF16; read tensor by tensor into
fp32 torch tensors, never memory-mapped, so page cache does not count as RSS). --dtype bf16 runs the
forward under torch.autocast("cpu", dtype=torch.bfloat16), the usual PyTorch mixed precision
(parameters stay fp32, matmuls run in bf16).

Prints one JSON object per line on stdout: {"kind": "info", ...}, then {"kind": "step", "step", "dt",
"tokens", "loss"} per optimizer step (dt: wall seconds of forward + backward + clip + AdamW), then
{"kind": "done", "max_rss_kib"}. Runs with Debian's python3-torch (1.13) and numpy only."""
import argparse
import json
import math
import os
import resource
import struct
import sys
import time

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError as e:  # the driver checks this too; keep the message clear when run by hand
    sys.exit(f"train_cpu_peer.py: PyTorch is missing ({e}); install Debian's python3-torch")


def load_safetensors(path, want):
    """Read the tensors named in `want` from a safetensors file into fp32 torch tensors."""
    out = {}
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
        base = 8 + hlen
        for name in want:
            if name not in header:
                raise SystemExit(f"{path}: tensor {name} missing")
            h = header[name]
            shape, (a, b) = h["shape"], h["data_offsets"]
            f.seek(base + a)
            if h["dtype"] == "F32":
                t = torch.empty(shape, dtype=torch.float32)
                buf = t.numpy().reshape(-1).view(np.uint8)
                if f.readinto(buf) != b - a:
                    raise SystemExit(f"{path}: {name}: short read")
            elif h["dtype"] == "BF16":
                raw = np.frombuffer(f.read(b - a), dtype="<u2")
                t = torch.from_numpy((raw.astype(np.uint32) << 16).view(np.float32).reshape(shape).copy())
            else:
                raise SystemExit(f"{path}: {name}: dtype {h['dtype']} not supported by the peer")
            out[name] = t
    return out


class Lora(torch.nn.Module):
    def __init__(self, n_in, n_out, r, gen):
        super().__init__()
        self.a = torch.nn.Parameter(torch.empty(r, n_in))
        self.b = torch.nn.Parameter(torch.zeros(n_out, r))
        bound = 1.0 / math.sqrt(n_in)  # kaiming_uniform_(a=sqrt(5)) as PEFT/nn.Linear do
        with torch.no_grad():
            self.a.uniform_(-bound, bound, generator=gen)


class Peer(torch.nn.Module):
    def __init__(self, cfg, w, r, alpha, gen):
        super().__init__()
        self.D, self.L = cfg["hidden_size"], cfg["num_hidden_layers"]
        self.nh, self.nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd = cfg.get("head_dim") or self.D // self.nh
        self.eps = cfg.get("rms_norm_eps", 1e-5)
        self.theta = cfg.get("rope_theta", 10000.0)
        self.scale = alpha / r if r else 0.0
        self.w = w  # frozen base: plain tensors, requires_grad False
        self.lm_head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        self.lora = torch.nn.ModuleDict()
        for i in range(self.L if r else 0):
            for p, n_in, n_out in (("q", self.D, self.nh * self.hd), ("k", self.D, self.nkv * self.hd),
                                   ("v", self.D, self.nkv * self.hd), ("o", self.nh * self.hd, self.D)):
                self.lora[f"{i}_{p}"] = Lora(n_in, n_out, r, gen)

    def rmsnorm(self, x, weight):
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * x.to(dt)

    def lin(self, x, i, p, name):
        y = F.linear(x, self.w[f"model.layers.{i}.self_attn.{name}.weight"])
        if not self.lora:  # r = 0: the base model alone (bench/infer_cpu)
            return y
        lo = self.lora[f"{i}_{p}"]
        return y + F.linear(F.linear(x, lo.a), lo.b) * self.scale

    @staticmethod
    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), dim=-1)

    def forward(self, ids):
        B, T = ids.shape
        inv = 1.0 / (self.theta ** (torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd))
        fr = torch.outer(torch.arange(T, dtype=torch.float32), inv)
        emb = torch.cat((fr, fr), dim=-1)
        cos, sin = emb.cos(), emb.sin()  # (T, hd)
        causal = torch.ones(T, T, dtype=torch.bool).triu(1)
        rep = self.nh // self.nkv
        x = F.embedding(ids, self.w["model.embed_tokens.weight"])  # (B, T, D)
        for i in range(self.L):
            pre = f"model.layers.{i}."
            h = self.rmsnorm(x, self.w[pre + "input_layernorm.weight"])
            q = self.lin(h, i, "q", "q_proj").view(B, T, self.nh, self.hd).transpose(1, 2)
            k = self.lin(h, i, "k", "k_proj").view(B, T, self.nkv, self.hd).transpose(1, 2)
            v = self.lin(h, i, "v", "v_proj").view(B, T, self.nkv, self.hd).transpose(1, 2)
            q = q * cos.to(q.dtype) + self.rotate_half(q) * sin.to(q.dtype)
            k = k * cos.to(k.dtype) + self.rotate_half(k) * sin.to(k.dtype)
            if rep > 1:  # GQA: HF's repeat_kv
                k = k[:, :, None].expand(B, self.nkv, rep, T, self.hd).reshape(B, self.nh, T, self.hd)
                v = v[:, :, None].expand(B, self.nkv, rep, T, self.hd).reshape(B, self.nh, T, self.hd)
            s = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.hd)  # (B, nh, T, T)
            s = s.masked_fill(causal, float("-inf"))
            pr = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
            a = torch.matmul(pr, v).transpose(1, 2).reshape(B, T, self.nh * self.hd)
            x = x + self.lin(a, i, "o", "o_proj")
            h = self.rmsnorm(x, self.w[pre + "post_attention_layernorm.weight"])
            g = F.linear(h, self.w[pre + "mlp.gate_proj.weight"])
            u = F.linear(h, self.w[pre + "mlp.up_proj.weight"])
            x = x + F.linear(F.silu(g) * u, self.w[pre + "mlp.down_proj.weight"])
        x = self.rmsnorm(x, self.w["model.norm.weight"])
        logits = F.linear(x, self.lm_head)  # (B, T, V)
        V = logits.shape[-1]
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, V), ids[:, 1:].reshape(-1))


def weight_names(cfg):
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.get("tie_word_embeddings", False):
        names.append("lm_head.weight")
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        names += [pre + "input_layernorm.weight", pre + "post_attention_layernorm.weight"]
        names += [pre + f"self_attn.{p}_proj.weight" for p in "qkvo"]
        names += [pre + f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    return names


def openblas_core(threads=None):
    """The kernel set OpenBLAS picked (OPENBLAS_CORETYPE changes it); sets its thread count too:
    torch.set_num_threads does not reach a pthread OpenBLAS."""
    try:
        import ctypes
        lib = ctypes.CDLL("libopenblas.so.0")
        if threads:
            lib.openblas_set_num_threads(ctypes.c_int(threads))
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return lib.openblas_get_corename().decode()
    except Exception:
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="folder with config.json + model.safetensors")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps in total (warm-up included)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    t0 = time.perf_counter()
    w = load_safetensors(os.path.join(a.model, "model.safetensors"), weight_names(cfg))
    for t in w.values():
        t.requires_grad_(False)
    gen = torch.Generator().manual_seed(a.seed)
    model = Peer(cfg, w, a.rank, a.alpha, gen)
    params = list(model.lora.parameters())
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    V = cfg["vocab_size"]
    print(json.dumps({"kind": "info", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "dtype": a.dtype, "lora_params": sum(p.numel() for p in params),
                      "openblas_core": openblas_core(a.threads),
                      "load_s": round(time.perf_counter() - t0, 2)}), flush=True)
    for step in range(1, a.steps + 1):
        ids = torch.randint(3, V, (a.batch, a.seq), generator=gen)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if a.dtype == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(ids)
        else:
            loss = model(ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        dt = time.perf_counter() - t
        print(json.dumps({"kind": "step", "step": step, "dt": dt, "tokens": a.batch * a.seq,
                          "loss": float(loss)}), flush=True)
    print(json.dumps({"kind": "done", "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}),
          flush=True)


if __name__ == "__main__":
    main()
