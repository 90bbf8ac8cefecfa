#!/usr/bin/env bash
# Runs vtl and PyTorch on the same machine, same thread count, in one run, and prints
# each op's time and the throughput ratio vtl/PyTorch (above 1 means vtl is faster).
set -euo pipefail
cd "$(dirname "$0")/../.."
VTL=${VTL:-./vtl}
threads=${THREADS:-$(nproc)}
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; threads: $threads"
echo "env: OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-unset}"
# alternate the two a few rounds and keep each op's best time, so a burst of load on a
# shared machine does not decide the ratio
rounds=${ROUNDS:-3}
vt=""; pt=""
for _ in $(seq "$rounds"); do
  for b in tensor_ops conv; do
    vt+=$("$VTL" tests/bench/$b.lua "$threads")$'\n'
    pt+=$(/usr/bin/python3 tests/bench/$b.py "$threads")$'\n'
  done
done
best() { awk 'NF == 2 { if (!($1 in m) || $2 < m[$1]) m[$1] = $2 } END { for (k in m) print k, m[k] }' | sort; }
vt=$(echo "$vt" | best)
pt=$(echo "$pt" | best)
printf '%-14s %12s %12s %8s\n' op vtl_ms torch_ms ratio
join <(echo "$vt") <(echo "$pt") | while read -r name a b; do
  awk -v n="$name" -v a="$a" -v b="$b" 'BEGIN { printf "%-14s %12.3f %12.3f %7.2fx\n", n, a*1e3, b*1e3, b/a }'
done
bash tests/bench/startup.sh 2>/dev/null || true
