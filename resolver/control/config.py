"""The server config file: strict YAML -> frozen dataclasses, errors as file:line: key.path: message."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from pathlib import Path
from typing import Any

from resolver import yamlfile
from resolver.dataplane import tls, upstream
from resolver.yamlfile import ConfigError

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]

#: The config file format this code reads (`version:`); a file of another version is refused whole.
VERSION = 1
MAX_WORKERS = 64


@dataclasses.dataclass(frozen=True, slots=True)
class Bounds:
    """The values a number in the config file may take: `low` to `high`, and 0 too when `zero` (an off switch)."""

    low: int | float
    high: int | float
    unit: str = ""
    zero: bool = False

    def problem(self, value: int | float) -> str | None:
        """None for an allowed value, else the message (NaN and infinities are never allowed)."""
        if math.isfinite(value) and (self.low <= value <= self.high or (self.zero and value == 0)):
            return None
        unit = f" {self.unit}" if self.unit else ""
        zero = "0 or " if self.zero else ""
        return f"expected {zero}{_number(self.low)} to {_number(self.high)}{unit}, got {_number(value)}"


def _bounded(default: int | float, low: int | float, high: int | float, unit: str = "", zero: bool = False) -> Any:
    """A config field with its default and allowed range (docs/configuration.md says why each is what it is)."""
    return dataclasses.field(default=default, metadata={"bounds": Bounds(low, high, unit, zero)})


@dataclasses.dataclass(frozen=True, slots=True)
class CacheConfig:
    max_entries: int = _bounded(100_000, 0, 10_000_000)  # 0 turns the cache off
    max_megabytes: int = _bounded(64, 1, 16_384, "megabytes")  # estimated memory (cache.ENTRY_OVERHEAD_BYTES)
    min_ttl_seconds: int = _bounded(0, 0, 3_600, "seconds")  # at most max_ttl_seconds
    max_ttl_seconds: int = _bounded(86_400, 1, 604_800, "seconds")
    negative_max_ttl_seconds: int = _bounded(3_600, 0, 86_400, "seconds")
    stale_seconds: int = _bounded(3_600, 0, 259_200, "seconds")  # serve an expired answer while upstreams fail
    stale_wait_seconds: float = _bounded(1.8, 0.0, 60.0, "seconds")  # ... once a miss has waited this long
    # ... and at once, without asking upstream, for this long after a refresh failed (RFC 8767 5)
    stale_failure_recheck_seconds: float = _bounded(30.0, 0.0, 3_600.0, "seconds")


@dataclasses.dataclass(frozen=True, slots=True)
class ForwardingConfig:
    timeout_seconds: float = _bounded(2.0, 0.1, 60.0, "seconds")
    sockets_per_upstream: int = _bounded(16, 1, 256)
    max_in_flight: int = _bounded(10_000, 1, 100_000)


@dataclasses.dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_queries_in_flight: int = _bounded(10_000, 1, 100_000)  # per worker, UDP + TCP together
    # Of those, one school's at most: its flood is dropped, the other schools keep their places.
    max_queries_in_flight_per_school: int = _bounded(2_500, 1, 100_000)
    # Queries a second of one school, per worker, in bursts of up to 2 s of them; 0 = no cap.
    queries_per_second_per_school: int = _bounded(0, 0, 1_000_000)
    tcp_max_connections: int = _bounded(1_000, 1, 10_000)
    tcp_idle_timeout_seconds: float = _bounded(10.0, 0.1, 300.0, "seconds")
    tcp_max_pipelined: int = _bounded(64, 1, 1_024)  # queries in flight on one TCP connection
    shutdown_drain_seconds: float = _bounded(5.0, 0.0, 60.0, "seconds")
    # REFUSED answers a second over UDP to each /24 or /56 outside every school network; 0 = none.
    unknown_client_refusals_per_second: int = _bounded(10, 0, 10_000)


@dataclasses.dataclass(frozen=True, slots=True)
class ReloadConfig:
    # Check policy and list files for changes this often; 0 = only on SIGHUP.
    watch_interval_seconds: float = _bounded(2.0, 0.05, 3_600.0, "seconds", zero=True)


@dataclasses.dataclass(frozen=True, slots=True)
class RollupsConfig:
    """`rollups:` the daily per-school numbers kept in state_dir for the annual report and /ui/."""

    # The counters' growth is written this often: a crash loses at most this much.
    interval_seconds: float = _bounded(60.0, 0.1, 60.0, "seconds")
    retention_days: int = _bounded(400, 1, 3_660, "days")  # days older than this are deleted


@dataclasses.dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: upstream.UpstreamAddress | None = None
    tokens_file: Path = Path("tokens.yaml")  # absolute once parsed; default: state_dir/tokens.yaml


@dataclasses.dataclass(frozen=True, slots=True)
class SyncConfig:
    """`sync:` an instance that takes its lists and policies only from the hub's signed (TUF) repository."""

    repository: str  # base URL under which the hub's repository directory is served (metadata/, targets/)
    trusted_root: Path  # a copy of the repository's metadata/1.root.json, the trust anchor
    interval_seconds: float = _bounded(300.0, 1.0, 86_400.0, "seconds")
    max_shrink_percent: float = _bounded(20.0, 0.0, 100.0, "percent")


@dataclasses.dataclass(frozen=True, slots=True)
class PublishConfig:
    """`publish:` the hub publishes its lists and policies into a TUF repository after every accepted change."""

    repository: Path  # the directory `schooldns bundle init` made
    keys: Path  # the online keys (targets, snapshot, timestamp); the root key stays offline


@dataclasses.dataclass(frozen=True, slots=True)
class TlsListenConfig:
    """`dot:`, `doh:` or `blockpage.tls:` addresses served over TLS, a certificate chain and its key (PEM files)."""

    listen: tuple[upstream.UpstreamAddress, ...]
    cert_file: Path
    key_file: Path


@dataclasses.dataclass(frozen=True, slots=True)
class BlockpageConfig:
    """`blockpage:` the HTTP server of the block page (the addresses `blockpage` answers point to) and its requests."""

    listen: tuple[upstream.UpstreamAddress, ...] = ()
    tls: TlsListenConfig | None = None
    max_requests: int = _bounded(10_000, 10, 1_000_000)  # rows kept, the oldest decided ones dropped first
    retention_days: int = _bounded(90, 1, 3_650, "days")
    submissions_per_source: int = _bounded(10, 1, 10_000)  # form posts per source and window
    submission_window_seconds: float = _bounded(600.0, 1.0, 86_400.0, "seconds")


BLOCKPAGE_NUMBERS = ("max_requests", "retention_days", "submissions_per_source", "submission_window_seconds")


@dataclasses.dataclass(frozen=True, slots=True)
class ProxyProtocolConfig:
    """`proxy_protocol:` the front-ends whose PROXY v2 headers and Client Subnet options name the client."""

    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class RpzConfig:
    """`rpz:` every category and the province's mandatory policy as RPZ zones for ISP resolvers (docs/isp.md)."""

    zone_suffix: str  # lower case, without the trailing dot: "rpz.schooldns"
    transfer_clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]  # who may ask for SOA and AXFR
    tsig_keys_file: Path | None  # None: transfers need no TSIG
    notify: tuple[upstream.UpstreamAddress, ...]  # secondaries told of every new version


# A zone suffix leaves room under it for the listed names (a name and its zone fit in 255 octets).
MAX_ZONE_SUFFIX = 100
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


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
    rollups: RollupsConfig
    sync: SyncConfig | None  # None: lists and policies come from the local directories
    publish: PublishConfig | None  # None: this machine publishes nothing
    blockpage: BlockpageConfig | None  # None: no block page server
    policies_dir: Path
    blocklists_dir: Path
    state_dir: Path
    default_school: str | None
    default_school_line: int = 1  # where default_school is written, for problems found once policies load
    dot: TlsListenConfig | None = None  # DNS over TLS (RFC 7858)
    doh: TlsListenConfig | None = None  # DNS over HTTPS (RFC 8484)
    proxy_protocol: ProxyProtocolConfig | None = None  # None: every client is the address it comes from
    rpz: RpzConfig | None = None  # None: no RPZ feed


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
    top.typed("version", int, VERSION, check=yamlfile.only_version(VERSION))
    # Port 0 (a free port the system picks) serves tests; no upstream listens there.
    listen = _addresses(top, "listen", ["127.0.0.1:53"], default_port=53)
    upstreams = _addresses(top, "upstreams", None, default_port=53, port_zero=False, tls_allowed=True)
    workers_raw = top.raw("workers", 1)
    workers = 1
    if workers_raw == "auto":
        workers = min(os.cpu_count() or 1, MAX_WORKERS)
    elif isinstance(workers_raw, int) and not isinstance(workers_raw, bool) and 1 <= workers_raw <= MAX_WORKERS:
        workers = workers_raw
    else:
        top.fail("workers", f'expected a number of processes 1 to {MAX_WORKERS} or "auto", got {workers_raw!r}')
    worker_spread = top.raw("worker_spread", "client")
    if worker_spread not in WORKER_SPREADS:
        top.fail("worker_spread", f"expected one of {', '.join(WORKER_SPREADS)}, got {worker_spread!r}")

    cache = _dataclass(top.sub("cache"), CacheConfig)
    if cache.min_ttl_seconds > cache.max_ttl_seconds:
        doc.fail(
            ("cache", "min_ttl_seconds"),
            f"{cache.min_ttl_seconds} is above cache.max_ttl_seconds ({cache.max_ttl_seconds})",
        )
    forwarding = _dataclass(top.sub("forwarding"), ForwardingConfig)
    limits = _dataclass(top.sub("limits"), LimitsConfig)
    reload = _dataclass(top.sub("reload"), ReloadConfig)
    rollups = _dataclass(top.sub("rollups"), RollupsConfig)
    admin_section = top.sub("admin")
    admin_listen = _addresses(admin_section, "listen", [], default_port=8053, single=True, required=False)
    tokens_file = admin_section.typed("tokens_file", str, None)
    admin_section.done()

    policies_dir = base / top.typed("policies_dir", str, "policies")
    blocklists_dir = base / top.typed("blocklists_dir", str, "blocklists")
    state_dir = base / top.typed("state_dir", str, "var")
    sync = _sync(top, base) if top.has("sync") else None
    publish = _publish(top, base) if top.has("publish") else None
    if sync is not None and publish is not None:
        top.fail("publish", "a hub publishes its own files and does not sync: remove `sync` or `publish`")
    blockpage = _blockpage(top, base) if top.has("blockpage") else None
    dot = _tls_listener(top, "dot", base, 853, tls.DOT_ALPN) if top.has("dot") else None
    doh = _tls_listener(top, "doh", base, 443, tls.DOH_ALPN) if top.has("doh") else None
    proxy_protocol = _proxy_protocol(top) if top.has("proxy_protocol") else None
    rpz = _rpz(top, base) if top.has("rpz") else None
    default_school = top.raw("default_school", None)
    if default_school is not None and not isinstance(default_school, str):
        top.fail("default_school", f"expected a school id (a string) or null, got {yamlfile.describe(default_school)}")
        default_school = None
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
        admin=AdminConfig(
            admin_listen[0] if admin_listen else None,
            base / tokens_file if tokens_file else state_dir / "tokens.yaml",
        ),
        rollups=rollups,
        sync=sync,
        publish=publish,
        blockpage=blockpage,
        policies_dir=policies_dir,
        blocklists_dir=blocklists_dir,
        state_dir=state_dir,
        default_school=default_school,
        default_school_line=doc.line_of(("default_school",)),
        dot=dot,
        doh=doh,
        proxy_protocol=proxy_protocol,
        rpz=rpz,
    )


def _addresses(
    section: yamlfile.Section,
    name: str,
    default: list[str] | None,
    default_port: int,
    *,
    single: bool = False,
    required: bool = True,
    port_zero: bool = True,
    tls_allowed: bool = False,
) -> list[upstream.UpstreamAddress]:
    """The addresses of a list (one address when `single`); `required`: at least one, whether written or by default;
    `tls_allowed`: `tls://address#name` too (an upstream asked over DoT)."""
    value = section.values.get(name)
    if single and isinstance(value, str):
        section.values[name] = [value]
    elif single and isinstance(value, list) and len(value) > 1:
        section.fail(name, f"expected one address, got {len(value)}")
    out = []
    for text, key in section.string_list(name, default):
        try:
            if tls_allowed and text.startswith("tls://"):
                address = _tls_upstream(text)
            else:
                address = upstream.parse_address(text, default_port)
        except ValueError as exc:
            section.doc.fail(key, str(exc))
            continue
        if address.port == 0 and not port_zero:
            section.doc.fail(key, f"'{text}': port 0 is not a server's port")
            continue
        out.append(address)
    if default is None and not section.has(name):
        section.fail(name, "missing required key")
    elif required and section.values.get(name) == []:
        section.fail(name, "at least one address is needed")
    return out


_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def _tls_upstream(text: str) -> upstream.UpstreamAddress:
    """`tls://1.1.1.1:853#cloudflare-dns.com` (port 853 by default; without #name, the address is verified)."""
    address_text, sep, name = text[len("tls://") :].partition("#")
    address = upstream.parse_address(address_text, 853)
    if sep and not _HOSTNAME_RE.match(name.lower()):
        raise ValueError(f"bad upstream {text!r}: {name!r} is not a host name (expected tls://address:port#name)")
    return dataclasses.replace(address, tls_name=name.lower() if sep else address.host)


def _tls_listener(
    top: yamlfile.Section, name: str, base: Path, default_port: int, alpn: tuple[str, ...]
) -> TlsListenConfig:
    """`dot:` or `doh:`: listen addresses, and a certificate and key that load (checked here, so that
    `schooldns check` and a start say at once what is wrong with them)."""
    section = top.sub(name)
    listen = _addresses(section, "listen", None, default_port=default_port)
    files = {}
    for key in ("cert_file", "key_file"):
        value = section.typed(key, str)
        files[key] = base / value if isinstance(value, str) and value else None
    section.done()
    cert_file, key_file = files["cert_file"], files["key_file"]
    if cert_file is not None and key_file is not None:
        try:
            tls.load_context(cert_file, key_file, alpn)
        except tls.CertificateError as exc:
            section.fail(exc.setting, str(exc))
    return TlsListenConfig(tuple(listen), cert_file or base, key_file or base)


def _proxy_protocol(top: yamlfile.Section) -> ProxyProtocolConfig:
    section = top.sub("proxy_protocol")
    trusted = []
    for text, key in section.string_list("trusted"):
        try:
            trusted.append(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError as exc:
            section.doc.fail(key, f"expected a network such as 192.0.2.0/24 or 2001:db8::/32: {exc}")
    if not section.has("trusted"):
        section.fail("trusted", "missing required key: the networks of the load balancers or resolvers to believe")
    elif not trusted and not section.doc.problems:
        section.fail("trusted", "at least one network is needed")
    section.done()
    return ProxyProtocolConfig(tuple(trusted))


def _sync(top: yamlfile.Section, base: Path) -> SyncConfig:
    section = top.sub("sync")
    repository = section.typed("repository", str)
    if isinstance(repository, str) and not repository.startswith(("http://", "https://")):
        section.fail("repository", f"expected an http:// or https:// URL, got {repository!r}")
    trusted_root = section.typed("trusted_root", str)
    numbers = {}
    for name in ("interval_seconds", "max_shrink_percent"):
        field = SyncConfig.__dataclass_fields__[name]
        value = section.typed(name, (int, float), field.default, check=field.metadata["bounds"].problem)
        numbers[name] = float(value)
    section.done()
    return SyncConfig(repository or "", base / (trusted_root or ""), **numbers)


def _publish(top: yamlfile.Section, base: Path) -> PublishConfig:
    section = top.sub("publish")
    repository = section.typed("repository", str)
    keys = section.typed("keys", str)
    section.done()
    return PublishConfig(base / (repository or ""), base / (keys or ""))


def _blockpage(top: yamlfile.Section, base: Path) -> BlockpageConfig:
    section = top.sub("blockpage")
    listen = _addresses(section, "listen", ["0.0.0.0:80"], default_port=80)
    page_tls = None
    written = section.has("tls")
    tls_section = section.sub("tls")  # taken either way: an unknown key's message lists it
    if written:
        tls_listen = _addresses(tls_section, "listen", ["0.0.0.0:443"], default_port=443)
        cert_file = tls_section.typed("cert_file", str)
        key_file = tls_section.typed("key_file", str)
        tls_section.done()
        page_tls = TlsListenConfig(tuple(tls_listen), base / (cert_file or ""), base / (key_file or ""))
    numbers: dict[str, Any] = {}
    for name in BLOCKPAGE_NUMBERS:
        field = BlockpageConfig.__dataclass_fields__[name]
        kind = (int, float) if isinstance(field.default, float) else int
        value = section.typed(name, kind, field.default, check=field.metadata["bounds"].problem)
        numbers[name] = float(value) if isinstance(field.default, float) else value
    section.done()
    return BlockpageConfig(tuple(listen), page_tls, **numbers)


def _rpz(top: yamlfile.Section, base: Path) -> RpzConfig:
    section = top.sub("rpz")
    suffix = section.typed("zone_suffix", str, "rpz.schooldns.")
    suffix = suffix.lower().removesuffix(".")
    if not all(_LABEL.fullmatch(label) for label in suffix.split(".")) or len(suffix) > MAX_ZONE_SUFFIX:
        section.fail(
            "zone_suffix",
            f"'{suffix}.' is not a domain name of at most {MAX_ZONE_SUFFIX} characters (e.g. rpz.schooldns.)",
        )
    clients = []
    for text, key in section.string_list("transfer_clients"):
        try:
            clients.append(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError:
            section.doc.fail(key, f"'{text}' is not an IPv4 or IPv6 network (e.g. 192.0.2.53/32 or 2001:db8::/64)")
    keys_file = section.typed("tsig_keys_file", str, None)
    notify = _addresses(section, "notify", [], default_port=53, required=False, port_zero=False)
    section.done()
    return RpzConfig(suffix, tuple(clients), base / keys_file if keys_file else None, tuple(notify))


def _dataclass(section: yamlfile.Section, cls: type) -> Any:
    """Read a flat section whose keys are the fields of cls, each a number within its field's Bounds."""
    values = {}
    for field in dataclasses.fields(cls):
        default = field.default
        kind = (int, float) if isinstance(default, float) else int
        value = section.typed(field.name, kind, default, check=field.metadata["bounds"].problem)
        values[field.name] = float(value) if isinstance(default, float) else value
    section.done()
    return cls(**values)


def _number(value: int | float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"
