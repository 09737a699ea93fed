"""The fuzz targets in `make test`: every saved reproducer replayed, and a short hypothesis run of each target."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import targets

REPLAYS = [(name, path) for name in targets.TARGETS for path in targets.reproducers(name)]


@pytest.mark.parametrize(("name", "path"), REPLAYS, ids=[f"{name}/{path.name}" for name, path in REPLAYS])
def test_a_saved_reproducer_no_longer_crashes(name, path):
    targets.TARGETS[name].check(path.read_bytes())


def test_every_reproducer_directory_names_a_target():
    assert {p.name for p in targets.REPRODUCERS.iterdir() if p.is_dir()} <= set(targets.TARGETS)


@pytest.mark.parametrize("name", list(targets.TARGETS))
def test_the_seeds_pass(name):
    target = targets.TARGETS[name]
    for seed in target.seeds():
        target.check(seed)


@pytest.mark.parametrize("name", list(targets.TARGETS))
def test_mutated_seeds_raise_only_the_expected_errors(name):
    target = targets.TARGETS[name]
    seeds = target.seeds()

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(seeds), st.lists(st.tuples(st.integers(0, 4095), st.binary(max_size=8)), max_size=4))
    def mutated(seed: bytes, edits: list[tuple[int, bytes]]) -> None:
        data = bytearray(seed)
        for at, replacement in edits:  # overwrite a few bytes here and there, as a fuzzer's first moves
            at %= len(data) + 1
            data[at : at + len(replacement)] = replacement
        target.check(bytes(data))

    mutated()
