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


def ratio_row(label: str, reference, fast, device: str, repeats: int) -> str:
    """Time reference() and fast() side by side; print and return `| label | ref s | fast s | ratio |`."""
    slow, quick = timed(reference, device, repeats), timed(fast, device, repeats)
    row = f"| {label} | {slow:.3f} | {quick:.3f} | {slow / quick:.1f}x |"
    print(row, flush=True)
    return row
