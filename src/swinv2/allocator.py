"""glibc's malloc told to keep the memory a process frees, so that a training step reuses the last one's.

By default glibc serves an allocation above its mmap threshold (128 KiB, rising with use to at most
32 MiB) with pages fresh from the kernel and hands them back when the block is freed, and it returns the
top of its heap to the kernel once more than 128 KiB of it is free. A PyTorch step on the CPU frees and
allocates the same activations every time, so it pays for every such page again: a page fault, and the
kernel zeroing 4 KiB, on first touch: SwinV2-T's training step at batch 8 took 100-160 thousand, and
ran 1.06-1.34x as fast without them (docs/performance.md, item 25).

`keep_freed_memory()` raises both thresholds (`mallopt`), for the whole process and for the processes it
forks afterwards (data-loader workers). The cost: the process keeps its peak memory until it exits, which
a training loop reaches again in every step anyway, and its heap can first grow by a few of its largest
blocks before every one is served from freed memory (tests/test_allocator.py). It changes no numerical
result. On a C library other than glibc (macOS, musl) it does nothing and says so.

It is a process-wide setting, so the models never make it: a training run does, when it trains on the CPU
(`swinv2 train`, `swinv2 pretrain` or `swinv2.train.train`; `run.keep_freed_memory=false` leaves the allocator
alone), and `swinv2 benchmark` on request (`--keep-freed-memory`)."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Blocks below 1 GiB come from the heap: everything a step allocates, at any batch a CPU trains at. glibc
# versions that cap the threshold refuse it, and take their cap, half of a 64 MiB arena heap.
MMAP_THRESHOLD = 1 << 30
MMAP_THRESHOLD_CAPPED = 32 << 20
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: the largest, 2 GiB of free heap top before trimming

_applied: str | None = None


def keep_freed_memory() -> str:
    """Raise glibc's mmap and trim thresholds for this process; returns a line saying what was done.

    Calling it again changes nothing. Where the C library is not glibc the line says that nothing was done."""
    global _applied
    if _applied is not None:
        return _applied
    library, _version = platform.libc_ver()
    if library != "glibc":
        return ("the allocator is left as it is: keep_freed_memory needs glibc, this is "
                f"{library or 'another C library'}")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    threshold = MMAP_THRESHOLD
    if not libc.mallopt(M_MMAP_THRESHOLD, threshold):  # refused above the cap: take the cap
        threshold = MMAP_THRESHOLD_CAPPED
        libc.mallopt(M_MMAP_THRESHOLD, threshold)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    _applied = (f"glibc's malloc keeps freed memory for reuse (mmap threshold {threshold >> 20} MiB, trim threshold "
                f"{TRIM_THRESHOLD >> 20} MiB): the process keeps its peak memory; in a training run "
                f"run.keep_freed_memory=false leaves glibc as it is")
    return _applied


def resolve_keep_freed_memory(setting: bool | None, device_type: str) -> bool:
    """`run.keep_freed_memory`: true or false as given; null (the default) on where the run trains on the CPU,
    whose activations glibc allocates (on a GPU they live in PyTorch's own caching allocator)."""
    return device_type == "cpu" if setting is None else setting


def allocator_state() -> str:
    """How this process's malloc treats freed memory, for a benchmark report: it moves other code's speed."""
    if _applied is not None:
        return "glibc, keeping freed memory (swinv2.allocator.keep_freed_memory)"
    library, version = platform.libc_ver()
    if library != "glibc":
        return library or "not glibc"
    tunables = os.environ.get("GLIBC_TUNABLES")
    return f"glibc {version}, GLIBC_TUNABLES={tunables}" if tunables else f"glibc {version}, its defaults"
