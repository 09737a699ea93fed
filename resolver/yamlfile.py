"""Strict YAML reading: plain values plus the line of every key, and errors as file:line: key.path."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from resolver.errors import ResolverError

Key = tuple[str | int, ...]

# Every file is plain data: no anchors or aliases (`&a`, `*a`: a few lines of them expand into
# billions of values, "billion laughs"), and no nesting deeper than any file of ours needs (the
# deepest, sources.yaml, nests 5). Both are refused while the file is composed, before anything
# is expanded or converted.
MAX_DEPTH = 16


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in one file, printed as `file:line: key.path: message`."""

    file: str
    line: int
    key_path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.key_path}: " if self.key_path else ""
        return f"{self.file}:{self.line}: {where}{self.message}"


class ConfigError(ResolverError):
    """One or more problems in configuration files; str() lists them one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def key_path(key: Key) -> str:
    """('cache', 'max_entries') -> 'cache.max_entries'; ('block', 2) -> 'block[2]'."""
    out = ""
    for part in key:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclasses.dataclass(slots=True)
class Document:
    """A parsed YAML file: plain Python values, and the line (1-based) of each key path."""

    file: str
    data: Any
    lines: dict[Key, int]
    problems: list[Problem]

    def line_of(self, key: Key) -> int:
        while key not in self.lines and key:
            key = key[:-1]
        return self.lines.get(key, 1)

    def fail(self, key: Key, message: str) -> None:
        self.problems.append(Problem(self.file, self.line_of(key), key_path(key), message))

    def raise_if_failed(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)

    def section(self, key: Key = ()) -> Section:
        return Section(self, key)


class _PlainLoader(yaml.SafeLoader):
    """The safe loader, refusing anchors, aliases and deep nesting as it composes (see MAX_DEPTH)."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name, *name) are not allowed: write the values out", event.start_mark
            )
        if self.depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        assert node is not None
        return node


def parse_yaml(text: str, file: str) -> Document:
    """Parse one YAML document; syntax errors, duplicate keys, anchors, aliases, deep nesting: a ConfigError."""
    try:
        loader = _PlainLoader(text)  # reads the whole text: a control character is refused here
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(
            [Problem(file, line, "", f"invalid YAML: character #x{exc.character:04x} is not allowed")]
        ) from None
    try:
        node = loader.get_single_node()
        lines: dict[Key, int] = {}
        problems: list[Problem] = []
        data = _convert(loader, node, (), lines, problems, file) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError([Problem(file, line, "", f"invalid YAML: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(file, 1, "", f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if problems:
        raise ConfigError(problems)
    return Document(file, data, lines, [])


def load_yaml(path: Path, display_name: str | None = None) -> Document:
    """Read and parse a YAML file; an unreadable file is a ConfigError naming it."""
    name = display_name or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(name, 1, "", f"cannot read file: {exc}")]) from None
    return parse_yaml(text, name)


def _convert(
    loader: yaml.SafeLoader, node: yaml.Node, key: Key, lines: dict[Key, int], problems: list[Problem], file: str
) -> Any:
    lines[key] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            name = loader.construct_object(key_node, deep=True)
            if not isinstance(name, str):
                name = str(name)
            if name in out:
                problems.append(Problem(file, key_node.start_mark.line + 1, key_path((*key, name)), "duplicate key"))
                continue
            lines[(*key, name)] = key_node.start_mark.line + 1
            out[name] = _convert(loader, value_node, (*key, name), lines, problems, file)
            lines[(*key, name)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, item, (*key, i), lines, problems, file) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


_MISSING: Any = object()


class Section:
    """A strict view of one mapping in a Document: typed reads, and unknown keys reported by done()."""

    def __init__(self, doc: Document, key: Key, value: Any = _MISSING):
        self.doc = doc
        self.key = key
        if value is _MISSING:
            value = doc.data
            for part in key:
                value = value[part]
        if value is None:
            value = {}
        if not isinstance(value, dict):
            doc.fail(key, f"expected a mapping, got {describe(value)}")
            value = {}
        self.values: dict[str, Any] = value
        self.taken: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.values

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        """The value as parsed; a missing key without a default is reported as required."""
        self.taken.add(name)
        if name in self.values:
            return self.values[name]
        if default is _MISSING:
            self.doc.fail(self.key, f"missing required key '{name}'")
            return None
        return default

    def typed(
        self,
        name: str,
        kind: type | tuple[type, ...],
        default: Any = _MISSING,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        """The value if it has the given type (and passes check, which returns an error text)."""
        value = self.raw(name, default)
        if name not in self.values:
            return value
        ok = False if isinstance(value, bool) and kind in (int, float, (int, float)) else isinstance(value, kind)
        if not ok:
            self.fail(name, f"expected {_kind_name(kind)}, got {describe(value)}")
            return default if default is not _MISSING else None
        if check is not None and (message := check(value)) is not None:
            self.fail(name, message)
            return default if default is not _MISSING else None
        return value

    def string_list(self, name: str, default: list[str] | None = None) -> list[tuple[str, Key]]:
        """A list of strings, each with its own key path for later error messages."""
        value = self.raw(name, default if default is not None else [])
        if isinstance(value, str):
            value = [value] if name not in self.values else value
        if not isinstance(value, list):
            self.fail(name, f"expected a list, got {describe(value)}")
            return []
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append((item, (*self.key, name, i)))
            else:
                self.doc.fail((*self.key, name, i), f"expected a string, got {describe(item)}")
        return out

    def items(self, name: str) -> Iterator[tuple[Key, Any]]:
        """The items of a list value with their key paths (missing -> nothing)."""
        value = self.raw(name, [])
        if not isinstance(value, list):
            self.fail(name, f"expected a list, got {describe(value)}")
            return
        for i, item in enumerate(value):
            yield (*self.key, name, i), item

    def sub(self, name: str) -> Section:
        """A nested mapping (an absent key reads as an empty mapping)."""
        self.taken.add(name)
        return Section(self.doc, (*self.key, name), self.values.get(name))

    def fail(self, name: str, message: str) -> None:
        self.doc.fail((*self.key, name), message)

    def done(self) -> None:
        """Report every key that no read took: unknown keys are errors, never ignored."""
        for name in self.values:
            if name not in self.taken:
                known = ", ".join(sorted(self.taken))
                self.doc.fail((*self.key, name), f"unknown key '{name}' (known keys: {known})")


def only_version(supported: int) -> Callable[[int], str | None]:
    """The `check` for a file's `version:` key: the one format this code reads, anything else refused."""

    def check(version: int) -> str | None:
        return (
            None
            if version == supported
            else f"version {version} is not supported (this schooldns reads version {supported})"
        )

    return check


def describe(value: Any) -> str:
    """How a parsed value is named in messages: "a string", "an integer", "nothing", ..."""
    if value is None:
        return "nothing"
    return _kind_name(type(value))


_KIND_NAMES: dict[type, str] = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
}


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(_kind_name(k) for k in kind)
    return _KIND_NAMES.get(kind, kind.__name__)
