"""swinv2.allocator: with glibc told to keep freed memory, a block freed and allocated again is served from
pages the process already has, instead of fresh ones the kernel zeroes on first touch. Counted, in a process
of its own (the setting is process-wide), as minor page faults against the page count of the block."""
from __future__ import annotations

import json
import mmap
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from swinv2.allocator import resolve_keep_freed_memory

BLOCK = 64 * 2**20  # above glibc's largest default mmap threshold (32 MiB): by default every one is mmapped
ROUNDS = 40

FAULTS_OF_REUSE = f"""
import json, resource, sys
import torch
from swinv2.allocator import allocator_state, keep_freed_memory
line = keep_freed_memory() if sys.argv[1] == "keep" else ""

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

counts = []
for _ in range({ROUNDS}):
    before = faults()
    block = torch.ones({BLOCK // 4})  # float32: writes every page of the block
    del block
    counts.append(faults() - before)
print(json.dumps({{"faults": counts, "line": line, "state": allocator_state()}}))
"""


def faults_of_reuse(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_REUSE, mode], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parent)
    return json.loads(done.stdout.strip().splitlines()[-1])


def transparent_huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's; elsewhere the setting is a no-op")
def test_kept_memory_serves_a_freed_block_again_without_fresh_pages():
    # By default each 64 MiB block is a fresh mapping: every page faults once (a 2 MiB huge page where the
    # kernel gives them to every mapping).
    page = 2 * 2**20 if transparent_huge_pages_always() else mmap.PAGESIZE
    default = faults_of_reuse("default")
    assert all(count >= BLOCK // page for count in default["faults"]), default
    assert default["state"].startswith("glibc") and default["line"] == ""

    # Kept, the heap grows by a block in each of the first rounds (the first 2 or 6 in 47 processes on the
    # project's machine: each time the new block's address is past the freed one, which was not yet reusable),
    # and then serves every block from memory it has: no page of the 16,384 is fresh.
    kept = faults_of_reuse("keep")
    fresh = [index for index, count in enumerate(kept["faults"]) if count >= 64]
    assert len(fresh) <= 8 and max(fresh, default=0) < 10, kept["faults"]
    assert "keeps freed memory" in kept["line"] and "keeping freed memory" in kept["state"]


def test_training_keeps_freed_memory_on_the_cpu_unless_told():
    assert resolve_keep_freed_memory(None, "cpu") is True
    assert resolve_keep_freed_memory(None, "cuda") is False  # PyTorch's caching allocator keeps GPU memory
    assert resolve_keep_freed_memory(False, "cpu") is False
    assert resolve_keep_freed_memory(True, "cuda") is True
