#!/usr/bin/env bash
# Startup time: `vtl -e ''` (median of N runs) against `python3 -c 'import torch'` (median
# of NPY runs), measured in the same run; prints both and their ratio. Not a test: no
# threshold.
set -euo pipefail
cd "$(dirname "$0")/../.."
VTL=${VTL:-./vtl}
N=${N:-30}
NPY=${NPY:-5}
PY=${PY:-/usr/bin/python3}

# Median wall time in milliseconds of running "$@" $1 times (stdout/stderr discarded).
median_ms() {
  local runs=$1; shift
  local i t0 t1
  for ((i = 0; i < runs; i++)); do
    t0=$EPOCHREALTIME
    "$@" >/dev/null 2>&1
    t1=$EPOCHREALTIME
    echo "$t0 $t1"
  done | awk '{ print ($2 - $1) * 1000 }' | sort -n |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

if [ ! -x "$VTL" ]; then echo "startup: $VTL not built (run make)" >&2; exit 1; fi
"$VTL" -e '' # warm the page cache once
vtl_ms=$(median_ms "$N" "$VTL" -e '')
printf "startup: vtl -e ''                    %8.1f ms  (median of %d)\n" "$vtl_ms" "$N"

if "$PY" -c 'import torch' >/dev/null 2>&1; then
  py_ms=$(median_ms "$NPY" "$PY" -c 'import torch')
  printf "startup: python3 -c 'import torch'    %8.1f ms  (median of %d)\n" "$py_ms" "$NPY"
  awk -v a="$py_ms" -v b="$vtl_ms" 'BEGIN { printf "startup: torch import / vtl = %.1fx\n", a / b }'
else
  echo "startup: $PY cannot import torch; no ratio"
fi
