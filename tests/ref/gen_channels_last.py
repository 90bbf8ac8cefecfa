# Channels-last references for tests/test_channels_last.lua: torchvision's ResNet-18 and
# MobileNetV3-Small (random weights, no dropout), converted with
# model.to(memory_format=torch.channels_last) and fed a channels-last batch, run for one
# training forward and backward in f32. Writes the initial weights, the input, the logits, the
# loss, every parameter's gradient, and the strides PyTorch gives the activations.
import os, sys, torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

out = sys.argv[1]
torch.manual_seed(0)


def run(name, model, x, y):
    init = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    model = model.to(memory_format=torch.channels_last)
    model.train()
    xc = x.contiguous(memory_format=torch.channels_last)
    logits = model(xc)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    res = {"x": x, "y": y + 1, "logits": logits.detach(), "loss": loss.detach().reshape(1)}
    for k, p in model.named_parameters():
        res["grad." + k] = p.grad.contiguous()
    save_file(init, os.path.join(out, f"cl_{name}_init.safetensors"))
    save_file(res, os.path.join(out, f"cl_{name}_ref.safetensors"))


run("resnet18", torchvision.models.resnet18(num_classes=5), torch.randn(4, 3, 64, 64), torch.randint(0, 5, (4,)))
run("mobilenet_v3_small", torchvision.models.mobilenet_v3_small(num_classes=5, dropout=0.0),
    torch.randn(4, 3, 64, 64), torch.randint(0, 5, (4,)))

# strides of ops on a channels-last (2, 6, 5, 7) input, as PyTorch lays their outputs out
x = torch.randn(2, 6, 5, 7).contiguous(memory_format=torch.channels_last)
w = torch.randn(8, 6, 3, 3)
bn = torch.nn.BatchNorm2d(6)
ops = {
    "contiguous": x,
    "conv2d": F.conv2d(x, w, padding=1),
    "depthwise": F.conv2d(x, torch.randn(6, 1, 3, 3), padding=1, groups=6),
    "batch_norm": bn(x),
    "relu": F.relu(x),
    "hardswish": F.hardswish(x),
    "add": x + x,
    "add_bias": x + torch.randn(1, 6, 1, 1),
    "mul_scale": x * torch.randn(2, 6, 1, 1),
    "max_pool2d": F.max_pool2d(x, 3, 2, 1),
    "bf16": x.to(torch.bfloat16),
}
strides = {k: torch.tensor(v.stride(), dtype=torch.int64) for k, v in ops.items()}
save_file(strides, os.path.join(out, "cl_strides.safetensors"))
print("gen_channels_last: wrote 2 models and %d stride sets" % len(strides))
