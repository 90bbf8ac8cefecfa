"""Inference throughput of the PyTorch twin of a vtl zoo model (eval mode, torch.no_grad), for
tests/bench/infer.sh. The weights are the ones vtl wrote (loaded with strict=True).

Usage: infer.py <model> <weights.safetensors> <threads> <batches> <reps> [bf16]
bf16: the model runs under torch.autocast("cpu", dtype=torch.bfloat16).
Prints "<batch> <images/s>" for each batch size (best of reps timed runs after one warm-up
run), then "rss <peak RSS in MiB>".
"""
import resource
import sys
import time

import torch
from safetensors.torch import load_file


def build(name):
    if name.startswith("vit"):
        import timm
        return timm.create_model(name, pretrained=False)
    if name.startswith("efficientnet_lite"):
        from efficientnet_lite_pytorch import EfficientNet
        return EfficientNet.from_name(name.replace("_", "-"))
    import torchvision
    return getattr(torchvision.models, name)()


def main():
    name, path, threads, batches, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    bf16 = len(sys.argv) > 6 and sys.argv[6] == "bf16"
    torch.set_num_threads(threads)
    model = build(name)
    model.load_state_dict(load_file(path), strict=True)
    model.eval()
    size = 224
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for b in batches.split(","):
            n = int(b)
            x = torch.randn(n, 3, size, size)
            model(x)
            best = float("inf")
            for _ in range(reps * 3 if n == 1 else reps):
                t0 = time.perf_counter()
                model(x)
                best = min(best, time.perf_counter() - t0)
            print("%d %.3f" % (n, n / best))
    print("rss %.0f" % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


if __name__ == "__main__":
    main()
