"""Reference outputs for tests/test_transforms.lua: torchvision.transforms.functional (tensor path)
on scikit-image's photos (astronaut, coffee, chelsea; every second pixel) with fixed parameters.

Writes <fixtures>/transforms/: each photo's pixels (u8 H×W×C .npy) and, per case, torchvision's
output (u8 H×W×C for u8 inputs, f32 C×H×W for float inputs made by to_tensor), plus
transforms_ref.lua listing the cases as {name, op, image, dtype, args, want}: the Lua test calls
vtl.transforms[op](img, table.unpack(args)) and compares with want.
"""
import math
import os

import numpy as np
import skimage.data
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from torchvision.transforms import InterpolationMode

import reflib

IM = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR}


def main():
    out = reflib.fixtures_dir()
    d = os.path.join(out, "transforms")
    os.makedirs(d, exist_ok=True)
    # every second pixel of each photo (256×256, 200×300, 150×226) keeps the fixtures small
    photos = {name: np.ascontiguousarray(getattr(skimage.data, name)()[::2, ::2])
              for name in ("astronaut", "coffee", "chelsea")}
    photos["coffee_low"] = photos["coffee"] // 3 + 60  # low contrast: autocontrast and equalize have work to do
    for name, a in photos.items():
        np.save(os.path.join(d, name + ".npy"), a)

    cases = []

    def add(op, image, dtype, args, fn):
        """fn(x) on the photo as torchvision sees it: u8 C×H×W or f32 C×H×W in [0, 1]."""
        x = torch.from_numpy(photos[image]).permute(2, 0, 1).contiguous()
        if dtype == "f32":
            x = x.float().div(255)
        y = fn(x)
        name = "%s_%d" % (op, len(cases) + 1)
        arr = y.permute(1, 2, 0).contiguous().numpy() if dtype == "u8" else y.contiguous().numpy()
        np.save(os.path.join(d, name + ".npy"), np.ascontiguousarray(arr))
        cases.append((name, 'op = "%s", image = "%s", dtype = "%s", args = %s, want = "%s.npy"'
                      % (op, image, dtype, reflib.lua_value(args), name)))

    # ---- pad and crop ----
    for image, dtype in (("chelsea", "u8"), ("coffee", "f32")):
        for padding in (3, [5, 2], [1, 2, 3, 4], [7, 0, 0, 9]):
            for mode in ("constant", "edge", "reflect", "symmetric"):
                fill = (7 if dtype == "u8" else 0.25) if mode == "constant" else 0
                add("pad", image, dtype, [padding, {"padding_mode": mode, "fill": fill}],
                    lambda x, p=padding, m=mode, f=fill: F.pad(x, p, fill=f, padding_mode=m))
    add("crop", "astronaut", "u8", [11, 21, 100, 150], lambda x: F.crop(x, 10, 20, 100, 150))
    add("crop", "astronaut", "u8", [-4, 240, 30, 40], lambda x: F.crop(x, -5, 239, 30, 40))

    # ---- rotate and affine (nearest and bilinear, fills, expand, centre) ----
    for image, dtype in (("chelsea", "u8"), ("astronaut", "u8"), ("coffee", "f32")):
        for angle in (30.0, -45.0, 90.0, 17.5, 180.0):
            for interp in ("nearest", "bilinear"):
                add("rotate", image, dtype, [angle, {"interpolation": interp}],
                    lambda x, a=angle, i=interp: F.rotate(x, a, IM[i]))
        fill = [10.0, 200.0, 30.0] if dtype == "u8" else [0.1, 0.8, 0.3]
        for interp in ("nearest", "bilinear"):
            add("rotate", image, dtype, [33.0, {"interpolation": interp, "expand": True}],
                lambda x, i=interp: F.rotate(x, 33.0, IM[i], expand=True))
            add("rotate", image, dtype, [-20.0, {"interpolation": interp, "fill": fill}],
                lambda x, i=interp: F.rotate(x, -20.0, IM[i], fill=fill))
            add("rotate", image, dtype, [25.0, {"interpolation": interp, "center": [40, 70], "fill": fill[0]}],
                lambda x, i=interp: F.rotate(x, 25.0, IM[i], center=[40, 70], fill=[fill[0]]))
            add("rotate", image, dtype, [-60.0, {"interpolation": interp, "expand": True, "fill": fill}],
                lambda x, i=interp: F.rotate(x, -60.0, IM[i], expand=True, fill=fill))
        for angle, translate, scale, shear in ((0.0, [12, -7], 1.0, [0.0, 0.0]), (15.0, [0, 0], 1.3, [0.0, 0.0]),
                                               (0.0, [0, 0], 0.7, [20.0, 0.0]), (-10.0, [5, 9], 0.9, [-8.0, 12.0]),
                                               (40.0, [-20, 3], 1.1, [5.0, 5.0])):
            for interp in ("nearest", "bilinear"):
                add("affine", image, dtype, [{"angle": angle, "translate": translate, "scale": scale, "shear": shear,
                                              "interpolation": interp}],
                    lambda x, a=angle, t=translate, s=scale, sh=shear, i=interp: F.affine(x, a, t, s, sh, IM[i]))
        for interp in ("nearest", "bilinear"):
            add("affine", image, dtype, [{"angle": 12.0, "translate": [3, 4], "scale": 0.8, "shear": [10.0, -5.0],
                                          "interpolation": interp, "fill": fill}],
                lambda x, i=interp: F.affine(x, 12.0, [3, 4], 0.8, [10.0, -5.0], IM[i], fill=fill))
            # RandAugment's ShearX: shear about the top-left corner
            add("affine", image, dtype, [{"shear": [math.degrees(math.atan(0.3)), 0.0], "center": [0, 0],
                                          "interpolation": interp, "fill": fill}],
                lambda x, i=interp: F.affine(x, 0.0, [0, 0], 1.0, [math.degrees(math.atan(0.3)), 0.0], IM[i],
                                             fill=fill, center=[0, 0]))

    # ---- colour ----
    for image, dtype in (("chelsea", "u8"), ("coffee", "u8"), ("astronaut", "f32")):
        for f in (0.5, 1.7):
            add("adjust_brightness", image, dtype, [f], lambda x, f=f: F.adjust_brightness(x, f))
        for f in (0.4, 1.6):
            add("adjust_contrast", image, dtype, [f], lambda x, f=f: F.adjust_contrast(x, f))
        for f in (0.0, 0.5, 2.0):
            add("adjust_saturation", image, dtype, [f], lambda x, f=f: F.adjust_saturation(x, f))
        for f in (-0.3, 0.1, 0.45, -0.5):
            add("adjust_hue", image, dtype, [f], lambda x, f=f: F.adjust_hue(x, f))
        for n in (1, 3):
            add("rgb_to_grayscale", image, dtype, [n], lambda x, n=n: F.rgb_to_grayscale(x, n))
        for k, s in ((5, 1.5), ([3, 7], [0.8, 2.0]), (9, 3.0), (23, 1.0)):
            add("gaussian_blur", image, dtype, [k, s], lambda x, k=k, s=s: F.gaussian_blur(x, k, s))
        add("autocontrast", image, dtype, [], F.autocontrast)
        for f in (0.3, 2.0):
            add("adjust_sharpness", image, dtype, [f], lambda x, f=f: F.adjust_sharpness(x, f))
        add("invert", image, dtype, [], F.invert)
        thr = 128.0 if dtype == "u8" else 0.5
        add("solarize", image, dtype, [thr], lambda x, t=thr: F.solarize(x, t))
        if dtype == "u8":
            add("equalize", image, dtype, [], F.equalize)
            for bits in (2, 5):
                add("posterize", image, dtype, [bits], lambda x, b=bits: F.posterize(x, b))
    add("autocontrast", "coffee_low", "u8", [], F.autocontrast)
    add("autocontrast", "coffee_low", "f32", [], F.autocontrast)
    add("equalize", "coffee_low", "u8", [], F.equalize)

    # ---- erase (value per channel, scalar) ----
    add("erase", "chelsea", "f32", [21, 31, 50, 80, [0.5, -1.0, 2.0]],
        lambda x: F.erase(x, 20, 30, 50, 80, torch.tensor([0.5, -1.0, 2.0])[:, None, None]))
    add("erase", "chelsea", "f32", [1, 1, 150, 10, 0.0], lambda x: F.erase(x, 0, 0, 150, 10, torch.tensor(0.0)))

    # ---- resized crop (RandomResizedCrop's deterministic part) ----
    add("resized_crop", "astronaut", "u8", [51, 31, 150, 100, [112, 112], {"interpolation": "bilinear"}],
        lambda x: F.resized_crop(x, 50, 30, 150, 100, [112, 112], InterpolationMode.BILINEAR, antialias=True))

    # ---- RandAugment / TrivialAugmentWide ops at fixed magnitudes (torchvision's _apply_op) ----
    from torchvision.transforms.autoaugment import _apply_op
    for op, mag in (("ShearX", 0.21), ("ShearY", -0.3), ("TranslateX", 41.7), ("TranslateY", -17.0), ("Rotate", -23.0),
                    ("Brightness", 0.6), ("Color", -0.5), ("Contrast", 0.45), ("Sharpness", -0.9), ("Posterize", 4.0),
                    ("Solarize", 170.0), ("AutoContrast", 0.0), ("Equalize", 0.0), ("Identity", 0.0)):
        for fill in (None, [20.0, 40.0, 60.0]):
            if fill is not None and op not in ("ShearX", "Rotate", "TranslateY"):
                continue
            opts = {"interpolation": "nearest"} if fill is None else {"interpolation": "bilinear", "fill": fill}
            mode = InterpolationMode.NEAREST if fill is None else InterpolationMode.BILINEAR
            add("apply_policy_op", "coffee", "u8", [op, mag, opts],
                lambda x, o=op, m=mag, md=mode, f=fill: _apply_op(x, o, m, interpolation=md, fill=f))

    reflib.write_cases(out, "transforms_ref.lua", __file__, cases)

    # ---- parameter distributions of the random transforms (torchvision's get_params) ----
    torch.manual_seed(0)
    img_sizes = [(300, 451), (100, 800), (64, 64)]
    n = 20000
    lines = []
    for h, w in img_sizes:
        x = torch.empty(1, h, w)
        fr, lr, fb = [], [], 0
        for _ in range(n):
            i, j, ch, cw = T.RandomResizedCrop.get_params(x, [0.08, 1.0], [3 / 4, 4 / 3])
            fr.append(ch * cw / (h * w))
            lr.append(math.log(cw / ch))
        fr, lr = np.array(fr), np.array(lr)
        lines.append("  {kind = \"rrc\", h = %d, w = %d, n = %d, area_mean = %r, area_q = {%r, %r, %r}, logratio_mean = %r, "
                     "logratio_std = %r, full = %r}," % (h, w, n, fr.mean(), *np.quantile(fr, [0.1, 0.5, 0.9]).tolist(),
                                                       lr.mean(), lr.std(), float((fr >= 0.999).mean())))
    for h, w in ((100, 120), (224, 224)):
        x = torch.zeros(3, h, w)
        ar, hit = [], 0
        for _ in range(n):
            i, j, eh, ew, v = T.RandomErasing.get_params(x, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=[0.0])
            if eh < h or ew < w:
                hit += 1
                ar.append(eh * ew / (h * w))
        ar = np.array(ar)
        lines.append("  {kind = \"erase\", h = %d, w = %d, n = %d, erased = %r, area_mean = %r, area_q = {%r, %r, %r}},"
                     % (h, w, n, hit / n, ar.mean(), *np.quantile(ar, [0.1, 0.5, 0.9]).tolist()))
    reflib.write_lua(os.path.join(out, "transforms_stats.lua"),
                     "-- Generated by tests/ref/gen_transforms.py (torchvision); do not edit.\nreturn {\n"
                     + "\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    main()
