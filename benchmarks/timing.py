"""Median wall-clock time of a callable, synchronising CUDA around each run."""

import statistics
import time


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of `repeats` calls of fn()."""
    import torch

    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
