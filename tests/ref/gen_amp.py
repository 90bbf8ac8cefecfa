# Mixed precision references for tests/test_amp.lua: a small CNN (conv-bn-relu-pool x2,
# linear) and a small transformer block, each run in PyTorch's CPU autocast (bf16) for one
# training forward and backward, and the CNN again in eval mode. Writes the weights, inputs,
# logits (as f32), the loss and every parameter's gradient.
import os, sys, torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

out = sys.argv[1]
torch.manual_seed(0)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


class Block(nn.Module):
    """pre-norm attention + MLP over (B, N, C) tokens, mean-pooled into a linear head"""

    def __init__(self, c=32, heads=4, classes=5):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.norm2 = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 2 * c)
        self.fc2 = nn.Linear(2 * c, c)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        B, N, C = x.shape
        h, d = self.heads, C // self.heads
        qkv = self.qkv(self.norm1(x)).reshape(B, N, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = torch.softmax(q @ k.transpose(-2, -1) * d ** -0.5, dim=-1)
        x = x + self.proj((a @ v).transpose(1, 2).reshape(B, N, C))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(x.mean(1))


def run(name, model, x, y):
    init = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    eval_ref = {}
    model.eval()  # first, with the initial batch-norm statistics
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        eval_ref["eval_logits"] = model(x).float()
    with torch.no_grad():
        eval_ref["eval_logits_f32"] = model(x)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    loss.backward()
    res = {"x": x, "y": y + 1, "logits": logits.float(), "loss": loss.detach().float().reshape(1),
           "logits_dtype_bf16": torch.tensor([1.0 if logits.dtype == torch.bfloat16 else 0.0])}
    for k, p in model.named_parameters():
        res["grad." + k] = p.grad.clone()
    res.update(eval_ref)
    save_file(init, os.path.join(out, f"amp_{name}_init.safetensors"))
    save_file(res, os.path.join(out, f"amp_{name}_ref.safetensors"))


run("cnn", SmallCNN(), torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
run("block", Block(), torch.randn(4, 9, 32), torch.randint(0, 5, (4,)))
print("gen_amp: wrote 2 models")
