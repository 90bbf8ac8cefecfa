#!/usr/bin/env bash
# Training-step throughput (forward + backward + SGD momentum) of ResNet-18, MobileNetV2 and
# ViT-S/16 (timm's on the PyTorch side) in vtl and PyTorch, same machine, same thread count, one run; prints images/s, the ratio
# vtl/PyTorch (above 1: vtl faster) and each side's peak RSS; then (BF16=1, the default) the same
# steps with the forward pass in bf16 autocast on both sides, and (CL=1, the default) those bf16
# steps with channels-last activations (vtl: model:to_memory_format("channels_last"); PyTorch:
# model.to(memory_format=torch.channels_last), the input too).
set -euo pipefail
cd "$(dirname "$0")/../.."
VTL=${VTL:-./vtl}
PY=${PY:-.venv/bin/python}
threads=${THREADS:-$(nproc)}
steps=${STEPS:-3}
bf16=${BF16:-1}
cl=${CL:-1}
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; threads: $threads; best of $steps steps"
printf '%-26s %10s %10s %7s %12s %12s\n' config vtl_img/s torch_img/s ratio vtl_rss_MiB torch_rss_MiB
run() { # $1: f32 or bf16; $2: nchw or cl
  local mode=$1 format=$2
  for cfg in "resnet18 32 64" "resnet18 16 224" "mobilenet_v2 32 64" "mobilenet_v2 16 224" "vit_small_patch16_224 8 224"; do
    set -- $cfg "$mode" "$format"
    v=$("$VTL" tests/bench/train_step.lua "$1" "$2" "$3" "$steps" "$threads" $4 $5)
    p=$("$PY" tests/bench/train_step.py "$1" "$2" "$3" "$steps" "$threads" $4 $5)
    read -r vi vr <<<"$v"
    read -r pi pr why <<<"$p"
    awk -v c="$1 b$2 ${3}x$3" -v vi="$vi" -v pi="$pi" -v vr="$vr" -v pr="$pr" -v why="${why:-}" \
      'BEGIN { if (pi == "nan") printf "%-26s %10.2f %10s %7s %12.0f %12s  (PyTorch: %s)\n", c, vi, "-", "-", vr, "-", why;
               else printf "%-26s %10.2f %10.2f %6.2fx %12.0f %12.0f\n", c, vi, pi, vi / pi, vr, pr }'
  done
}
run f32 nchw
if [ "$bf16" = 1 ]; then
  echo "bf16 autocast (vtl.autocast(\"bf16\") / torch.autocast(\"cpu\", bfloat16)):"
  run bf16 nchw
  if [ "$cl" = 1 ]; then
    echo "bf16 autocast, channels-last:"
    run bf16 cl
  fi
fi
