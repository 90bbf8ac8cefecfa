"""PyTorch twin of tests/gpu/profile_step.lua: torch.profiler's table (self CUDA time) of one
training step of the same model, batch and settings."""
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from gpu_step import Step  # noqa: E402

name = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 256
s = Step(name, batch, name != "vit_small_patch16_224")
s.step()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    s.step()
    torch.cuda.synchronize()
print("== torch %s batch %d: one step, profiled" % (name, batch))
print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30))
