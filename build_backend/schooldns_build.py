"""The build backend: setuptools' own, asking for mypy (mypyc) too when SCHOOLDNS_COMPILE=1 (see setup.py)."""

from __future__ import annotations

import os

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F403 (every other hook is setuptools')

# The compiler, installed in the isolated build environment only for a compiled build: a pure
# build (the default) needs nothing beyond setuptools.
COMPILER = "mypy>=1.10"


def get_requires_for_build_wheel(config_settings: dict[str, str] | None = None) -> list[str]:
    if os.environ.get("SCHOOLDNS_COMPILE") == "1":
        # setup.py declares no setup_requires, and would need mypyc to be run for setuptools' answer.
        return [COMPILER]
    return build_meta.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings: dict[str, str] | None = None) -> list[str]:
    if os.environ.get("SCHOOLDNS_COMPILE") == "1":
        return [COMPILER]
    return build_meta.get_requires_for_build_editable(config_settings)
