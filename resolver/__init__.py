"""schooldns: a DNS-level harmful-content filter for school networks."""

from __future__ import annotations

__version__ = "0.1.0"

# The modules every query runs through, which a build with SCHOOLDNS_COMPILE=1 compiles with mypyc
# (setup.py reads this list); every other build runs them from their source.
COMPILABLE = (
    "resolver.dataplane.wire",
    "resolver.dataplane.cache",
    "resolver.dataplane.repeats",
    "resolver.filtering.domains",
    "resolver.filtering.policy",
    "resolver.filtering.schools",
    "resolver.dataplane.metrics",
    "resolver.dataplane.pipeline",
    "resolver.dataplane.headerblock",
    "resolver.dataplane.doh",
    "resolver.dataplane.udpbatch",
    "resolver.dataplane.udplistener",
    "resolver.dataplane.upstream",
    "resolver.dataplane.upstreamtls",
)


def compiled_modules() -> tuple[str, ...]:
    """The modules of COMPILABLE that this installation runs compiled: those with an extension module beside them.

    Python imports an extension module before a source file of the same name, so this is what an
    import finds (asked of the import system, nothing imported); () where built as pure Python.
    """
    from importlib import machinery, util

    found = (util.find_spec(name) for name in COMPILABLE)
    return tuple(
        spec.name for spec in found if spec and (spec.origin or "").endswith(tuple(machinery.EXTENSION_SUFFIXES))
    )


def build_description() -> str:
    """`schooldns 0.1.0`, and which modules are compiled, if any: `--version`, and a log line once serving."""
    compiled = compiled_modules()
    if not compiled:
        return f"schooldns {__version__}"
    return f"schooldns {__version__} (compiled: {', '.join(name.rsplit('.', 1)[1] for name in compiled)})"
