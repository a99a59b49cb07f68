"""Shared timing for the benchmarks: the best of a few repeats after one warm-up call."""

import time


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: allocators, oneDNN primitives
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
