#!/usr/bin/env bash
# Inference throughput (eval mode, no gradients, 224x224) of zoo models in vtl and PyTorch: the
# same models with the same random weights (vtl writes them, PyTorch loads them strictly), the
# same thread count, in one run. For each model and batch size prints images/s of vtl, of vtl
# after vtl.models.fuse_for_inference (batch norm folded into the convs) and of PyTorch, the
# ratios vtl/PyTorch (above 1: vtl faster) and each process's peak RSS (it ran both batch sizes).
#   THREADS (default: all cores), REPS (timed runs per batch-32 measurement, batch 1 gets 3x),
#   BATCHES (default 1,32), MODELS (default below), BF16 (default 1: also the fused model in a
#   bf16 autocast region against PyTorch's CPU bf16 autocast, in a second table).
set -euo pipefail
cd "$(dirname "$0")/../.."
VTL=${VTL:-./vtl}
PY=${PY:-.venv/bin/python}
threads=${THREADS:-$(nproc)}
reps=${REPS:-3}
bf16=${BF16:-1}
batches=${BATCHES:-1,32}
lite=efficientnet_b0
if "$VTL" -e 'os.exit(require("vtl.models").is_model("efficientnet_lite0") and 0 or 1)'; then lite=efficientnet_lite0; fi
models=${MODELS:-"resnet50 mobilenet_v3_large $lite vit_small_patch16_224"}
tmp=$(mktemp -d)
BF16_ROWS=""
trap 'rm -rf "$tmp"' EXIT

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; threads: $threads; best of $reps (batch 1: $((3 * reps))) runs"
printf '%-24s %5s %10s %10s %10s %7s %7s %9s %9s %9s\n' model batch vtl_img/s fused_img/s torch_img/s ratio fused vtl_MiB fused_MiB torch_MiB
for m in $models; do
  w="$tmp/$m.safetensors"
  "$VTL" tests/bench/infer.lua save "$m" "$w"
  v=$("$VTL" tests/bench/infer.lua run "$m" "$w" "$threads" "$batches" "$reps")
  f=$("$VTL" tests/bench/infer.lua run "$m" "$w" "$threads" "$batches" "$reps" fused)
  p=$("$PY" tests/bench/infer.py "$m" "$w" "$threads" "$batches" "$reps")
  for b in ${batches//,/ }; do
    awk -v m="$m" -v b="$b" -v v="$v" -v f="$f" -v p="$p" 'BEGIN {
      n = split(v, a, "\n"); for (i = 1; i <= n; i++) { split(a[i], kv, " "); V[kv[1]] = kv[2] }
      n = split(f, a, "\n"); for (i = 1; i <= n; i++) { split(a[i], kv, " "); Fu[kv[1]] = kv[2] }
      n = split(p, a, "\n"); for (i = 1; i <= n; i++) { split(a[i], kv, " "); P[kv[1]] = kv[2] }
      printf "%-24s %5d %10.2f %10.2f %10.2f %6.2fx %6.2fx %9.0f %9.0f %9.0f\n", m, b, V[b], Fu[b], P[b],
        V[b] / P[b], Fu[b] / P[b], V["rss"], Fu["rss"], P["rss"] }'
  done
  if [ "$bf16" = 1 ]; then
    fb=$("$VTL" tests/bench/infer.lua run "$m" "$w" "$threads" "$batches" "$reps" fused-bf16)
    pb=$("$PY" tests/bench/infer.py "$m" "$w" "$threads" "$batches" "$reps" bf16)
    for b in ${batches//,/ }; do
      BF16_ROWS+=$(awk -v m="$m" -v b="$b" -v f="$fb" -v p="$pb" 'BEGIN {
        n = split(f, a, "\n"); for (i = 1; i <= n; i++) { split(a[i], kv, " "); Fu[kv[1]] = kv[2] }
        n = split(p, a, "\n"); for (i = 1; i <= n; i++) { split(a[i], kv, " "); P[kv[1]] = kv[2] }
        printf "%-24s %5d %12.2f %12.2f %6.2fx %9.0f %9.0f\n", m, b, Fu[b], P[b], Fu[b] / P[b], Fu["rss"], P["rss"] }')$'\n'
    done
  fi
  rm -f "$w"
done
if [ "$bf16" = 1 ]; then
  echo "bf16 autocast (vtl: fused model in vtl.autocast(\"bf16\"); PyTorch: torch.autocast(\"cpu\", bfloat16))"
  printf '%-24s %5s %12s %12s %7s %9s %9s\n' model batch vtl_img/s torch_img/s ratio vtl_MiB torch_MiB
  printf '%s' "$BF16_ROWS"
fi
