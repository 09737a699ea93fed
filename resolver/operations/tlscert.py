"""The block page's TLS certificate (`blockpage.tls`): loaded before serving, loaded again when its files change."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl

from resolver.control import config
from resolver.errors import ResolverError

log = logging.getLogger(__name__)

CHECK_SECONDS = 60.0  # a renewed certificate is taken within this long


class Certificate:
    """The TLS certificate of `blockpage.tls`, loaded again into the same context when its files change."""

    def __init__(self, tls: config.BlockpageTLSConfig, setting: str):
        self.tls = tls
        self.setting = setting
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._seen = self._files()
        self._load()

    def _files(self) -> tuple[tuple[int, int], ...]:
        out = []
        for path in (self.tls.cert_file, self.tls.key_file):
            try:
                st = os.stat(path)
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((0, 0))
        return tuple(out)

    def _load(self) -> None:
        try:
            self.context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ResolverError(
                f"{self.setting}: cannot load {self.tls.cert_file} with {self.tls.key_file}: "
                f"{getattr(exc, 'strerror', None) or exc}"
            ) from None

    async def watch(self) -> None:
        """Take a renewed certificate (both files written) without a restart; a broken one keeps the old."""
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            seen = self._files()
            if seen != self._seen:
                self._seen = seen
                try:
                    await asyncio.to_thread(self._load)
                    log.info("block page: certificate %s loaded again", self.tls.cert_file)
                except ResolverError as exc:
                    log.error("block page: keeping the previous certificate: %s", exc)
