#!/usr/bin/env python3
"""make_random_model.py: write a random-weight Hugging Face model folder of a given shape
(config.json + model.safetensors, bf16 or f32), tensor by tensor so memory stays small.
For benchmarks and memory measurements: the numbers are meaningless, the shapes are real.

Usage: make_random_model.py OUT_DIR [--preset NAME] [--dtype bf16|f32] [--layers N] ...
Presets: tiny (the demo model of scripts/run), stories15m, smollm-135m, llama-110m, llama-3.2-1b, llama-3-8b, qwen2.5-0.5b
Needs only numpy (Debian python3-numpy)."""
import argparse
import json
import os
import struct

import numpy as np

PRESETS = {
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=512, tie=True),
    "stories15m": dict(hidden_size=288, intermediate_size=768, num_hidden_layers=6, num_attention_heads=6,
                       num_key_value_heads=6, vocab_size=32000, max_position_embeddings=256, tie=True),
    "smollm-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                        num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie=True),
    "llama-110m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                       num_key_value_heads=12, vocab_size=32000, max_position_embeddings=1024, tie=False),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, tie=True,
                         rope_theta=500000.0,
                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, tie=False,
                       rope_theta=500000.0),
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                         max_position_embeddings=32768, tie=True, rope_theta=1000000.0),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--preset", default="llama-110m", choices=sorted(PRESETS))
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--layers", type=int, help="override num_hidden_layers")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    p = dict(PRESETS[a.preset])
    if a.layers:
        p["num_hidden_layers"] = a.layers
    mt = p.pop("model_type", "llama")
    tie = p.pop("tie")
    D, H, L = p["hidden_size"], p["intermediate_size"], p["num_hidden_layers"]
    nh, nkv, V = p["num_attention_heads"], p["num_key_value_heads"], p["vocab_size"]
    hd = D // nh
    cfg = {"architectures": ["Qwen2ForCausalLM" if mt == "qwen2" else "LlamaForCausalLM"], "model_type": mt,
           "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": p.pop("rope_theta", 10000.0),
           "tie_word_embeddings": tie, "bos_token_id": 1, "eos_token_id": 2,
           "torch_dtype": "bfloat16" if a.dtype == "bf16" else "float32", "head_dim": hd, **p}
    os.makedirs(a.out, exist_ok=True)
    json.dump(cfg, open(os.path.join(a.out, "config.json"), "w"), indent=2)
    shapes = [("model.embed_tokens.weight", (V, D)), ("model.norm.weight", (D,))]
    if not tie:
        shapes.append(("lm_head.weight", (V, D)))
    for i in range(L):
        pre = f"model.layers.{i}."
        shapes += [(pre + "input_layernorm.weight", (D,)), (pre + "post_attention_layernorm.weight", (D,)),
                   (pre + "self_attn.q_proj.weight", (nh * hd, D)), (pre + "self_attn.k_proj.weight", (nkv * hd, D)),
                   (pre + "self_attn.v_proj.weight", (nkv * hd, D)), (pre + "self_attn.o_proj.weight", (D, nh * hd)),
                   (pre + "mlp.gate_proj.weight", (H, D)), (pre + "mlp.up_proj.weight", (H, D)),
                   (pre + "mlp.down_proj.weight", (D, H))]
        if mt == "qwen2":
            shapes += [(pre + "self_attn.q_proj.bias", (nh * hd,)), (pre + "self_attn.k_proj.bias", (nkv * hd,)),
                       (pre + "self_attn.v_proj.bias", (nkv * hd,))]
    shapes.sort()
    esz = 2 if a.dtype == "bf16" else 4
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shp in shapes:
        n = int(np.prod(shp)) * esz
        header[name] = {"dtype": "BF16" if a.dtype == "bf16" else "F32", "shape": list(shp), "data_offsets": [off, off + n]}
        off += n
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    rng = np.random.default_rng(a.seed)
    with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for name, shp in shapes:
            if name.endswith("norm.weight"):
                x = np.ones(shp, dtype=np.float32)
            else:
                std = 0.02 if "bias" not in name else 0.01
                if a.preset == "tiny":  # small fan-in: keep activations O(1) so LoRA can learn fast
                    std = 1.0 / np.sqrt(shp[-1]) if len(shp) == 2 and "embed" not in name else 0.5
                x = rng.standard_normal(shp, dtype=np.float32) * std
            if a.dtype == "bf16":
                u = x.view(np.uint32)
                u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
                f.write(u.astype("<u2").tobytes())
            else:
                f.write(x.astype("<f4").tobytes())
    total = sum(int(np.prod(s)) for _, s in shapes)
    print(f"{a.out}: {a.preset} {a.dtype}, {total / 1e6:.1f}M parameters, {off / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
