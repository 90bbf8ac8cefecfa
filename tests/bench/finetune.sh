#!/usr/bin/env bash
# Whole-epoch fine-tuning time of the flagship setting, vtl vs PyTorch, same machine, same run:
# EfficientNet-Lite0 (ImageNet weights) on PER_CLASS Fashion-MNIST images per class at SIZE px,
# fine_tune(EPOCHS) after one frozen epoch, for each seed in SEEDS. Prints per seed the mean
# epoch time of each side (frozen epoch and unfrozen epochs apart), the ratio torch/vtl (above 1:
# vtl faster) and the test accuracy of each on the first TEST_N test images.
#   THREADS (default: cores), WORKERS (2), SEEDS ("1 2 3"), EPOCHS (2), PER_CLASS (100), SIZE (112), TEST_N (2000)
set -euo pipefail
cd "$(dirname "$0")/../.."
VTL=${VTL:-./vtl}
PY=${PY:-.venv/bin/python}
threads=${THREADS:-$(nproc)}
workers=${WORKERS:-2}
seeds=${SEEDS:-"1 2 3"}
epochs=${EPOCHS:-2}
per_class=${PER_CLASS:-100}
size=${SIZE:-112}
test_n=${TEST_N:-2000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; threads $threads, workers $workers"
echo "setting: efficientnet_lite0, $per_class images/class, ${size}px, 1 frozen + $epochs epochs, test on $test_n"
printf '%-5s %12s %12s %12s %12s %8s %9s %9s\n' seed vtl_frozen_s torch_frozen_s vtl_epoch_s torch_epoch_s ratio vtl_acc torch_acc
for s in $seeds; do
  v=$("$VTL" tests/bench/finetune.lua "$tmp/run$s" "$s" "$epochs" "$per_class" "$size" "$threads" "$workers" "$test_n" | tail -1)
  p=$("$PY" tests/bench/finetune.py "$tmp/run$s" "$s" "$epochs" "$per_class" "$size" "$threads" "$workers" "$test_n" | tail -1)
  "$PY" - "$s" "$v" "$p" <<'PYEOF'
import json, sys
s, v, p = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
vt, pt = v["epoch_times"], p["epoch_times"]
vf, pf = vt[0], pt[0]
ve, pe = sum(vt[1:]) / max(len(vt) - 1, 1), sum(pt[1:]) / max(len(pt) - 1, 1)
print("%-5s %12.1f %12.1f %12.1f %12.1f %7.2fx %9.4f %9.4f" % (s, vf, pf, ve, pe, (sum(pt) / sum(vt)), v["accuracy"], p["accuracy"]))
PYEOF
done
