"""PyTorch twin of tests/gpu/step_phases.lua: the same phases and layers, the same timing."""
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from gpu_step import Step  # noqa: E402

name = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 256
cl = name != "vit_small_patch16_224"


def best(fn, reps):
    fn()
    torch.cuda.synchronize()
    b = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        b = min(b, time.perf_counter() - t0)
    return b


def report(what, t):
    print("%s_%s %.3f" % (name, what, t * 1e3), flush=True)


s = Step(name, batch, cl)


def fb():
    s.opt.zero_grad()
    s.forward().backward()


report("forward", best(s.forward, 3))
report("forward_backward", best(fb, 3))
report("step", best(s.step, 3))
report("optimizer_step", best(s.opt.step, 5))
report("zero_grad", best(s.opt.zero_grad, 5))

if cl:
    cf = torch.channels_last

    def conv_case(tag, c_in, c_out, k, hw):
        xi = torch.randn(batch, c_in, hw, hw, device="cuda").bfloat16().contiguous(memory_format=cf).requires_grad_()
        w = (torch.randn(c_out, c_in, k, k, device="cuda") * 0.05).bfloat16().contiguous(memory_format=cf).requires_grad_()
        with torch.no_grad():
            gshape = F.conv2d(xi, w, None, padding=k // 2).shape
        report(tag + "_fwd", best(lambda: F.conv2d(xi, w, None, padding=k // 2), 5))
        gy = torch.randn(gshape, device="cuda").bfloat16().contiguous(memory_format=cf)

        def fb1():
            xi.grad, w.grad = None, None
            F.conv2d(xi, w, None, padding=k // 2).backward(gy)

        report(tag + "_fwd_bwd", best(fb1, 5))

    conv_case("conv3x3_256_14", 256, 256, 3, 14)
    conv_case("conv1x1_1024_256_14", 1024, 256, 1, 14)
    xb = torch.randn(batch, 256, 56, 56, device="cuda").bfloat16().contiguous(memory_format=cf).requires_grad_()
    bn = torch.nn.BatchNorm2d(256).cuda().train()
    gy = torch.randn(batch, 256, 56, 56, device="cuda").bfloat16().contiguous(memory_format=cf)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        report("bn_relu_256_56_fwd", best(lambda: F.relu(bn(xb)), 5))

        def fb2():
            xb.grad = None
            F.relu(bn(xb)).backward(gy)

        report("bn_relu_256_56_fwd_bwd", best(fb2, 5))
    report("add_256_56", best(lambda: xb.detach() + gy, 5))
