"""PyTorch twin of tests/gpu/profile_step.lua: torch.profiler's table (self CUDA time) of one
training step of the same model, batch and settings."""
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

name = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 256
cl = name != "vit_small_patch16_224"
if name == "resnet50":
    import torchvision
    m = torchvision.models.resnet50(num_classes=1000)
else:
    import timm
    m = timm.create_model(name, num_classes=1000)
m = m.cuda().train()
if cl:
    m = m.to(memory_format=torch.channels_last)
o = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(batch, 3, 224, 224, device="cuda")
if cl:
    x = x.contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 1000, (batch,), device="cuda")


def step():
    o.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(m(x), y)
    loss.backward()
    o.step()


step()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    step()
    torch.cuda.synchronize()
print("== torch %s batch %d: one step, profiled" % (name, batch))
print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30))
