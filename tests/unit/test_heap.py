"""heap: glibc's mmap threshold held fixed and free pages handed back, each in a fresh interpreter of its own."""

from __future__ import annotations

import subprocess
import sys

# glibc's own counters (mallinfo2, glibc 2.33+): hblkhd is the bytes of the blocks mapped on their own.
MALLINFO = """
import ctypes, sys
from resolver.processes import heap

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2

def anon_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))
"""


def _run(script: str, *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", MALLINFO + script, *args], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.split()


# A block of 8 MB mapped and unmapped again, then one of 1 MB: mapped on its own only when tuned.
AFTER_A_LARGE_BLOCK = """
tuned = "tune" in sys.argv and heap.tune()
large = bytearray(8 << 20)
del large
mapped = libc.mallinfo2().hblkhd
block = bytearray(1 << 20)
print(tuned, libc.mallinfo2().hblkhd - mapped >= 1 << 20)
"""


def test_left_to_itself_glibc_puts_a_block_freed_once_in_its_heap():
    # Why tune() exists: the heap that took the 1 MB block keeps its pages once it is freed.
    assert _run(AFTER_A_LARGE_BLOCK) == ["False", "False"]


def test_tuned_a_large_block_is_mapped_on_its_own_however_large_the_last_one_was():
    assert _run(AFTER_A_LARGE_BLOCK, "tune") == ["True", "True"]


# 24 MB of 3,000-byte blocks (above what Python's own allocator serves, below the threshold), of
# which one in fifty stays: the free space between them is no top of the heap that glibc trims itself.
SCATTERED = """
heap.tune()
blocks = [bytes(3000) for _ in range(8000)]
kept = blocks[::50]
del blocks
before = anon_kb()
print(heap.trim(), before - anon_kb())
"""


def test_trim_hands_back_the_pages_freed_inside_the_heap():
    trimmed, released_kb = _run(SCATTERED)
    assert trimmed == "True"
    assert int(released_kb) > 15_000
