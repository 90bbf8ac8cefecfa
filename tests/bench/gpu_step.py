"""The GPU training step of tests/bench/gpu_step.lua in PyTorch: the same model (torchvision's
ResNet-50, else timm's), 1000 classes, channels-last when cl, SGD with momentum, a random
224x224 batch, bf16 autocast."""
import os

import torch
import torch.nn.functional as F


def settings(benchmark=None):
    """The switches of gpu_step.lua's settings(): no TF32, nondeterministic cuDNN engines
    allowed, cudnn.benchmark when benchmark is true or, when it is None, VTL_CUDNN_BENCHMARK=1."""
    if benchmark is None:
        benchmark = os.environ.get("VTL_CUDNN_BENCHMARK") == "1"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = benchmark


class Step:
    def __init__(self, arch, batch, cl, benchmark=None):
        settings(benchmark)
        if arch == "resnet50":
            import torchvision
            m = torchvision.models.resnet50(num_classes=1000)
        else:
            import timm
            m = timm.create_model(arch, num_classes=1000)
        self.model = m.cuda().train()
        if cl:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.x = torch.randn(batch, 3, 224, 224, device="cuda")
        if cl:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 1000, (batch,), device="cuda")

    def forward(self):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return F.cross_entropy(self.model(self.x), self.y)

    def step(self):
        self.opt.zero_grad()
        self.forward().backward()
        self.opt.step()
