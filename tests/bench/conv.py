# Times the same convolutions and pooling in PyTorch; prints "name seconds" lines.
# Usage: python3 tests/bench/conv.py [threads]
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import best, report  # noqa: E402

threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
torch.set_num_threads(threads)


convs = [
    ("conv_stem_3x64_7x7s2", 32, 3, 64, 64, 64, 7, 2, 3, 1),
    ("conv_64x64_3x3", 32, 64, 16, 16, 64, 3, 1, 1, 1),
    ("conv_128x128_3x3", 32, 128, 8, 8, 128, 3, 1, 1, 1),
    ("conv_256x256_3x3", 32, 256, 4, 4, 256, 3, 1, 1, 1),
    ("conv_512x512_3x3", 32, 512, 2, 2, 512, 3, 1, 1, 1),
    ("conv_64x128_1x1s2", 32, 64, 16, 16, 128, 1, 2, 0, 1),
    ("dw_32_3x3", 32, 32, 32, 32, 32, 3, 1, 1, 32),
    ("dw_96_3x3s2", 32, 96, 16, 16, 96, 3, 2, 1, 96),
    ("dw_144_3x3", 32, 144, 16, 16, 144, 3, 1, 1, 144),
]

torch.manual_seed(0)
for name, N, C, H, W, K, R, s, p, g in convs:
    x, w, b = torch.randn(N, C, H, W), torch.randn(K, C // g, R, R), torch.randn(K)
    y = F.conv2d(x, w, b, s, p, 1, g)
    gout = torch.randn_like(y)
    reps = 10
    with torch.no_grad():
        report(name + "_fwd", best(lambda: F.conv2d(x, w, b, s, p, 1, g), reps))
        report(name + "_bwd", best(lambda: torch.ops.aten.convolution_backward(
            gout, x, w, [K], [s, s], [p, p], [1, 1], False, [0, 0], g, [True, True, True]), reps))
    xg, wg, bg = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()

    def train():
        xg.grad = wg.grad = bg.grad = None
        F.conv2d(xg, wg, bg, s, p, 1, g).backward(gout)
    report(name + "_train", best(train, reps))

pools = [
    ("maxpool_3x3s2_64x32x32", 32, 64, 32, 32, lambda x: F.max_pool2d(x, 3, 2, 1)),
    ("avgpool_2x2_128x16x16", 32, 128, 16, 16, lambda x: F.avg_pool2d(x, 2)),
    ("gap_512x2x2", 32, 512, 2, 2, lambda x: F.adaptive_avg_pool2d(x, 1)),
    ("gap_1280x7x7", 32, 1280, 7, 7, lambda x: F.adaptive_avg_pool2d(x, 1)),
]
for name, N, C, H, W, fn in pools:
    x = torch.randn(N, C, H, W)
    gout = torch.randn_like(fn(x))
    with torch.no_grad():
        report(name + "_fwd", best(lambda: fn(x), 20))
    xg = x.clone().requires_grad_()

    def train():
        xg.grad = None
        fn(xg).backward(gout)
    report(name + "_train", best(train, 20))
