"""Strict YAML reading: plain data only, no anchors or aliases (billion laughs), no deep nesting, each in one line."""

from __future__ import annotations

import time

import pytest

from resolver import yamlfile
from resolver.yamlfile import ConfigError


def _problem(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        yamlfile.parse_yaml(text, "f.yaml")
    [line] = str(caught.value).splitlines()
    return line


def test_a_billion_laughs_fails_at_its_first_anchor_at_once():
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(9)]
    started = time.perf_counter()
    problem = _problem("version: 1\n" + "\n".join(lines) + "\n")
    assert time.perf_counter() - started < 0.5
    assert problem == "f.yaml:2: invalid YAML: anchors and aliases (&name, *name) are not allowed: write the values out"


@pytest.mark.parametrize(
    "text, line",
    [
        ("a: 1\nb: *x\n", 2),  # an alias, even of nothing
        ("a: 1\nb: !!str &x text\n", 2),
        ("a: &x {k: 1}\n<<: *x\n", 1),  # merge keys need an anchor
    ],
)
def test_anchors_and_aliases_are_refused_anywhere(text, line):
    assert _problem(text).startswith(f"f.yaml:{line}: invalid YAML: anchors and aliases")


def test_nesting_deeper_than_the_bound_is_refused():
    assert yamlfile.parse_yaml("a: " + "[" * 15 + "]" * 15 + "\n", "f.yaml").data == {
        "a": [[[[[[[[[[[[[[[]]]]]]]]]]]]]]]
    }
    assert _problem("a: " + "[" * 16 + "]" * 16 + "\n") == "f.yaml:1: invalid YAML: nested deeper than 16 levels"
    started = time.perf_counter()
    assert "nested deeper" in _problem("[" * 50_000)
    assert time.perf_counter() - started < 2


def test_a_control_character_is_one_problem_naming_its_line():
    with pytest.raises(ConfigError) as caught:
        yamlfile.parse_yaml("id: school-a\nallow: [a.example]\x01deny: []\n", "school-a.yaml")
    assert [str(p) for p in caught.value.problems] == ["school-a.yaml:2: invalid YAML: character #x0001 is not allowed"]
