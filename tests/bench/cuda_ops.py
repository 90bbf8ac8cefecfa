"""Times tensor ops on the GPU in PyTorch; prints "name seconds" lines (seconds per call) read
by tests/bench/cuda.sh. The twin of tests/bench/cuda_ops.lua: same ops, sizes and timing (the
best of three batches of calls, each closed by a synchronize). The switches are
gpu_step.settings()'s, as in vtl: no TF32 (matmul and cuDNN), nondeterministic cuDNN engines
allowed, cudnn.benchmark only with VTL_CUDNN_BENCHMARK=1.
Dims in the names are vtl's (1-based): sum_dim2 is torch's sum(1)."""
import sys
import time

import torch

from gpu_step import Step, settings


def per_call(fn, reps):
    fn()
    torch.cuda.synchronize()
    b = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        b = min(b, (time.perf_counter() - t0) / reps)
    return b


def report(name, t):
    print("%s %.9f" % (name, t))


def main():
    if not torch.cuda.is_available():
        print("cuda_ops.py: no CUDA device; nothing to time", file=sys.stderr)
        return
    settings()
    torch.manual_seed(0)
    n = 4096
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    report("add_4096", per_call(lambda: a + b, 50))
    report("mul_4096", per_call(lambda: a * b, 50))
    report("sum_4096", per_call(lambda: a.sum(), 50))
    report("sum_dim1_4096", per_call(lambda: a.sum(0), 50))
    report("sum_dim2_4096", per_call(lambda: a.sum(1), 50))
    report("mean_dim2_4096", per_call(lambda: a.mean(1), 50))
    report("max_dim2_4096", per_call(lambda: a.max(1), 50))
    row = torch.randn(n, device="cuda")
    report("add_bcast_4096", per_call(lambda: a + row, 50))
    c = torch.randn(64, 1024, 1024, device="cuda")
    report("sum_dim2_64x1024", per_call(lambda: c.sum(1), 50))
    del c
    report("matmul_f32_4096", per_call(lambda: a @ b, 10))
    ah, bh = a.bfloat16(), b.bfloat16()
    report("matmul_bf16_4096", per_call(lambda: ah @ bh, 20))
    del a, b, ah, bh

    # nn: a 3x3 64->64 convolution at batch 64, 56x56, and a ResNet-18 training step (batch 64,
    # 224x224, SGD with momentum, f32 NCHW)
    F = torch.nn.functional
    cx = torch.randn(64, 64, 56, 56, device="cuda")
    cw = torch.randn(64, 64, 3, 3, device="cuda") * 0.05
    with torch.no_grad():
        report("conv3x3_64c_56_fwd", per_call(lambda: F.conv2d(cx, cw, None, padding=1), 20))
    del cx, cw
    try:
        import torchvision
    except ImportError:
        print("cuda_ops.py: no torchvision; no ResNet-18 step", file=sys.stderr)
        return
    model = torchvision.models.resnet18(num_classes=1000).cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xb = torch.randn(64, 3, 224, 224, device="cuda")
    yb = torch.randint(0, 1000, (64,), device="cuda")

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()

    report("resnet18_train_b64", per_call(step, 3))
    del model, opt, xb, yb

    # training steps with bf16 autocast (channels-last for the convolution nets), SGD momentum,
    # 224x224, and the peak memory of each; then ResNet-50 inference at batch 1 and 256
    def fresh():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def train_case(name, arch, batch, cl, reps, benchmark=None):
        fresh()
        report(name, per_call(Step(arch, batch, cl, benchmark).step, reps))
        report(name + "_peakMiB", torch.cuda.max_memory_allocated() / 2**20)

    train_case("resnet50_train_b256_bf16_cl", "resnet50", 256, True, 3)
    try:
        import timm
        train_case("lite0_train_b256_bf16_cl", "efficientnet_lite0", 256, True, 3)
        train_case("vit_s_train_b128_bf16", "vit_small_patch16_224", 128, False, 3)
    except ImportError:
        print("cuda_ops.py: no timm; no EfficientNet-Lite0 or ViT-S steps", file=sys.stderr)
    # the same ResNet-50 step with cudnn.benchmark on both sides
    train_case("resnet50_train_b256_bf16_cl_cudnn_benchmark", "resnet50", 256, True, 3, True)
    settings()

    fresh()
    r50 = torchvision.models.resnet50(num_classes=1000).cuda().eval()
    x1 = torch.randn(1, 3, 224, 224, device="cuda")
    with torch.no_grad():
        report("resnet50_infer_b1", per_call(lambda: r50(x1), 20))
        r50 = r50.to(memory_format=torch.channels_last)
        x256 = torch.randn(256, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)

        def infer():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return r50(x256)

        report("resnet50_infer_b256_bf16_cl", per_call(infer, 5))
    report("resnet50_infer_b256_bf16_cl_peakMiB", torch.cuda.max_memory_allocated() / 2**20)


if __name__ == "__main__":
    main()
