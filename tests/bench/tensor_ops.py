# Times the same tensor ops in PyTorch; prints "name seconds" lines read by tests/bench/run.sh.
import os, sys, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import best, report  # noqa: E402
threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
torch.set_num_threads(threads)

torch.manual_seed(0)
for n in (1024, 2048):
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    report("add_%d" % n, best(lambda: a + b, 50))
    report("add_out_%d" % n, best(lambda: out.copy_(a).add_(b), 50))
    report("sum_%d" % n, best(lambda: a.sum(), 50))
    report("sum_dim_%d" % n, best(lambda: a.sum(1), 50))
    report("matmul_%d" % n, best(lambda: a @ b, 20 if n == 1024 else 5))

# attention at ViT-S/16's shape: the matmul-softmax-matmul of a timm ViT on PyTorch 1.13
q, k, v = torch.randn(8, 6, 197, 64), torch.randn(8, 6, 197, 64), torch.randn(8, 6, 197, 64)
scale = 64 ** -0.5


def attn(q, k, v):
    return ((q @ k.transpose(-2, -1)) * scale).softmax(-1) @ v


with torch.no_grad():
    report("attn_fwd", best(lambda: attn(q, k, v), 10))
ql, kl, vl = q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
g = torch.randn(8, 6, 197, 64)


def fwd_bwd():
    ql.grad = kl.grad = vl.grad = None
    attn(ql, kl, vl).backward(g)


report("attn_fwd_bwd", best(fwd_bwd, 10))
