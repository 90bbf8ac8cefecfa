#!/usr/bin/env bash
# Data loading throughput, vtl vs torchvision + PIL + torch DataLoader, same machine, same run,
# same worker count: JPEG decode + RandomResizedCrop(224) + flip + ColorJitter + ToTensor +
# Normalize on N real JPEG photos (NJPEG, default 400), and Fashion-MNIST's training set with a
# light chain. Prints images/s of each and the ratio vtl/torch (above 1: vtl faster).
#   WORKERS (default: cores), EPOCHS (default 2; the best epoch counts), NJPEG
set -euo pipefail
cd "$(dirname "$0")/../.."
VTL=${VTL:-./vtl}
PY=${PY:-.venv/bin/python}
workers=${WORKERS:-$(nproc)}
epochs=${EPOCHS:-2}
n=${NJPEG:-400}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" tests/bench/make_jpegs.py "$tmp/jpeg" "$n"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; workers: $workers; best of $epochs epochs"
printf '%-34s %12s %12s %7s\n' case vtl_img/s torch_img/s ratio
row() {
  local name=$1 v=$2 p=$3
  awk -v n="$name" -v v="$v" -v p="$p" 'BEGIN { printf "%-34s %12.1f %12.1f %6.2fx\n", n, v, p, v / p }'
}
v=$("$VTL" tests/bench/loader.lua jpeg "$tmp/jpeg" "$workers" "$epochs" | awk '{print $2}')
p=$("$PY" tests/bench/loader.py jpeg "$tmp/jpeg" "$workers" "$epochs" | awk '{print $2}')
row "jpeg rrc224+flip+jitter ($n files)" "$v" "$p"
# Fashion-MNIST: torchvision reads the raw IDX files from <root>/FashionMNIST/raw
fm=$("$VTL" -e 'io.write(require("vtl.data").FASHION_MNIST_ROOT or "")' 2>/dev/null || true)
if [ -n "$fm" ] && [ -d "$fm" ]; then
  mkdir -p "$tmp/fm/FashionMNIST/raw"
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ -f "$fm/$f.gz" ]; then gunzip -c "$fm/$f.gz" > "$tmp/fm/FashionMNIST/raw/$f"; else cp "$fm/$f" "$tmp/fm/FashionMNIST/raw/$f"; fi
  done
  v=$("$VTL" tests/bench/loader.lua fmnist - "$workers" "$epochs" | awk '{print $2}')
  p=$("$PY" tests/bench/loader.py fmnist "$tmp/fm" "$workers" "$epochs" | awk '{print $2}')
  row "fashion-mnist crop+flip (60000)" "$v" "$p"
else
  echo "fashion-mnist: files not found (make setup installs dataset-fashion-mnist); skipped"
fi
