"""Run the real resolver (one worker, in this process) on 127.0.0.1 port 0 over a small site in a temp dir."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.message
from prometheus_client.parser import text_string_to_metric_families

from resolver.control import config, snapshots, syncstate, versions
from resolver.dataplane import pipeline
from resolver.filtering import domains
from resolver.operations import admin
from resolver.processes import app, worker

PROVINCE = """\
mandatory: [malware]
timezone: Asia/Ho_Chi_Minh
info_url: "http://blocked.example.vn/"
profiles:
  primary: {block: [adult, games, bypass]}
  upper_secondary: {block: [adult, bypass]}
"""

# School A is the loopback client 127.0.0.1 (and ::1); school B is 127.0.0.2.
# Queries from 127.0.0.3 belong to no school.
SCHOOL_A = """\
id: school-a
name: "Tiểu học A"
level: primary
networks: [127.0.0.1/32, "::1/128"]
allow: [allowed.example.com]
deny: [denied.example.org]
"""

SCHOOL_B = """\
id: school-b
name: "THPT B"
level: upper_secondary
networks: [127.0.0.2/32]
safe_search: true
"""

SOURCES = """\
categories:
  adult:
    sources:
      - {file: adult.txt, format: domains}
  games:
    sources:
      - {file: games.txt, format: domains}
  malware:
    sources:
      - {file: malware.txt, format: domains}
  bypass:
    sources: []
"""

FILES = {
    "policies/province.yaml": PROVINCE,
    "policies/school-a.yaml": SCHOOL_A,
    "policies/school-b.yaml": SCHOOL_B,
    "blocklists/sources.yaml": SOURCES,
    "blocklists/adult.txt": "adult.example.com\n",
    "blocklists/games.txt": "games.example.com\nallowed.example.com\n",
    "blocklists/malware.txt": "malware.example.com\n",
}


@dataclasses.dataclass
class Running:
    worker: worker.Worker
    config: config.Config
    root: Path
    admin_port: int | None = None
    blockpage_port: int | None = None  # the block page's first plain HTTP address (with `blockpage:`)
    blockpage_tls_port: int | None = None

    @property
    def port(self) -> int:
        return self.worker.addresses[0][1]

    async def udp(
        self, name: str, rdtype: str = "A", source: str = "127.0.0.1", timeout: float = 3.0, **make_query_args
    ) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype, **make_query_args)
        return await dns.asyncquery.udp(query, "127.0.0.1", port=self.port, source=source, timeout=timeout)

    async def tcp(
        self, name: str, rdtype: str = "A", source: str = "127.0.0.1", timeout: float = 3.0, **make_query_args
    ) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype, **make_query_args)
        return await dns.asyncquery.tcp(query, "127.0.0.1", port=self.port, source=source, timeout=timeout)

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of the admin API's /metrics (a counter's name with its `_total`); 0 when it has none."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.admin_port}/metrics") as response,
        ):
            text = await response.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0


async def until(condition, timeout_seconds: float) -> None:
    """Wait until condition() is true, checking every 10 ms; TimeoutError after timeout_seconds."""
    async with asyncio.timeout(timeout_seconds):
        while not condition():
            await asyncio.sleep(0.01)


def write_lists_over_capacity(directory: Path, categories: list[str]) -> Path:
    """sources.yaml and a list per category holding more names than one index has mask sets for,
    each name in its own combination of one to three categories (the compile fails)."""
    combinations = [
        combination for size in (1, 2, 3) for combination in itertools.combinations(range(len(categories)), size)
    ][: domains._MAX_MASKSETS + 1]
    names: dict[str, list[str]] = {category: [] for category in categories}
    for number, combination in enumerate(combinations):
        for bit in combination:
            names[categories[bit]].append(f"n{number}.example")
    for category, listed in names.items():
        (directory / f"{category}.txt").write_text("\n".join(listed) + "\n")
    (directory / "sources.yaml").write_text(
        "categories:\n"
        + "".join(f"  {c}:\n    sources:\n      - {{file: {c}.txt, format: domains}}\n" for c in categories)
    )
    return directory


def write_site(
    root: Path,
    upstreams: list[str],
    config_extra: str = "",
    files: dict[str, str] | None = None,
    listen: tuple[str, ...] = ("127.0.0.1:0",),
) -> Path:
    """Write config.yaml + policies/ + blocklists/ under root; returns the config path."""
    for relative, text in {**FILES, **(files or {})}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    upstream_list = ", ".join(f'"{u}"' for u in upstreams)
    listen_list = ", ".join(f'"{a}"' for a in listen)
    config_path = root / "config.yaml"
    config_path.write_text(
        f"listen: [{listen_list}]\nupstreams: [{upstream_list}]\n"
        f"policies_dir: policies\nblocklists_dir: blocklists\nstate_dir: var\n"
        f"forwarding: {{timeout_seconds: 1.0}}\n{config_extra}",
        encoding="utf-8",
    )
    return config_path


def install_as_synced(root: Path, state_dir: Path) -> None:
    """The site's policies/ and blocklists/ as the verified version a sync installed (for a config with `sync:`)."""
    version = versions.sync_dir(state_dir) / versions.VERSIONS / "1-test"
    shutil.copytree(root / "policies", version / versions.POLICIES)
    shutil.copytree(root / "blocklists", version / versions.LISTS)
    versions.switch(state_dir, version)


@contextlib.asynccontextmanager
async def running_resolver(
    root: Path,
    upstreams: list[str],
    config_extra: str = "",
    files: dict[str, str] | None = None,
    with_admin: bool = False,
    admin_limits: admin.Limits | None = None,
    syncing: syncstate.Syncing | None = None,
) -> AsyncIterator[Running]:
    if with_admin:
        config_extra += 'admin: {listen: "127.0.0.1:0"}\n'
    cfg = config.load_config(write_site(root, upstreams, config_extra, files))
    if cfg.sync is not None and versions.current(cfg.state_dir) is None:
        install_as_synced(root, cfg.state_dir)
    signature = snapshots.files_signature(cfg)
    dns_worker = worker.Worker(cfg, snapshots.build_snapshot(cfg, 1))
    dns_worker.files = signature
    await dns_worker.start(worker.bind_all(cfg, reuse_port=False))
    admin_sock = app.bind_admin(cfg)

    async def installed() -> pipeline.Snapshot:
        return dns_worker.pipeline.snapshot

    control = admin.Control(
        state=dns_worker.state,
        reload=dns_worker.reload,
        config=cfg,
        snapshot=installed,
        sync=syncing,
        rpz=None if dns_worker.feed is None else dns_worker.rpz_zones,
    )  # its sheds are shared with the block page, as app.serve does
    runner = await admin.start(admin_sock, control, admin_limits) if admin_sock is not None else None
    blockpage_sockets = app.bind_blockpage(cfg)
    blockpage = await app.start_blockpage(blockpage_sockets, cfg, installed, control.sheds)
    running = Running(dns_worker, cfg, root, admin.bound_port(runner) if runner else None)
    if blockpage_sockets is not None:
        running.blockpage_port = blockpage_sockets.http[0].getsockname()[1]
        if blockpage_sockets.https:
            running.blockpage_tls_port = blockpage_sockets.https[0].getsockname()[1]
    watcher = asyncio.create_task(
        worker.watch_files(cfg, dns_worker.reload, lambda: dns_worker.files)
    )  # as `schooldns serve` does
    try:
        yield running
    finally:
        watcher.cancel()
        await app.stop_blockpage(blockpage)
        if runner is not None:
            await runner.cleanup()
        await dns_worker.stop()
