"""Category lists: read blocklists/sources.yaml, parse every list file, compile one domain index image for state_dir."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resolver import durable, yamlfile
from resolver.filtering import domains, listformats

log = logging.getLogger(__name__)

SOURCES_FILE = "sources.yaml"
INDEX_FILE = "index.bin"  # in state_dir: the compiled image, memory-mapped by every worker
MANIFEST_FILE = "index.json"  # beside it: the sources fingerprint it was compiled from, categories, counts
MAX_CATEGORIES = 64  # one bit each in the index masks
VERSION = 1  # the sources.yaml format this code reads
_CATEGORY_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
#: names the policy uses for blocks that do not come from a list (see resolver.filtering.policy)
_RESERVED_CATEGORIES = frozenset({"deny", "safe_search"})
_MATCHES = (listformats.EXACT, listformats.SUBTREE)
#: categories whose entries the admin API never names or traces to a file and line: the national
#: child sexual abuse list is given to the province under the condition that nobody can read it.
WITHHELD_CATEGORIES = frozenset({"csam"})

Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True, slots=True)
class Source:
    """One list file of one category, as declared in sources.yaml."""

    category: str
    kind: str  # "block" (under `sources:`) or "allow" (under `allow:`)
    file: str  # as written, relative to the blocklists directory
    path: Path
    format: str
    match: str | None  # domains/hosts only; None = the format's default (subtree)


@dataclasses.dataclass(frozen=True, slots=True)
class Sources:
    """The validated contents of sources.yaml: categories in bit order and their files."""

    directory: Path
    categories: tuple[str, ...]
    sources: tuple[Source, ...]

    def files(self) -> list[Path]:
        return [source.path for source in self.sources]


@dataclasses.dataclass(frozen=True, slots=True)
class SourceReport:
    """What one list file gave: entries, lines skipped by design, invalid lines (with reasons)."""

    category: str
    kind: str
    file: str
    format: str
    entries: int
    skipped: int
    invalid: int
    reasons: dict[str, int]
    examples: dict[str, tuple[int, str]]  # reason -> first (line number, line text)


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledLists:
    categories: tuple[str, ...]
    image: bytes  # a resolver.filtering.domains index image
    reports: tuple[SourceReport, ...]
    entry_counts: dict[str, int]  # category -> block entries parsed from its sources


def load_sources(blocklists_dir: Path) -> Sources:
    """Read and validate sources.yaml; every problem (file, line, key path) in one ConfigError."""
    path = blocklists_dir / SOURCES_FILE
    doc = yamlfile.load_yaml(path)
    if doc.data is None:
        doc.data = {}  # an empty file: reported below as "no categories declared"
    top = doc.section()
    doc.raise_if_failed()  # not a mapping at the top: nothing else in it can be read
    top.typed("version", int, VERSION, check=yamlfile.only_version(VERSION))
    categories_section = top.sub("categories")
    names = list(categories_section.values)
    sources: list[Source] = []
    if len(names) > MAX_CATEGORIES:
        top.fail("categories", f"{len(names)} categories; at most {MAX_CATEGORIES} are supported")
    for name in names:
        categories_section.taken.add(name)
        if not _CATEGORY_RE.match(name):
            categories_section.fail(name, "category names are 1-32 of a-z, 0-9 and _, starting with a letter")
            continue
        if name in _RESERVED_CATEGORIES:
            categories_section.fail(name, f"'{name}' is reserved for policy blocks; choose another name")
            continue
        category = categories_section.sub(name)
        category.typed("description", str, "")
        for kind, key in (("block", "sources"), ("allow", "allow")):
            for item_key, item in category.items(key):
                source = _read_source(doc, item_key, item, name, kind, blocklists_dir)
                if source is not None:
                    sources.append(source)
        category.done()
    top.done()
    if not names and not doc.problems:
        doc.fail(("categories",), "no categories declared")
    doc.raise_if_failed()
    return Sources(blocklists_dir, tuple(names), tuple(sources))


def _read_source(
    doc: yamlfile.Document, key: yamlfile.Key, item: object, category: str, kind: str, blocklists_dir: Path
) -> Source | None:
    if not isinstance(item, dict):
        doc.fail(key, "expected a mapping like {file: ..., format: ...}")
        return None
    section = doc.section(key)
    file = section.typed("file", str)
    fmt = section.typed("format", str)
    match = section.typed("match", str, None)
    section.done()
    if file is None or fmt is None:
        return None
    ok = True
    if fmt not in listformats.FORMATS:
        section.fail("format", f"unknown format '{fmt}' (known: {', '.join(listformats.FORMATS)})")
        ok = False
    if match is not None:
        if match not in _MATCHES:
            section.fail("match", f"unknown match '{match}' (known: {', '.join(_MATCHES)})")
            ok = False
        elif fmt not in listformats.FORMATS_WITH_MATCH:
            section.fail("match", f"format '{fmt}' sets exact or subtree per rule; remove `match`")
            ok = False
    path = blocklists_dir / file
    if Path(file).is_absolute() or ".." in Path(file).parts:
        section.fail("file", "list files are paths inside the blocklists directory")
        return None
    if not path.is_file():
        section.fail("file", f"no such list file: {path}")
        ok = False
    return Source(category, kind, file, path, fmt, match) if ok else None


def compile_lists(blocklists_dir: Path, progress: Progress | None = None) -> CompiledLists:
    """Parse every declared file and build the index image (the slow part of a reload, off the loop).

    Each file is parsed into runs of names per (match, kind), which the index builder merges in
    bulk; a domains-format file (the usual huge list) is parsed in bulk too.
    """
    sources = load_sources(blocklists_dir)
    reports: list[SourceReport] = []
    counts = dict.fromkeys(sources.categories, 0)
    runs: list[tuple[int, str, str, list[str]]] = []
    for source in sources.sources:
        bit = sources.categories.index(source.category)
        tally = listformats.Tally()
        with open(source.path, encoding="utf-8", errors="replace") as file:
            parsed = listformats.parse_list_runs(source.format, file, tally, source.match)
        produced = 0
        for (match, kind), names in parsed.items():
            produced += len(names)
            runs.append((bit, match, "allow" if source.kind == "allow" else kind, names))
        if source.kind == "block":
            counts[source.category] += produced
        report = SourceReport(
            source.category,
            source.kind,
            source.file,
            source.format,
            produced,
            tally.skipped,
            tally.invalid,
            dict(tally.reasons),
            dict(tally.examples),
        )
        reports.append(report)
        if progress is not None:
            progress(
                f"lists: {source.category}/{source.kind}: {source.file}: {produced} entries, "
                f"{tally.skipped} skipped, {tally.invalid} invalid"
            )

    image = domains.build_index_runs(runs)
    return CompiledLists(sources.categories, image, tuple(reports), counts)


def find_entry(sources: Sources, category: str, name: str) -> list[str]:
    """`file:line` of every line in the category's files that lists `name` (for `explain`, not serving)."""
    found = []
    for source in sources.sources:
        if source.category != category:
            continue
        with open(source.path, encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                # Cheap substring filter first; Unicode lines are parsed since their A-label differs.
                if name not in line and line.isascii():
                    continue
                for entry in listformats.parse_list(source.format, [line], listformats.Tally(), source.match):
                    if entry[0] == name:
                        found.append(f"{source.file}:{number} ({source.kind})")
                        break
    return found


def compile_to_state_dir(
    blocklists_dir: Path, state_dir: Path, fingerprint: str, progress: Progress | None = None
) -> tuple[dict[str, Any], bytes | None]:
    """Compile the lists and write index.bin + index.json; returns (manifest, image if not written)."""
    compiled = compile_lists(blocklists_dir, progress)
    manifest = {
        "fingerprint": fingerprint,
        "categories": list(compiled.categories),
        "entry_counts": dict(compiled.entry_counts),
        "compiled_at": time.time(),
    }
    manifest_path = state_dir / MANIFEST_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        for name in (INDEX_FILE, MANIFEST_FILE):
            for stale in durable.remove_stale_temporaries(state_dir / name):
                log.info("removed %s, left by a process killed while it wrote", stale)
        domains.write_index(state_dir / INDEX_FILE, compiled.image)
        durable.replace_synced(manifest_path, json.dumps(manifest, indent=1).encode())
    except OSError as exc:
        log.warning("cannot write compiled lists to %s (%s); keeping them in memory", state_dir, exc)
        return manifest, compiled.image
    return manifest, None
