"""Which modules run compiled (mypyc): what the build compiles, what `--version` and /status say."""

from __future__ import annotations

import importlib
import importlib.machinery
import inspect
import pkgutil
import runpy
import subprocess
import sys
from pathlib import Path

import resolver

ROOT = Path(__file__).resolve().parents[2]


def extension_beside(name: str) -> bool:
    """Whether an extension module sits beside the module's source (what `make compiled` leaves)."""
    source = ROOT / (name.replace(".", "/") + ".py")
    return any(source.with_suffix(suffix).exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def test_the_build_compiles_the_modules_the_package_names():
    setup = runpy.run_path(str(ROOT / "setup.py"), run_name="setup")
    assert setup["compilable"]() == [
        "resolver/dataplane/wire.py",
        "resolver/dataplane/cache.py",
        "resolver/dataplane/repeats.py",
        "resolver/filtering/domains.py",
        "resolver/filtering/policy.py",
        "resolver/filtering/schools.py",
        "resolver/dataplane/metrics.py",
        "resolver/dataplane/pipeline.py",
        "resolver/dataplane/headerblock.py",
        "resolver/dataplane/doh.py",
        "resolver/dataplane/udpbatch.py",
        "resolver/dataplane/udplistener.py",
        "resolver/dataplane/upstream.py",
        "resolver/dataplane/upstreamtls.py",
    ]
    assert all((ROOT / path).is_file() for path in setup["compilable"]())


def test_compiled_modules_are_those_an_import_finds_compiled():
    # All or none: the compiled modules call each other natively, so a build compiles them together.
    compiled = resolver.compiled_modules()
    assert compiled == tuple(name for name in resolver.COMPILABLE if extension_beside(name))
    assert compiled in ((), resolver.COMPILABLE)
    for name in resolver.COMPILABLE:
        loaded = importlib.import_module(name).__file__
        assert loaded is not None and loaded.endswith(".py") == (name not in compiled), loaded


def test_no_class_that_runs_from_source_subclasses_a_class_of_a_compilable_module():
    # Compiled, such a class cannot be made (TypeError: interpreted classes cannot inherit from
    # compiled); asked of the modules by name, so the pure build finds it too.
    subclasses = []
    for module in pkgutil.walk_packages(resolver.__path__, "resolver."):
        if module.name in resolver.COMPILABLE or module.name.endswith(".__main__"):
            continue
        for _, cls in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            if cls.__module__ == module.name:
                subclasses += [
                    (module.name, cls.__name__, base) for base in cls.__mro__ if base.__module__ in resolver.COMPILABLE
                ]
    assert subclasses == []


def test_version_says_which_modules_are_compiled():
    version = subprocess.run(
        [sys.executable, "-m", "resolver", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    expected = "schooldns 0.1.0"
    if resolver.compiled_modules():
        expected += (
            " (compiled: wire, cache, repeats, domains, policy, schools, metrics, pipeline,"
            " headerblock, doh, udpbatch, udplistener, upstream, upstreamtls)"
        )
    assert (version.returncode, version.stdout, version.stderr) == (0, expected + "\n", "")
