#!/usr/bin/env bash
# test_reference_regen.sh: tools/make_reference.py, rerun now, reproduces the committed goldens
# byte for byte (so the goldens are what the script says they are). Skips without PyTorch.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
py=/usr/bin/python3
if ! "$py" -c "import torch, numpy" 2>/dev/null; then
  echo "skip: $py cannot import torch/numpy (run scripts/setup)"; exit 0
fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
"$py" "$src/tools/make_reference.py" --out "$tmp/golden" >/dev/null
if diff -r -x README.md "$src/tests/golden" "$tmp/golden"; then
  echo "ok: goldens regenerate identically"
else
  echo "FAIL: tools/make_reference.py output differs from tests/golden"; exit 1
fi
