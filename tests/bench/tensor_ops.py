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
