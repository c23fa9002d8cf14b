"""The memory a run takes, for the training log: peak bytes since the last log line.

On CUDA, the caching allocator's peak allocated bytes (what tensors hold) and peak reserved bytes
(what the allocator took from the device, allocated plus its cached free blocks), read from
`torch.cuda.memory_stats` and reset after each reading, so each log line has its own interval. On the
CPU, the process's peak resident set size (`getrusage`), which the kernel cannot reset: the peak of the
whole process so far.
"""

import resource
import sys
from collections.abc import Mapping

import torch

GIB = 2**30
MACHINE_FIELDS = ("tokens_per_s", "peak_allocated_bytes", "peak_reserved_bytes", "peak_rss_bytes")  # of a
# log record: they measure the machine, so a resumed run's log equals the uninterrupted one's without them


def cuda_peaks(stats: Mapping[str, int]) -> dict[str, int]:
    """The training log's CUDA fields from a `torch.cuda.memory_stats()` mapping."""
    return {
        "peak_allocated_bytes": int(stats["allocated_bytes.all.peak"]),
        "peak_reserved_bytes": int(stats["reserved_bytes.all.peak"]),
    }


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (`ru_maxrss`: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_memory(device: torch.device) -> dict[str, int]:
    """The memory fields of one log line on `device`; on CUDA the peaks then start again from here."""
    if device.type != "cuda":
        return {"peak_rss_bytes": peak_rss_bytes()}
    fields = cuda_peaks(torch.cuda.memory_stats(device))
    torch.cuda.reset_peak_memory_stats(device)
    return fields


def memory_text(record: Mapping[str, float]) -> str:
    """The memory part of a progress line, from the fields `peak_memory` put into a log record."""
    if "peak_allocated_bytes" in record:
        allocated, reserved = record["peak_allocated_bytes"], record["peak_reserved_bytes"]
        return f"  peak {allocated / GIB:.2f} GiB allocated / {reserved / GIB:.2f} GiB reserved"
    if "peak_rss_bytes" in record:
        return f"  peak RSS {record['peak_rss_bytes'] / GIB:.2f} GiB"
    return ""
