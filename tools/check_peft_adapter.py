#!/usr/bin/env python3
"""check_peft_adapter.py: check an adapter folder against Hugging Face PEFT's documented layout,
with plain JSON and safetensors readers (no peft/transformers needed).

Usage: check_peft_adapter.py ADAPTER_DIR MODEL_DIR
Checks: adapter_config.json fields (peft_type LORA, task_type, r, lora_alpha, target_modules,
bias "none", ...); adapter_model.safetensors header (8-byte length, JSON, contiguous offsets);
every key is base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight with
lora_A [r, in_features] and lora_B [out_features, r] for the model's config.json; every targeted
module of every transformed layer has both A and B. Exit 0 when all hold, 1 with a message."""
import json
import os
import re
import struct
import sys


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    adir, mdir = sys.argv[1], sys.argv[2]
    cfg = json.load(open(os.path.join(adir, "adapter_config.json")))
    mc = json.load(open(os.path.join(mdir, "config.json")))
    for k, want in [("peft_type", "LORA"), ("task_type", "CAUSAL_LM"), ("bias", "none")]:
        if cfg.get(k) != want:
            fail(f"adapter_config.json: {k} is {cfg.get(k)!r}, PEFT expects {want!r}")
    for k in ["r", "lora_alpha", "lora_dropout", "target_modules", "base_model_name_or_path",
              "fan_in_fan_out", "inference_mode", "use_rslora", "use_dora", "modules_to_save"]:
        if k not in cfg:
            fail(f"adapter_config.json: missing field {k!r}")
    r = cfg["r"]
    if not isinstance(r, int) or r < 1:
        fail("adapter_config.json: r must be a positive integer")
    if cfg["fan_in_fan_out"] is not False:
        fail("fan_in_fan_out must be false for Llama-style Linear layers")
    targets = cfg["target_modules"]
    if not isinstance(targets, list) or not targets:
        fail("target_modules must be a non-empty list")
    # safetensors by hand
    path = os.path.join(adir, "adapter_model.safetensors")
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        fail("header length exceeds file")
    header = json.loads(data[8:8 + n])
    buf_len = len(data) - 8 - n
    D, H = mc["hidden_size"], mc["intermediate_size"]
    nh = mc["num_attention_heads"]
    nkv = mc.get("num_key_value_heads", nh)
    hd = mc.get("head_dim", D // nh)
    shapes = {"q_proj": (nh * hd, D), "k_proj": (nkv * hd, D), "v_proj": (nkv * hd, D),
              "o_proj": (D, nh * hd), "gate_proj": (H, D), "up_proj": (H, D), "down_proj": (D, H)}
    key_re = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\."
                        r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.lora_([AB])\.weight$")
    seen = {}
    spans = []
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        m = key_re.match(key)
        if not m:
            fail(f"unexpected tensor key {key!r} (PEFT strips the adapter name on save)")
        layer, group, mod, ab = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        if (group == "mlp") != (mod in ("gate_proj", "up_proj", "down_proj")):
            fail(f"{key}: module {mod} is not under {group}")
        if layer >= mc["num_hidden_layers"]:
            fail(f"{key}: layer {layer} does not exist")
        if mod not in targets:
            fail(f"{key}: {mod} is not in target_modules {targets}")
        out_f, in_f = shapes[mod]
        want = [r, in_f] if ab == "A" else [out_f, r]
        if meta["shape"] != want:
            fail(f"{key}: shape {meta['shape']}, PEFT layout needs {want}")
        if meta["dtype"] not in ("F32", "F16", "BF16"):
            fail(f"{key}: dtype {meta['dtype']}")
        b, e = meta["data_offsets"]
        size = {"F32": 4, "F16": 2, "BF16": 2}[meta["dtype"]] * want[0] * want[1]
        if e - b != size or e > buf_len:
            fail(f"{key}: data_offsets {b, e} do not hold {size} bytes")
        spans.append((b, e))
        seen.setdefault((layer, mod), set()).add(ab)
    spans.sort()
    pos = 0
    for b, e in spans:
        if b != pos:
            fail("tensors are not contiguous in the data buffer")
        pos = e
    for (layer, mod), abs_ in seen.items():
        if abs_ != {"A", "B"}:
            fail(f"layer {layer} {mod}: has {sorted(abs_)} only")
    layers = cfg.get("layers_to_transform")
    want_layers = set(layers) if isinstance(layers, list) else set(range(mc["num_hidden_layers"]))
    for layer in want_layers:
        for mod in targets:
            if (layer, mod) not in seen:
                fail(f"layer {layer} {mod}: targeted but absent")
    print(f"ok: {len(header) - ('__metadata__' in header)} tensors, r={r}, "
          f"alpha={cfg['lora_alpha']}, targets={targets}, layers={sorted(want_layers)}")


if __name__ == "__main__":
    main()
