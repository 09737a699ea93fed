"""Upstream query IDs come from the OS CSPRNG, and a forked process does not repeat its parent's."""

from __future__ import annotations

import os

from resolver.dataplane import upstream


def _next_ids(count: int) -> list[int]:
    return [upstream._random_ids.next() for _ in range(count)]


def test_ids_cover_the_16_bit_range_without_a_pattern():
    ids = _next_ids(4096)
    assert all(0 <= value <= 0xFFFF for value in ids)
    assert len(set(ids)) > 3900  # 4096 draws from 65,536 values: ~120 repeats expected


def test_a_forked_child_draws_its_own_ids_not_its_parents_next_ones():
    _next_ids(1)  # the parent holds a batch of IDs it has not used yet
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child (as a worker forked by resolver.processes.spawner): report its next IDs and leave
        try:
            os.write(write_end, bytes(str(_next_ids(16)), "ascii"))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_ids = pipe.read()
    os.waitpid(pid, 0)
    assert child_ids.startswith("[") and child_ids != str(_next_ids(16))
