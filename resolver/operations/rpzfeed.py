"""RPZ feed: answers transfer clients' SOA and zone-transfer questions for the installed zones, and NOTIFYs secondaries.

Only `transfer_clients` may ask, with a TSIG key when `tsig_keys_file` is set. The DNS messages,
TSIG and NOTIFY are in resolver.operations.rpztransfer, imported (with dnspython) by the first
transfer client's question or NOTIFY: the query path never loads them.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from resolver.control import config, tsigkeys
from resolver.dataplane import pipeline, wire
from resolver.errors import ResolverError
from resolver.filtering import lists, schools
from resolver.operations import rpzzones

log = logging.getLogger(__name__)


class Feed:
    """The RPZ feed of one process: its zones for the installed snapshot, and who may have them."""

    def __init__(self, cfg: config.RpzConfig, blocklists_dir: Path, state_dir: Path, announce: bool = False):
        """`announce`: this process sends the NOTIFYs (one process of all: the only one, or worker 0).

        Raises TsigKeysError when the keys file cannot be used: a start fails on it.
        """
        self.config = cfg
        self.blocklists_dir = blocklists_dir
        self.state_dir = state_dir
        self.announce = announce
        self.clients = schools.SchoolDirectory.build((network, True) for network in cfg.transfer_clients)
        self.keys: tuple[tsigkeys.TsigKey, ...] = ()
        self._keys_seen: tuple[int, int, int] | None = None
        self._load_keys(at_start=True)
        self.version: rpzzones.Version | None = None
        self.transfers = 0  # zone transfers being written
        self._announced: int | None = None  # the serial last sent to the secondaries
        self._notifying: set[asyncio.Task[None]] = set()

    def _load_keys(self, at_start: bool = False) -> None:
        """Read the TSIG keys file again if it changed; at a reload a broken file keeps the keys in use."""
        path = self.config.tsig_keys_file
        if path is None:
            return
        try:
            st = path.stat()
            seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            seen = (0, 0, 0)
        if seen == self._keys_seen:
            return
        try:
            self.keys = tsigkeys.load(path)
        except tsigkeys.TsigKeysError as exc:
            if at_start:
                raise
            log.error("rpz: keeping the TSIG keys in use: %s", exc)
        self._keys_seen = seen

    def prepare(self, snapshot: pipeline.Snapshot) -> rpzzones.Version:
        """The zones of `snapshot` (reads sources.yaml, the list files' state, state_dir): off the event loop."""
        self._load_keys()
        suffix = self.config.zone_suffix
        problem = None
        sources: tuple[lists.Source, ...] = ()
        if snapshot.from_last_good:
            problem = "the list files do not build (serving the last good lists): the zones wait for a good reload"
        else:
            try:
                found = lists.load_sources(self.blocklists_dir)
            except (ResolverError, OSError) as exc:
                problem = f"the lists' sources.yaml does not load ({exc}); a reload follows its repair"
            else:
                if found.categories == snapshot.categories:
                    sources = found.sources
                else:
                    problem = "the categories changed since the lists were installed; a reload follows"
        zones: dict[str, rpzzones.Zone] = {}
        for bit, category in enumerate(snapshot.categories):
            if category == rpzzones.PROVINCE_ZONE:
                log.warning("rpz: category %r has no zone: %s.%s holds the mandatory ones", category, category, suffix)
                continue
            name = f"{category}.{suffix}"
            zones[name] = rpzzones.Zone(name, 1 << bit, tuple(s for s in sources if s.category == category))
        mandatory = snapshot.province.mandatory_mask
        name = f"{rpzzones.PROVINCE_ZONE}.{suffix}"
        zones[name] = rpzzones.Zone(
            name, mandatory, tuple(s for s in sources if mandatory >> snapshot.categories.index(s.category) & 1)
        )
        if problem is not None:
            log.error("rpz: zones not served: %s", problem)
        return rpzzones.Version(
            snapshot,
            rpzzones.list_version(snapshot, self.state_dir),
            int(snapshot.province.blocked_ttl_seconds),
            zones,
            rpzzones.file_state([source.path for source in sources]),
            problem,
        )

    def install(self, version: rpzzones.Version) -> None:
        """Serve `version` from now on; tell the secondaries when its serial is new to them."""
        self.version = version
        if self.announce and self.config.notify and version.serial != self._announced and version.problem is None:
            from resolver.operations import rpztransfer  # dnspython, off the query path

            self._announced = version.serial
            task = asyncio.get_running_loop().create_task(rpztransfer.notify_all(version, self.config.notify))
            self._notifying.add(task)
            task.add_done_callback(self._notifying.discard)

    def answer(
        self, query: wire.Query, data: bytes, client: str | bytes, transport: str
    ) -> bytes | pipeline.Stream | None:
        """The pipeline's `Zones`: SOA, AXFR and IXFR of the zones, for transfer clients only."""
        version = self.version
        zone = version.zones.get(query.name) if version is not None else None
        if zone is None or version is None:
            return None
        if self.clients.lookup(client) is None:
            ede = wire.ede_option(wire.EDE_PROHIBITED, "not a transfer client of this feed") if query.edns else b""
            return wire.make_error(query.id, query.flags, wire.REFUSED, query, ede)
        from resolver.operations import rpztransfer  # dnspython, off the query path

        return rpztransfer.answer(self, version, zone, query, data, transport)

    def stop(self) -> None:
        """Give up NOTIFYs still being repeated (shutdown)."""
        for task in self._notifying:
            task.cancel()
