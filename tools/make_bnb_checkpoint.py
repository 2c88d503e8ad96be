#!/usr/bin/env python3
"""make_bnb_checkpoint.py: write a copy of a Hugging Face model folder whose linear projections are
stored the way transformers + bitsandbytes serialise a 4-bit NF4 model (load_in_4bit, then
save_pretrained), for testing streamtune's loader without a GPU or bitsandbytes itself.

Usage: /usr/bin/python3 tools/make_bnb_checkpoint.py IN_DIR OUT_DIR [--no-double-quant]

Per projection weight {p}.weight (q/k/v/o/gate/up/down_proj) of shape (rows, cols), as in
bitsandbytes' Params4bit / QuantState.as_dict(packed=True) (see ../shared/FACTS.md A.5):
  {p}.weight                                   U8 [ceil(n/2), 1]  packed codes, first element high nibble
  {p}.weight.absmax                            U8 [nb] (double quant) or F32 [nb]
  {p}.weight.quant_map                         F32 [16]   the NF4 code values
  {p}.weight.nested_absmax                     F32 [ceil(nb/256)]   (double quant only)
  {p}.weight.nested_quant_map                  F32 [256]  the signed dynamic map (double quant only)
  {p}.weight.quant_state.bitsandbytes__nf4     U8 JSON: quant_type, blocksize, dtype, shape,
                                               and nested_blocksize, nested_dtype, nested_offset
Everything else (embeddings, head, norms, biases) is copied unchanged, as transformers keeps them.
The quantisation is tools/nf4_reference.py's float64 model of bitsandbytes' kernels.
numpy only."""
import json
import os
import shutil
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nf4_reference as ref  # noqa: E402

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NP = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "U8": "u1", "I32": "<i4"}


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], raw[8 + n + b:8 + n + e])
    return out


def to_f32(dtype, data):
    a = np.frombuffer(data, NP[dtype])
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def write_safetensors(path, tensors):
    header, off, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((-len(hj)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    double_quant = "--no-double-quant" not in sys.argv
    if len(args) != 2:
        sys.exit(__doc__)
    src, dst = args
    os.makedirs(dst, exist_ok=True)
    cfg = json.load(open(os.path.join(src, "config.json")))
    tensors = read_safetensors(os.path.join(src, "model.safetensors"))
    out = {}
    for name, (dtype, shape, data) in tensors.items():
        if not (name.endswith(".weight") and name.split(".")[-2] in PROJ):
            out[name] = (dtype, shape, data)
            continue
        w = to_f32(dtype, data)
        packed, absmax = ref.nf4_quantize(w)
        qs = {"quant_type": "nf4", "blocksize": 64,
              "dtype": {"BF16": "bfloat16", "F16": "float16"}.get(dtype, "float32"),
              "shape": list(shape)}
        out[name] = ("U8", [packed.size, 1], packed.tobytes())
        out[name + ".quant_map"] = ("F32", [16], ref.NF4.astype("<f4").tobytes())
        if double_quant:
            q, nested, offset = ref.quantize_absmax(absmax)
            out[name + ".absmax"] = ("U8", [q.size], q.tobytes())
            out[name + ".nested_absmax"] = ("F32", [nested.size], nested.astype("<f4").tobytes())
            out[name + ".nested_quant_map"] = ("F32", [256], ref.DYNAMIC_MAP.astype("<f4").tobytes())
            qs.update(nested_blocksize=256, nested_dtype="float32", nested_offset=float(offset))
        else:
            out[name + ".absmax"] = ("F32", [absmax.size], absmax.astype("<f4").tobytes())
        blob = json.dumps(qs).encode()
        out[name + ".quant_state.bitsandbytes__nf4"] = ("U8", [len(blob)], blob)
    write_safetensors(os.path.join(dst, "model.safetensors"), out)
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                  "bnb_4bit_quant_type": "nf4",
                                  "bnb_4bit_use_double_quant": double_quant,
                                  "bnb_4bit_compute_dtype": "bfloat16"}
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)
    for f in os.listdir(src):
        if f.startswith("tokenizer") or f in ("special_tokens_map.json", "generation_config.json"):
            shutil.copy(os.path.join(src, f), dst)
    print(f"{dst}: bitsandbytes NF4 ({'double quant' if double_quant else 'F32 absmax'})")


if __name__ == "__main__":
    main()
