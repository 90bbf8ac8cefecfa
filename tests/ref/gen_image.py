"""Reference images and transform outputs for tests/test_image.lua.

Writes <fixtures>/image/: copies of scikit-image's sample photos as PNG, JPEG, BMP, GIF and TGA,
each with the pixels PIL decodes from it (.npy, u8 H×W×C), and torchvision's outputs for the
deterministic transforms on those pixels (resize in each interpolation, center crop, flips,
to_tensor, normalize, timm's eval preset), plus image_ref.lua listing the cases.
"""
import os
import shutil

import numpy as np
import skimage.data
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

import reflib

IM = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
      "bicubic": InterpolationMode.BICUBIC}


def main():
    out = reflib.fixtures_dir()
    d = os.path.join(out, "image")
    os.makedirs(d, exist_ok=True)
    src = os.path.dirname(skimage.data.__file__)
    lines = []

    def npy(name, arr):
        np.save(os.path.join(d, name), np.ascontiguousarray(arr))
        return name

    # ---- decoding: files and PIL's pixels ----
    decode = []
    for stem in ("astronaut", "camera", "chelsea", "logo"):
        shutil.copy(os.path.join(src, stem + ".png"), os.path.join(d, stem + ".png"))
        decode.append((stem + ".png", "png"))
    for stem in ("rocket", "retina"):
        shutil.copy(os.path.join(src, stem + ".jpg"), os.path.join(d, stem + ".jpg"))
        decode.append((stem + ".jpg", "jpeg"))
    chelsea = Image.open(os.path.join(src, "chelsea.png")).convert("RGB")
    chelsea.save(os.path.join(d, "chelsea_q90.jpg"), quality=90)
    chelsea.convert("L").save(os.path.join(d, "chelsea_gray.jpg"), quality=90)
    chelsea.save(os.path.join(d, "chelsea.bmp"))
    chelsea.save(os.path.join(d, "chelsea.tga"))
    chelsea.convert("P", palette=Image.ADAPTIVE).save(os.path.join(d, "chelsea.gif"))
    # a 4-component (CMYK) JPEG: decoded by stb, not libjpeg
    chelsea.convert("CMYK").save(os.path.join(d, "chelsea_cmyk.jpg"), quality=90)
    npy("chelsea_cmyk.jpg.rgb.npy", np.asarray(chelsea))
    lines.append('  {kind = "cmyk", file = "chelsea_cmyk.jpg", want3 = "chelsea_cmyk.jpg.rgb.npy"},')
    decode += [("chelsea_q90.jpg", "jpeg"), ("chelsea_gray.jpg", "jpeg"), ("chelsea.bmp", "exact"),
               ("chelsea.tga", "exact"), ("chelsea.gif", "exact")]
    for fname, kind in decode:
        im = Image.open(os.path.join(d, fname))
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        a = np.asarray(im)
        if a.ndim == 2:
            a = a[:, :, None]
        want = npy(fname + ".npy", a.astype(np.uint8))
        rgb = np.asarray(im.convert("RGB"))
        want3 = npy(fname + ".rgb.npy", rgb)
        lines.append('  {kind = "decode", file = "%s", fmt = "%s", want = "%s", want3 = "%s", shape = {%d, %d, %d}},'
                     % (fname, kind, want, want3, a.shape[0], a.shape[1], a.shape[2]))

    # ---- transforms on the decoded PNG pixels (torchvision's tensor path) ----
    def chw(a):
        return torch.from_numpy(np.array(a)).permute(2, 0, 1).contiguous()

    def hwc(t):
        return t.permute(1, 2, 0).contiguous().numpy()

    imgs = {"chelsea": np.asarray(chelsea), "astronaut": np.asarray(Image.open(os.path.join(src, "astronaut.png")).convert("RGB")),
            "camera": np.asarray(Image.open(os.path.join(src, "camera.png")))[:, :, None]}
    n = 0
    for img_name, sizes in (("chelsea", [224, [100, 150], [400, 600], 37, [299, 450]]),
                            ("astronaut", [224, [97, 333]]), ("camera", [160])):
        x = chw(imgs[img_name])
        for size in sizes:
            for interp in ("bilinear", "bicubic", "nearest"):
                for aa in (True, False):
                    if interp == "nearest" and aa:
                        continue
                    y = F.resize(x, size if isinstance(size, list) else [size], IM[interp], antialias=aa)
                    n += 1
                    name = "resize_%d.npy" % n
                    npy(name, hwc(y))
                    lines.append('  {kind = "resize", image = "%s.png", size = %s, interpolation = "%s", antialias = %s, want = "%s"},'
                                 % (img_name, reflib.lua_value(size), interp, "true" if aa else "false", name))
    # float input: the same resize on to_tensor's output
    xf = F.to_tensor(chelsea)
    for interp in ("bilinear", "bicubic"):
        y = F.resize(xf, [150, 200], IM[interp], antialias=True)
        n += 1
        name = "resize_f_%d.npy" % n
        npy(name, y.numpy())
        lines.append('  {kind = "resize_f32", image = "chelsea.png", size = {150, 200}, interpolation = "%s", want = "%s"},'
                     % (interp, name))

    # center crop (including crops larger than the image: zero padding), flips, to_tensor, normalize
    x = chw(imgs["chelsea"])
    for size in (224, [100, 301], [300, 451], [320, 460], [301, 10]):
        y = F.center_crop(x, size if isinstance(size, list) else [size])
        n += 1
        name = "crop_%d.npy" % n
        npy(name, hwc(y))
        lines.append('  {kind = "center_crop", image = "chelsea.png", size = %s, want = "%s"},' % (reflib.lua_value(size), name))
    npy("hflip.npy", hwc(F.hflip(x)))
    npy("vflip.npy", hwc(F.vflip(x)))
    lines.append('  {kind = "flip", image = "chelsea.png", hflip = "hflip.npy", vflip = "vflip.npy"},')
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    t = F.to_tensor(chelsea)
    npy("to_tensor.npy", t.numpy())
    npy("normalize.npy", F.normalize(t, mean, std).numpy())
    lines.append('  {kind = "to_tensor", image = "chelsea.png", to_tensor = "to_tensor.npy", normalize = "normalize.npy", '
                 'mean = %s, std = %s},' % (reflib.lua_value(mean), reflib.lua_value(std)))

    # timm's eval preset: resize short side to floor(size / crop_pct), center crop, to tensor, normalize
    for img_name, size, crop_pct, interp in (("chelsea", 224, 0.875, "bicubic"), ("astronaut", 224, 0.9, "bilinear"),
                                             ("chelsea", 192, 1.0, "bicubic")):
        scale = int(size / crop_pct)
        x = chw(imgs[img_name])
        y = F.resize(x, [scale], IM[interp], antialias=True)
        y = F.center_crop(y, [size, size])
        y = F.normalize(y.float().div(255), mean, std)
        n += 1
        name = "eval_%d.npy" % n
        npy(name, y.numpy())
        lines.append('  {kind = "eval", image = "%s.png", cfg = {input_size = {3, %d, %d}, crop_pct = %r, interpolation = "%s", '
                     'mean = %s, std = %s}, want = "%s"},' % (img_name, size, size, crop_pct, interp,
                                                             reflib.lua_value(mean), reflib.lua_value(std), name))

    text = "-- Generated by tests/ref/gen_image.py (torchvision + PIL); do not edit.\nreturn {\n" + "\n".join(lines) + "\n}\n"
    reflib.write_lua(os.path.join(out, "image_ref.lua"), text)
    print("gen_image: wrote %d cases to %s" % (len(lines), os.path.join(out, "image_ref.lua")))


if __name__ == "__main__":
    main()
