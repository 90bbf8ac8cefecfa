# Times the same tensor ops in PyTorch; prints "name seconds" lines read by tests/bench/run.sh.
import sys, time, torch
threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
torch.set_num_threads(threads)

def best(fn, reps):
    fn()
    b = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        b = min(b, time.perf_counter() - t0)
    return b

torch.manual_seed(0)
for n in (1024, 2048):
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    print("add_%d %.9f" % (n, best(lambda: a + b, 50)))
    print("add_out_%d %.9f" % (n, best(lambda: out.copy_(a).add_(b), 50)))
    print("sum_%d %.9f" % (n, best(lambda: a.sum(), 50)))
    print("sum_dim_%d %.9f" % (n, best(lambda: a.sum(1), 50)))
    print("matmul_%d %.9f" % (n, best(lambda: a @ b, 20 if n == 1024 else 5)))
