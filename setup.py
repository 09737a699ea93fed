"""The build's extension modules: none by default; with SCHOOLDNS_COMPILE=1 the per-query modules compiled by mypyc.

The compiled modules sit beside their sources, and Python imports an extension module before a
source file of the same name; without them the same sources run as they are (docs/performance.md,
"Compiled modules").
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

from setuptools import setup


def compilable() -> list[str]:
    """The files of resolver.COMPILABLE, read from resolver/__init__.py without importing the package."""
    tree = ast.parse(Path(__file__).with_name("resolver").joinpath("__init__.py").read_text(encoding="utf-8"))
    [names] = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and [getattr(target, "id", None) for target in node.targets] == ["COMPILABLE"]
    ]
    return [name.replace(".", "/") + ".py" for name in names]


def main() -> None:
    if os.environ.get("SCHOOLDNS_COMPILE") != "1":
        setup()
        return
    from mypyc.build import mypycify

    # Each module is its own extension (separate=True), so that its __file__ names its own file
    # (calls between them measured no slower than within one library). Missing imports are Any:
    # the build environment has the compiler, not the runtime dependencies. No incremental cache:
    # from one, mypyc failed to build again after an attribute was added to a compiled class (the
    # C compiler still compiles again only the files whose code or included headers changed).
    options = ["--ignore-missing-imports", "--cache-dir=/dev/null"]
    setup(ext_modules=mypycify([*options, *compilable()], separate=True))


if __name__ == "__main__":  # as setuptools runs it (a test reads compilable())
    main()
