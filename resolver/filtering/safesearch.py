"""Safe-search table: search hosts rewritten to their engines' safe endpoints, and engines blocked for lacking one."""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.resources
import logging
import re
from collections.abc import Mapping
from pathlib import Path

from resolver import yamlfile

log = logging.getLogger(__name__)

#: The table shipped inside the package (package-data in pyproject.toml).
DEFAULT_TABLE_RESOURCE = "data/safe_search.yaml"

# The data file holds canonical names only: lower-case A-labels, no trailing dot.
_NAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


class YouTubeMode(enum.StrEnum):
    """Which YouTube restricted mode safe search enforces."""

    #: restrictmoderate.youtube.com: YouTube's moderate restricted mode.
    MODERATE = "moderate"
    #: restrict.youtube.com: YouTube's strict restricted mode.
    STRICT = "strict"
    #: YouTube hosts are left alone (the other engines are still rewritten).
    OFF = "off"


@dataclasses.dataclass(frozen=True, slots=True)
class NoSafeMode:
    """A search engine name blocked while safe search is on (no DNS-enforceable safe mode)."""

    engine: str
    name: str
    subtree: bool


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class SafeSearchTable:
    """The parsed table; hashable by identity so compiled per-mode views can be memoised."""

    #: host -> CNAME target, every engine except YouTube.
    rewrites: Mapping[str, str]
    #: host -> engine name, for every rewritten host including YouTube's (explain and logs).
    engines: Mapping[str, str]
    #: YouTube hosts, and the target for each mode except OFF.
    youtube_hosts: tuple[str, ...]
    youtube_targets: Mapping[YouTubeMode, str]
    #: names blocked while safe search is on.
    no_safe_mode: tuple[NoSafeMode, ...]

    def rewrites_for(self, youtube: YouTubeMode) -> dict[str, str]:
        """host -> target for one YouTube mode (a fresh dict; callers compile it once per load)."""
        out = dict(self.rewrites)
        if youtube is not YouTubeMode.OFF:
            target = self.youtube_targets[youtube]
            for host in self.youtube_hosts:
                out[host] = target
        return out

    def engine_of(self, host: str) -> str | None:
        """The engine a rewritten host belongs to, or None."""
        return self.engines.get(host)


def parse_table(text: str, file: str) -> SafeSearchTable:
    """Parse the safe-search YAML; every problem is reported as file:line: key.path: message."""
    doc = yamlfile.parse_yaml(text, file)
    table = _read_table(doc)
    doc.raise_if_failed()
    return table


def load_table(path: Path) -> SafeSearchTable:
    """Read a safe-search table from a file."""
    return parse_table(_read_text(path), str(path))


@functools.cache
def default_table() -> SafeSearchTable:
    """The table shipped as resolver/filtering/data/safe_search.yaml (parsed once per process)."""
    resource = importlib.resources.files("resolver.filtering").joinpath(DEFAULT_TABLE_RESOURCE)
    return parse_table(resource.read_text(encoding="utf-8"), f"resolver/filtering/{DEFAULT_TABLE_RESOURCE}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise yamlfile.ConfigError([yamlfile.Problem(str(path), 1, "", f"cannot read file: {exc}")]) from None


def _read_table(doc: yamlfile.Document) -> SafeSearchTable:
    top = doc.section()
    rewrites: dict[str, str] = {}
    engines: dict[str, str] = {}

    def add_host(host: str, key: yamlfile.Key, engine: str, target: str | None) -> None:
        if not _NAME_RE.match(host):
            doc.fail(key, f"'{host}' is not a lower-case A-label host name")
        elif host in engines:
            doc.fail(key, f"host '{host}' is already listed for engine '{engines[host]}'")
        else:
            engines[host] = engine
            if target is not None:
                rewrites[host] = target

    engines_section = top.sub("engines")
    for engine in list(engines_section.values):
        section = engines_section.sub(engine)
        target = section.typed("target", str, check=_check_name)
        for host, key in section.string_list("hosts"):
            add_host(host, key, engine, target or "")
        section.done()

    youtube = top.sub("youtube")
    targets_section = youtube.sub("targets")
    youtube_targets = {}
    for mode in (YouTubeMode.MODERATE, YouTubeMode.STRICT):
        youtube_targets[mode] = targets_section.typed(mode.value, str, check=_check_name) or ""
    targets_section.done()
    youtube_hosts = []
    for host, key in youtube.string_list("hosts"):
        add_host(host, key, "youtube", None)
        youtube_hosts.append(host)
    youtube.done()

    no_safe_mode = []
    seen: set[str] = set()
    for key, _item in top.items("block_when_safe_search"):
        row = doc.section(key)
        engine = row.typed("engine", str)
        name = row.typed("name", str, check=_check_name)
        match = row.typed(
            "match",
            str,
            "subtree",
            check=lambda v: None if v in ("subtree", "exact") else f"expected 'subtree' or 'exact', got '{v}'",
        )
        row.done()
        if engine is None or name is None or match is None:
            continue
        if name in seen or name in engines:
            row.fail("name", f"'{name}' is listed twice in the table")
            continue
        seen.add(name)
        no_safe_mode.append(NoSafeMode(engine, name, match == "subtree"))
    top.done()
    return SafeSearchTable(
        rewrites=rewrites,
        engines=engines,
        youtube_hosts=tuple(youtube_hosts),
        youtube_targets=youtube_targets,
        no_safe_mode=tuple(no_safe_mode),
    )


def _check_name(value: str) -> str | None:
    return None if _NAME_RE.match(value) else f"'{value}' is not a lower-case A-label host name"
