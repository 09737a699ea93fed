"""The package's import rules, read from the source with `ast`: no cycles, each plane imports only what it may."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "resolver"
# Every plane may import these top-level modules: they depend on nothing but each other.
SHARED = frozenset({"resolver", "resolver.errors", "resolver.yamlfile", "resolver.durable", "resolver.tokenfile"})


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@dataclasses.dataclass(frozen=True, slots=True)
class Import:
    target: str
    line: int


def _imports(module: str) -> list[Import]:
    """Every resolver module `module` imports, at the top or lazily inside a function."""
    path = SOURCES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            # `from resolver.filtering import policy` imports the module resolver.filtering.policy;
            # `from resolver.errors import UsageError` the module resolver.errors.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in SOURCES else base for alias in node.names]
        else:
            continue
        out.extend(Import(name, node.lineno) for name in names if name == "resolver" or name.startswith("resolver."))
    return out


GRAPH = {module: sorted({i.target for i in _imports(module)} - {module}) for module in SOURCES}


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in GRAPH.get(module, []):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    return found


def test_the_reader_finds_the_imports_it_must():
    # The rules below are only as good as this reader: check it on imports known to be there.
    assert "resolver.processes.app" in GRAPH["resolver.processes.cli"]  # lazily, inside main()
    assert "resolver.errors" in GRAPH["resolver.processes.cli"]  # from resolver.errors import ...
    assert "resolver.filtering.policy" in GRAPH["resolver.control.checks"]
    assert "resolver" in GRAPH["resolver.processes.cli"]  # import resolver (for __version__)
    assert len(SOURCES) > 30 and "resolver.dataplane" in SOURCES


def test_no_module_imports_itself_back():
    cycles = _cycles()
    assert not cycles, "import cycles (lazy imports count too): " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "plane, allowed",
    [
        ("resolver.dataplane", {"resolver.dataplane", "resolver.filtering"}),
        ("resolver.filtering", {"resolver.filtering"}),
    ],
)
def test_a_plane_imports_only_the_planes_below_it(plane, allowed):
    def permitted(target: str) -> bool:
        return target in SHARED or any(target == room or target.startswith(room + ".") for room in allowed)

    wrong = [
        f"{SOURCES[module].relative_to(PACKAGE.parent)}:{found.line}: imports {found.target}"
        for module in SOURCES
        if module == plane or module.startswith(plane + ".")
        for found in _imports(module)
        if not permitted(found.target)
    ]
    assert not wrong, "\n".join(wrong)


def test_only_the_command_line_imports_the_composition_root():
    importers = [module for module, targets in GRAPH.items() if "resolver.processes.app" in targets]
    assert importers == ["resolver.processes.cli"]


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_every_module_opens_with_a_one_line_docstring(module):
    tree = ast.parse(SOURCES[module].read_text(encoding="utf-8"))
    first = tree.body[0] if tree.body else None
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    lines = first.value.value.split("\n")
    assert lines[0].strip() and lines[0] == lines[0].strip(), "the first line states the module's job"
    assert lines[0].endswith("."), "the first line is one sentence, ended"
    assert len(lines) == 1 or lines[1] == "", "more lines follow the first after a blank line"
