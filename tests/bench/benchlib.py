"""Timing shared by the PyTorch benchmarks: best of several runs after a warm-up, printed as the
"name seconds" lines tests/bench/run.sh reads (tests/bench/benchlib.lua is the vtl twin)."""
import time


def best(fn, reps):
    """The shortest of `reps` timed calls of fn, in seconds, after one untimed warm-up call."""
    fn()
    b = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        b = min(b, time.perf_counter() - t0)
    return b


def report(name, t):
    print("%s %.9f" % (name, t))
