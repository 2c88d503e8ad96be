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
# compare what the script writes (other tools own other folders under tests/golden)
status=0
for d in "$tmp/golden"/*/; do
  name="$(basename "$d")"
  if ! diff -r "$src/tests/golden/$name" "$d"; then
    echo "FAIL: tools/make_reference.py output for $name differs from tests/golden/$name"; status=1
  fi
done
[ "$status" -eq 0 ] && echo "ok: goldens regenerate identically"
exit "$status"
