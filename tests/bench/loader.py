"""The PyTorch twin of loader.lua: torchvision ImageFolder (PIL decode) with the same transforms,
torch DataLoader with the same batch size and number of workers; prints "images/s N"."""
import sys
import time

import torch
from torchvision import datasets, transforms as T

mode, root, workers, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
if mode == "jpeg":
    ds = datasets.ImageFolder(root, transform=T.Compose([
        T.RandomResizedCrop(224), T.RandomHorizontalFlip(),
        T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
        T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]))
    bs = 32
else:
    ds = datasets.FashionMNIST(root, train=True, transform=T.Compose([
        T.RandomCrop(28, padding=2), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize((0.286,), (0.353,))]))
    bs = 256
loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=workers,
                                     persistent_workers=False)
best = 0.0
for e in range(epochs):
    t0, n = time.perf_counter(), 0
    for x, y in loader:
        n += x.shape[0]
    best = max(best, n / (time.perf_counter() - t0))
print(f"images/s {best:.1f}")
