"""References for tests/test_plot.lua.

Writes <fixtures>/plot/ and plot_ref.lua:
  - confusion matrices from seeded random predictions, raw and normalised by sklearn
    (normalize = "true", "pred", "all"), one with a class that never occurs;
  - a photo crop (scikit-image's chelsea) as u8 H×W×C, the same image as torchvision's
    normalised f32 C×H×W tensor (ImageNet mean/std), and torchvision's resizes of it to the
    sizes an image grid tile gives it (bilinear with antialias, nearest for enlargements).
"""
import os

import numpy as np
import skimage.data
import torch
import torchvision.transforms.functional as F
from sklearn.metrics import confusion_matrix
from torchvision.transforms import InterpolationMode

import reflib

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def main():
    out = reflib.fixtures_dir()
    d = os.path.join(out, "plot")
    os.makedirs(d, exist_ok=True)
    draws = reflib.Draws(6)
    cases = []

    # ---- confusion matrices vs sklearn ----
    for k, n, missing in ((4, 200, None), (7, 500, 3)):
        target = draws.randint(0, k, n).numpy()
        # mostly right, so the diagonal dominates; some random confusions
        noise = draws.randint(0, k, n).numpy()
        keep = draws.rand(n).numpy() < 0.6
        pred = np.where(keep, target, noise)
        if missing is not None:  # a class absent from the targets: an all-zero row
            target = np.where(target == missing, (missing + 1) % k, target)
        labels = list(range(k))
        fields = ["k = %d" % k, "cm = %s" % reflib.lua_value(confusion_matrix(target, pred, labels=labels).tolist())]
        for mode in ("true", "pred", "all"):
            m = confusion_matrix(target, pred, labels=labels, normalize=mode)
            fields.append("norm_%s = %s" % (mode, reflib.lua_value(m.astype(float).tolist())))
        cases.append(("cm %dx%d" % (k, k) + (" missing class" if missing is not None else ""),
                      'kind = "cm", ' + ", ".join(fields)))

    # ---- images vs torchvision ----
    img = skimage.data.chelsea()[40:88, 150:214]  # 48×64×3 u8
    np.save(os.path.join(d, "cat.npy"), np.ascontiguousarray(img))
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)  # u8 C×H×W
    xn = F.normalize(x.to(torch.float32) / 255, MEAN, STD)
    np.save(os.path.join(d, "cat_norm.npy"), xn.numpy())
    # tile 96: scale min(96/48, 96/64) = 1.5 -> 72×96, bilinear with antialias
    r = F.resize(x, [72, 96], interpolation=InterpolationMode.BILINEAR, antialias=True)
    np.save(os.path.join(d, "cat_72x96.npy"), np.ascontiguousarray(r.permute(1, 2, 0).numpy()))
    # tile 32: scale 0.5 -> 24×32, bilinear with antialias (downscale)
    r = F.resize(x, [24, 32], interpolation=InterpolationMode.BILINEAR, antialias=True)
    np.save(os.path.join(d, "cat_24x32.npy"), np.ascontiguousarray(r.permute(1, 2, 0).numpy()))
    # a 12×16 patch into tile 64: scale 4 -> 48×64, nearest
    small = x[:, 10:22, 20:36]
    np.save(os.path.join(d, "patch.npy"), np.ascontiguousarray(small.permute(1, 2, 0).numpy()))
    r = F.resize(small, [48, 64], interpolation=InterpolationMode.NEAREST)
    np.save(os.path.join(d, "patch_48x64.npy"), np.ascontiguousarray(r.permute(1, 2, 0).numpy()))
    cases.append(("images", 'kind = "images", mean = %s, std = %s' % (reflib.lua_value(MEAN), reflib.lua_value(STD))))

    reflib.write_cases(out, "plot_ref.lua", __file__, cases)


if __name__ == "__main__":
    main()
