#!/usr/bin/env bash
# bench/data_bench.sh: `streamtune data bench` against one sequential `curl` download of the same
# shards, in the same run, on loopback:
#   1. raw: nginx directly (no added latency, no rate cap)
#   2. cloud-like: through tests/servers/faultproxy.js with 50 ms added latency per request and a
#      per-connection rate cap (object stores cap each connection; this kernel has no netem)
# Prints a table with ratios. Not a test: nothing here gates CI.
#
#   bench/data_bench.sh                      # defaults below
#   SHARDS=8 SHARD_MB=32 LATENCY_MS=50 RATE=12500000 CONNECTIONS=16 bench/data_bench.sh
#
# Needs nginx, node and curl (scripts/setup installs them) and a built build/streamtune.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="${BIN:-build/streamtune}"
SHARDS="${SHARDS:-8}"
SHARD_MB="${SHARD_MB:-32}"
LATENCY_MS="${LATENCY_MS:-50}"
RATE="${RATE:-12500000}"           # bytes/s per connection through the proxy
CONNECTIONS="${CONNECTIONS:-16}"
MEMORY="${MEMORY:-512M}"
EXTRA="${EXTRA:-}"                 # more stream options for streamtune, e.g. --no-json-check

tmp="$(mktemp -d /tmp/st-bench-XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# ---- dataset: plain JSONL shards whose records carry ids
python3 - "$tmp/data" "$SHARDS" "$SHARD_MB" <<'EOF'
import os, sys, random
d, n, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(d)
rnd = random.Random(1)
words = [''.join(rnd.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rnd.randint(2, 9))) for _ in range(5000)]
i = 0
for s in range(n):
    with open(f'{d}/shard-{s:03d}.jsonl', 'w') as f:
        size = 0
        while size < mb << 20:
            text = ' '.join(rnd.choice(words) for _ in range(rnd.randint(5, 120)))
            line = f'{{"id": {i}, "text": "{text}"}}\n'
            f.write(line)
            size += len(line)
            i += 1
EOF
bytes_total=$(du -cb "$tmp"/data/*.jsonl | tail -1 | cut -f1)

# ---- nginx on a free port
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$tmp/nginx"
cat > "$tmp/nginx/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1;
error_log $tmp/nginx/error.log warn; pid $tmp/nginx/nginx.pid;
events { worker_connections 1024; }
http { access_log off; sendfile on; keepalive_requests 1000000;
  client_body_temp_path $tmp/nginx/b; proxy_temp_path $tmp/nginx/p; fastcgi_temp_path $tmp/nginx/f;
  uwsgi_temp_path $tmp/nginx/u; scgi_temp_path $tmp/nginx/s;
  server { listen 127.0.0.1:$port; root $tmp/data; } }
EOF
nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e stderr 2>"$tmp/nginx/stderr" &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done

# ---- the proxy: latency + per-connection rate cap, no faults
node tests/servers/faultproxy.js --target "127.0.0.1:$port" --latency "$LATENCY_MS" --rate "$RATE" \
  > "$tmp/proxy.out" 2>"$tmp/proxy.err" &
pids+=($!)
for _ in $(seq 100); do grep -q PORT "$tmp/proxy.out" 2>/dev/null && break; sleep 0.05; done
pport=$(awk '/PORT/{print $2}' "$tmp/proxy.out")

last=$(printf '%03d' $((SHARDS - 1)))
seq_curl() { # base URL -> seconds for downloading every shard one after the other
  local t0 t1
  t0=$(date +%s.%N)
  for s in $(seq 0 $((SHARDS - 1))); do
    curl -s -o /dev/null "$1/shard-$(printf '%03d' "$s").jsonl"
  done
  t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)"
}
st_bench() { # base URL -> JSON stats
  "$BIN" --quiet data bench "$1/shard-{000..$last}.jsonl" --json \
    --connections "$CONNECTIONS" --stream-memory "$MEMORY" $EXTRA
}

echo "dataset: $SHARDS JSONL shards, $((bytes_total / 1048576)) MiB; streamtune: --connections $CONNECTIONS --stream-memory $MEMORY $EXTRA"
for mode in raw cloud; do
  if [ "$mode" = raw ]; then base="http://127.0.0.1:$port"; label="loopback nginx (raw)"
  else base="http://127.0.0.1:$pport"; label="nginx + ${LATENCY_MS} ms latency + $((RATE / 1000000)) MB/s per connection"; fi
  secs=$(seq_curl "$base")
  json=$(st_bench "$base")
  python3 - "$label" "$secs" "$bytes_total" "$json" <<'EOF'
import json, sys
label, secs, total, j = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
curl = total / secs / 1e6
st = j["mb_per_s"]
print(f"{label}:")
print(f"  sequential curl        {curl:8.1f} MB/s  ({secs:.2f} s)")
print(f"  streamtune data bench  {st:8.1f} MB/s  ({j['elapsed_s']:.2f} s, {j['samples']} samples, "
      f"{j['samples_per_s']:.0f}/s, first sample {j['first_sample_s']*1000:.0f} ms, "
      f"consumer waited {j['wait_s']:.2f} s, memory peak {j['mem_peak']/1048576:.0f} MiB)")
print(f"  ratio                  {st / curl:8.2f}x")
EOF
done
