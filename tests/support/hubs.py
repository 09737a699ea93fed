"""A hub's signed repository over a small site (bundle init + publish), and an in-process instance syncing from it."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from resolver.control import bundle, config, snapshots, sync
from resolver.processes import worker
from tests.support.harness import SCHOOL_A, Running, write_site

# School A (127.0.0.1) denies new.example.org once the hub publishes this.
SCHOOL_A_DENYING_NEW = SCHOOL_A.replace("deny: [denied.example.org]", "deny: [denied.example.org, new.example.org]")


@dataclasses.dataclass
class Hub:
    """The hub's files (policies/, blocklists/), its repository and its keys."""

    site: Path
    repo: Path
    keys: Path
    config: config.Config

    @property
    def trusted_root(self) -> Path:
        return self.repo / "metadata" / "1.root.json"

    def write(self, relative: str, text: str) -> None:
        (self.site / relative).write_text(text, encoding="utf-8")

    def publish(self, allow_shrink: Sequence[str] = (), expiries: bundle.Expiries | None = None) -> bundle.Published:
        return bundle.publish(self.repo, self.keys, self.config, allow_shrink, expiries or bundle.Expiries())


def make_hub(root: Path) -> Hub:
    """A repository under root with version 1 of the harness's site published."""
    site = root / "hub"
    cfg = config.load_config(write_site(site, ["127.0.0.1:53"]))
    hub = Hub(site, root / "repo", root / "keys", cfg)
    bundle.init(hub.repo, hub.keys)
    hub.publish()
    return hub


def sync_config(url: str, trusted_root: Path, interval_seconds: float = 3600) -> str:
    return f"sync: {{repository: '{url}', trusted_root: '{trusted_root}', interval_seconds: {interval_seconds}}}\n"


@dataclasses.dataclass
class Instance:
    running: Running
    syncer: sync.Syncer

    @property
    def config(self) -> config.Config:
        return self.running.config


@contextlib.asynccontextmanager
async def synced_instance(root: Path, upstream: str, url: str, trusted_root: Path) -> AsyncIterator[Instance]:
    """An instance as `schooldns serve` runs it with `sync:` (workers: 1), syncing only when told (sync_now)."""
    cfg = config.load_config(write_site(root, [upstream], sync_config(url, trusted_root)))
    await sync.first_sync(cfg)
    dns_worker = worker.Worker(cfg, snapshots.start_snapshot(cfg, 1))
    await dns_worker.start(worker.bind_all(cfg, reuse_port=False))
    syncer = sync.Syncer(cfg, dns_worker.reload, lambda: dns_worker.pipeline.snapshot.entry_counts)
    try:
        yield Instance(Running(dns_worker, cfg, root), syncer)
    finally:
        await dns_worker.stop()
