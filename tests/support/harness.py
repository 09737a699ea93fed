"""Run the real resolver (one worker, in this process) on 127.0.0.1 port 0 over a small site in a temp dir."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.message

from resolver.control import config, snapshots
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


async def until(condition, timeout_seconds: float) -> None:
    """Wait until condition() is true, checking every 10 ms; TimeoutError after timeout_seconds."""
    async with asyncio.timeout(timeout_seconds):
        while not condition():
            await asyncio.sleep(0.01)


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


@contextlib.asynccontextmanager
async def running_resolver(
    root: Path,
    upstreams: list[str],
    config_extra: str = "",
    files: dict[str, str] | None = None,
    with_admin: bool = False,
) -> AsyncIterator[Running]:
    if with_admin:
        config_extra += 'admin: {listen: "127.0.0.1:0"}\n'
    cfg = config.load_config(write_site(root, upstreams, config_extra, files))
    signature = snapshots.files_signature(cfg)
    dns_worker = worker.Worker(cfg, snapshots.build_snapshot(cfg, 1))
    await dns_worker.start(worker.bind_all(cfg, reuse_port=False))
    admin_sock = app.bind_admin(cfg)
    control = admin.Control(
        state=dns_worker.state,
        reload=dns_worker.reload,
        rpz=None if dns_worker.feed is None else dns_worker.rpz_zones,
    )
    runner = await admin.start(admin_sock, control) if admin_sock is not None else None
    running = Running(dns_worker, cfg, root, admin.bound_port(runner) if runner else None)
    watcher = asyncio.create_task(worker.watch_files(cfg, dns_worker.reload, signature))  # as `schooldns serve` does
    try:
        yield running
    finally:
        watcher.cancel()
        if runner is not None:
            await runner.cleanup()
        await dns_worker.stop()
