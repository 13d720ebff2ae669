#!/usr/bin/env bash
# Profile of an upline node under one upline-bench scenario (not part of CI):
#   bash bench/profile.sh single --size 1GiB [--md5]
#   bash bench/profile.sh concurrent
# Records the node with `perf record -g` (Debian's linux-perf) while the
# scenario runs and prints the top symbols (self time), the view
# BENCHMARKS.md quotes. The perf data stays in target/perf-<scenario>.data.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || apt-get install -y -qq linux-perf >/dev/null
cargo build --release -q -p upline -p upline-bench
data=$(mktemp -d -p target profile-XXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export UPLINE_ACCESS_KEY=bench UPLINE_SECRET_KEY=bench-secret
target/release/upline serve --listen "127.0.0.1:$port" --data-dir "$data" 2>/dev/null &
node=$!
trap 'kill $node 2>/dev/null; rm -rf "$data"' EXIT
sleep 0.5
out="target/perf-$1.data"
perf record -F 1999 -g -p "$node" -o "$out" 2>/dev/null &
rec=$!
sleep 0.3
target/release/upline-bench --url "http://127.0.0.1:$port" --pid "$node" "$@"
kill -INT $rec; wait $rec || true
perf report -i "$out" --no-children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -25
