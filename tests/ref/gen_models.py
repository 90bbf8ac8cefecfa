#!/usr/bin/env python3
"""Reference models for tests/test_models.lua: the zoo architectures built by torchvision
(ResNet, MobileNet, EfficientNet-B0), timm (ViT) and a PyTorch twin of vtl's small_cnn, with
seeded random weights made realistic (random norm affines and biases, batch-norm running
statistics measured on random batches).

Usage:
  gen_models.py <fixtures_dir>
      writes <fixtures_dir>/models/ for the models tested in depth (FIXTURES below):
        <name>.safetensors   the state_dict (metadata: "keys" in torch's order, "shapes",
                             "num_params", "macs" = fvcore's count at the eval input)
        <name>.pth           the same state_dict through torch.save
        <name>_io.safetensors
            x, logits, features     eval-mode input, logits and forward_features output
            train/x, train/y        a training batch (y 1-based)
            train/loss              cross-entropy of that batch in train mode (dropout off)
            after/<key>             the state_dict after one SGD step (lr 0.1) on that loss
            (resnet18 only) in1/x, in1/logits, in5/x, in5/logits: in_chans 1 and 5, with the
                             first conv adapted by timm's adapt_input_conv
        macs_resnet18_224.txt  fvcore's count for ResNet-18 at 1x3x224x224
  gen_models.py make <dir> <name>:<batch>:<size> ...
      reference models on demand (the large ones): <dir>/<name>.safetensors as above (without
      "macs") and <dir>/<name>_io.safetensors with x and logits.
  gen_models.py check <dir> <name>[:<num_classes>[:<img_size>]] ...
      loads the weights vtl wrote to <dir>/<name>.safetensors into the torch model with
      load_state_dict(strict=True), runs x of <dir>/<name>_io.safetensors in eval mode and
      compares with its logits; prints the errors, exits 0 when every relative error is within
      1e-4, 1 when one is not, 2 when weights do not load.
"""
import copy
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file
from torchvision.ops.misc import Conv2dNormActivation
from torchvision.ops.stochastic_depth import StochasticDepth

import timm
from timm.layers import DropPath
from timm.models import adapt_input_conv

TOL = 1e-4


class SmallCNN(nn.Module):
    """vtl's small_cnn (lua/vtl/models/small.lua)."""
    LAYERS = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1))

    def __init__(self, num_classes=10, in_chans=3, drop_rate=0.1):
        super().__init__()
        layers, cin = [], in_chans
        for cout, stride in self.LAYERS:
            layers.append(Conv2dNormActivation(cin, cout, 3, stride=stride))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


TORCHVISION = {
    "resnet18": torchvision.models.resnet18, "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50, "resnet101": torchvision.models.resnet101,
    "mobilenet_v2": torchvision.models.mobilenet_v2, "mobilenet_v3_small": torchvision.models.mobilenet_v3_small,
    "mobilenet_v3_large": torchvision.models.mobilenet_v3_large, "efficientnet_b0": torchvision.models.efficientnet_b0,
}


def build(name, num_classes=1000, img_size=None):
    if name == "small_cnn":
        return SmallCNN(num_classes)
    if name in TORCHVISION:
        return TORCHVISION[name](num_classes=num_classes)
    kw = {"num_classes": num_classes}
    if img_size:
        kw["img_size"] = img_size
    return timm.create_model(name, pretrained=False, **kw)


def forward_features(name, model, x):
    if name.startswith("resnet"):
        m = model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))
    if name.startswith("vit"):
        return model.forward_features(x)
    return model.features(x)


def randomize(model, gen, in_shape):
    """Random norm affines and biases, then batch-norm running statistics averaged over two
    random batches (so eval-mode activations keep a sensible scale in deep networks). As in
    trained ResNets, the last norm of each residual branch scales by about 0.25."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.02)
        for m in model.modules():
            if isinstance(m, torchvision.models.resnet.BasicBlock):
                m.bn2.weight.mul_(0.25)
            elif isinstance(m, torchvision.models.resnet.Bottleneck):
                m.bn3.weight.mul_(0.25)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if bns:
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            for _ in range(2):
                model(torch.randn(4, *in_shape[1:], generator=gen))
        for m, mom in zip(bns, momenta):
            m.momentum = mom
    model.eval()


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        elif isinstance(m, StochasticDepth):
            m.p = 0.0
        elif isinstance(m, DropPath):
            m.drop_prob = 0.0


def fvcore_macs(model, x):
    from fvcore.nn import FlopCountAnalysis
    m = copy.deepcopy(model).eval()
    f = FlopCountAnalysis(m, x)
    f.unsupported_ops_warnings(False)
    f.uncalled_modules_warnings(False)
    return int(f.total())


def state(model):
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def weights_meta(model, macs=None):
    sd = model.state_dict()
    meta = {
        "keys": "\n".join(sd.keys()),
        "shapes": json.dumps([list(v.shape) for v in sd.values()]),
        "num_params": str(sum(p.numel() for p in model.parameters())),
    }
    if macs is not None:
        meta["macs"] = str(macs)
    return meta


def make_model(name, seed, in_shape, num_classes=1000):
    torch.manual_seed(seed)
    img = in_shape[-1] if name.startswith("vit") else None
    model = build(name, num_classes, img)
    gen = torch.Generator().manual_seed(seed + 1)
    randomize(model, gen, in_shape)
    return model, gen


# name -> (seed, eval input shape, train batch shape, num_classes)
FIXTURES = {
    "small_cnn": (1, (2, 3, 32, 32), (4, 3, 32, 32), 10),
    "resnet18": (2, (2, 3, 64, 64), (4, 3, 64, 64), 1000),
    "mobilenet_v2": (3, (2, 3, 64, 64), (4, 3, 64, 64), 1000),
    "mobilenet_v3_small": (4, (2, 3, 64, 64), (4, 3, 64, 64), 1000),
    "mobilenet_v3_large": (5, (2, 3, 64, 64), (4, 3, 64, 64), 1000),
    "efficientnet_b0": (6, (2, 3, 64, 64), (4, 3, 64, 64), 1000),
    "vit_tiny_patch16_224": (7, (2, 3, 64, 64), (4, 3, 64, 64), 1000),
}


def write_fixture(out, name):
    seed, eval_shape, train_shape, num_classes = FIXTURES[name]
    model, gen = make_model(name, seed, eval_shape, num_classes)
    x = torch.randn(eval_shape, generator=gen)
    macs = fvcore_macs(model, x)
    sd = state(model)
    save_file(sd, os.path.join(out, name + ".safetensors"), metadata=weights_meta(model, macs))
    torch.save(sd, os.path.join(out, name + ".pth"))
    io = {}
    with torch.no_grad():
        io["x"] = x
        io["logits"] = model(x)
        io["features"] = forward_features(name, model, x)

    if name == "resnet18":
        for c in (1, 5):
            m = copy.deepcopy(model)
            w = adapt_input_conv(c, m.conv1.weight.detach())
            m.conv1 = nn.Conv2d(c, 64, 7, 2, 3, bias=False)
            with torch.no_grad():
                m.conv1.weight.copy_(w)
            xc = torch.randn(1, c, 32, 32, generator=gen)
            with torch.no_grad():
                io["in%d/x" % c], io["in%d/logits" % c] = xc, m(xc)

    # one SGD step in train mode, dropout and stochastic depth off
    no_dropout(model)
    model.train()
    tx = torch.randn(train_shape, generator=gen)
    ty = torch.randint(0, num_classes, (train_shape[0],), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    loss = F.cross_entropy(model(tx), ty)
    loss.backward()
    opt.step()
    io["train/x"], io["train/y"], io["train/loss"] = tx, ty + 1, loss.detach().reshape(1)
    for k, v in state(model).items():
        io["after/" + k] = v

    save_file({k: v.detach().contiguous() for k, v in io.items()}, os.path.join(out, name + "_io.safetensors"))
    print("gen_models: %s (%d parameters, %d MACs at %s)" % (name, sum(p.numel() for p in model.parameters()),
                                                             macs, "x".join(map(str, eval_shape))))


def main_fixtures(root):
    out = os.path.join(root, "models")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    for name in FIXTURES:
        write_fixture(out, name)
    torch.manual_seed(0)
    m = torchvision.models.resnet18()
    macs = fvcore_macs(m, torch.zeros(1, 3, 224, 224))
    with open(os.path.join(out, "macs_resnet18_224.txt"), "w") as f:
        f.write("%d\n" % macs)
    print("gen_models: ResNet-18 at 224: %d MACs" % macs)


def main_make(out, specs):
    for spec in specs:
        name, batch, size = spec.split(":")
        seed = 100 + sum(map(ord, name))
        shape = (int(batch), 3, int(size), int(size))
        model, gen = make_model(name, seed, shape)
        x = torch.randn(shape, generator=gen)
        save_file(state(model), os.path.join(out, name + ".safetensors"), metadata=weights_meta(model))
        with torch.no_grad():
            logits = model(x)
        save_file({"x": x, "logits": logits}, os.path.join(out, name + "_io.safetensors"))
    return 0


def check_one(d, name, num_classes=1000, img_size=None):
    weights = os.path.join(d, name + ".safetensors")
    if not os.path.exists(weights):
        print("check: %s: no %s" % (name, weights))
        return 1
    io = load_file(os.path.join(d, name + "_io.safetensors"))
    model = build(name, num_classes, img_size)
    try:
        model.load_state_dict(load_file(weights), strict=True)
    except RuntimeError as e:
        print("check: %s: %s does not load into the torch model: %s" % (name, weights, e))
        return 2
    model.eval()
    with torch.no_grad():
        got = model(io["x"])
    want = io["logits"]
    if got.shape != want.shape:
        print("check: %s: logits shape %s, vtl's %s" % (name, tuple(got.shape), tuple(want.shape)))
        return 1
    err = (got - want).abs().max().item()
    rel = err / max(want.abs().max().item(), 1e-30)
    print("check: %s: vtl's weights load with strict=True; eval logits max |torch - vtl| = %.3g (relative %.3g)"
          % (name, err, rel))
    return 0 if rel <= TOL else 1


def main_check(d, specs):
    worst = 0
    for spec in specs:
        parts = spec.split(":")
        name = parts[0]
        num_classes = int(parts[1]) if len(parts) > 1 else 1000
        img_size = int(parts[2]) if len(parts) > 2 else None
        worst = max(worst, check_one(d, name, num_classes, img_size))
    return worst


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) >= 3 and a[0] == "make":
        sys.exit(main_make(a[1], a[2:]))
    elif len(a) >= 3 and a[0] == "check":
        sys.exit(main_check(a[1], a[2:]))
    elif len(a) == 1:
        main_fixtures(a[0])
    else:
        sys.exit(__doc__)
