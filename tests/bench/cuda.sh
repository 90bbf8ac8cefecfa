#!/usr/bin/env bash
# GPU ops in vtl and PyTorch on the same GPU in one run: seconds per call of each and the
# throughput ratio vtl/PyTorch (above 1 means vtl is faster). PY picks the Python with torch.
set -uo pipefail
cd "$(dirname "$0")/../.."
VTL=${VTL:-./vtl}
PY=${PY:-${VTL_PY:-python3}}
echo "gpu: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)"
# LIMIT bounds each side (seconds); what a side printed before it ended is kept and shown
LIMIT=${LIMIT:-600}
vt=$(timeout --kill-after=5 "$LIMIT" "$VTL" tests/bench/cuda_ops.lua; echo "vtl_status $?" >&2)
pt=$(PYTHONUNBUFFERED=1 timeout --kill-after=5 "$LIMIT" "$PY" tests/bench/cuda_ops.py; echo "torch_status $?" >&2)
echo "vtl:"; echo "$vt" | sed 's/^/  /'
echo "torch:"; echo "$pt" | sed 's/^/  /'
vt=$(echo "$vt" | sort)
pt=$(echo "$pt" | sort)
if [ -z "$vt" ] || [ -z "$pt" ]; then echo "no timings from one side (no GPU, or no torch in $PY)"; exit 1; fi
printf '%-38s %12s %12s %8s\n' op vtl_ms torch_ms ratio
# times: ratio torch/vtl (above 1: vtl faster); *_peakMiB lines: peak GPU memory, ratio torch/vtl
# (above 1: vtl uses less)
join <(echo "$vt") <(echo "$pt") | while read -r name a b; do
  case "$name" in
  *_peakMiB) awk -v n="$name" -v a="$a" -v b="$b" 'BEGIN { printf "%-38s %10.0f MiB %10.0f MiB %6.2fx\n", n, a, b, b/a }' ;;
  *) awk -v n="$name" -v a="$a" -v b="$b" 'BEGIN { printf "%-38s %12.4f %12.4f %7.2fx\n", n, a*1e3, b*1e3, b/a }' ;;
  esac
done
