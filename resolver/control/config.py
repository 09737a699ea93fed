"""The server config file: strict YAML -> frozen dataclasses, errors as file:line: key.path: message."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from resolver import yamlfile
from resolver.dataplane import upstream
from resolver.yamlfile import ConfigError

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]


@dataclasses.dataclass(frozen=True, slots=True)
class CacheConfig:
    max_entries: int = 100_000
    max_megabytes: int = 64  # estimated memory of the cached answers (cache.ENTRY_OVERHEAD_BYTES)
    min_ttl_seconds: int = 0
    max_ttl_seconds: int = 86_400
    negative_max_ttl_seconds: int = 3_600
    stale_seconds: int = 3_600  # serve an expired answer this long when every upstream fails


@dataclasses.dataclass(frozen=True, slots=True)
class ForwardingConfig:
    timeout_seconds: float = 2.0
    sockets_per_upstream: int = 16
    max_in_flight: int = 10_000


@dataclasses.dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_queries_in_flight: int = 10_000  # per worker, UDP + TCP together
    tcp_max_connections: int = 1_000
    tcp_idle_timeout_seconds: float = 10.0
    tcp_max_pipelined: int = 64  # queries in flight on one TCP connection
    shutdown_drain_seconds: float = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class ReloadConfig:
    watch_interval_seconds: float = 2.0  # check policy and list files for changes; 0 = only on SIGHUP


@dataclasses.dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: upstream.UpstreamAddress | None = None


WORKER_SPREADS = ("client", "random")  # `worker_spread`; server.spread_at_random says why


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """Everything `schooldns serve` reads from its config file; paths are absolute."""

    file: str
    listen: tuple[upstream.UpstreamAddress, ...]
    upstreams: tuple[upstream.UpstreamAddress, ...]
    workers: int
    worker_spread: str  # how UDP queries reach the workers: "client" (the kernel's hash) or "random"
    cache: CacheConfig
    forwarding: ForwardingConfig
    limits: LimitsConfig
    reload: ReloadConfig
    admin: AdminConfig
    policies_dir: Path
    blocklists_dir: Path
    state_dir: Path
    default_school: str | None


def load_config(path: Path | str) -> Config:
    path = Path(path)
    return parse_config(yamlfile.load_yaml(path), path)


def parse_config(doc: yamlfile.Document, path: Path) -> Config:
    """Validate a parsed config document; raise ConfigError listing every problem."""
    if not isinstance(doc.data, dict):
        doc.fail((), "the config file must be a mapping of keys")
        doc.raise_if_failed()
    base = path.resolve().parent
    top = doc.section()
    listen = _addresses(top, "listen", ["127.0.0.1:53"], default_port=53)
    upstreams = _addresses(top, "upstreams", None, default_port=53)
    if not upstreams and top.has("upstreams"):
        top.fail("upstreams", "at least one upstream is needed")
    for address in upstreams:
        if address.port == 0:
            top.fail("upstreams", f"{address}: port 0 is not an upstream")
    workers_raw = top.raw("workers", 1)
    workers = 1
    if workers_raw == "auto":
        workers = os.cpu_count() or 1
    elif isinstance(workers_raw, int) and not isinstance(workers_raw, bool) and 1 <= workers_raw <= 256:
        workers = workers_raw
    else:
        top.fail("workers", f'expected a number of processes 1-256 or "auto", got {workers_raw!r}')
    worker_spread = top.raw("worker_spread", "client")
    if worker_spread not in WORKER_SPREADS:
        top.fail("worker_spread", f"expected one of {', '.join(WORKER_SPREADS)}, got {worker_spread!r}")

    cache = _dataclass(top.sub("cache"), CacheConfig)
    forwarding = _dataclass(top.sub("forwarding"), ForwardingConfig)
    limits = _dataclass(top.sub("limits"), LimitsConfig)
    reload = _dataclass(top.sub("reload"), ReloadConfig)
    admin_section = top.sub("admin")
    admin_listen = _addresses(admin_section, "listen", [], default_port=8053, single=True)
    admin_section.done()

    policies_dir = base / top.typed("policies_dir", str, "policies")
    blocklists_dir = base / top.typed("blocklists_dir", str, "blocklists")
    state_dir = base / top.typed("state_dir", str, "var")
    default_school = top.typed("default_school", str, None)
    top.raw("version", 1)
    top.done()
    doc.raise_if_failed()
    return Config(
        file=str(path),
        listen=tuple(listen),
        upstreams=tuple(upstreams),
        workers=workers,
        worker_spread=worker_spread,
        cache=cache,
        forwarding=forwarding,
        limits=limits,
        reload=reload,
        admin=AdminConfig(admin_listen[0] if admin_listen else None),
        policies_dir=policies_dir,
        blocklists_dir=blocklists_dir,
        state_dir=state_dir,
        default_school=default_school,
    )


def _addresses(
    section: yamlfile.Section, name: str, default: list[str] | None, default_port: int, single: bool = False
) -> list[upstream.UpstreamAddress]:
    if single and isinstance(section.values.get(name), str):
        section.values[name] = [section.values[name]]
    out = []
    for text, key in section.string_list(name, default):
        try:
            out.append(upstream.parse_address(text, default_port))
        except ValueError as exc:
            section.doc.fail(key, str(exc))
    if default is None and not section.has(name):
        section.fail(name, "missing required key")
    return out


def _dataclass(section: yamlfile.Section, cls: type) -> object:
    """Read a flat section whose keys are the fields of cls (int/float, all >= 0)."""
    values = {}
    for field in dataclasses.fields(cls):
        default = field.default
        kind = (int, float) if isinstance(default, float) else int
        value = section.typed(field.name, kind, default, check=lambda v: "must not be negative" if v < 0 else None)
        values[field.name] = float(value) if isinstance(default, float) else value
    section.done()
    return cls(**values)
