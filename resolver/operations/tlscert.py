"""The block page's TLS certificate (`blockpage.tls`): loaded before serving, loaded again when its files change."""

from __future__ import annotations

import asyncio
import logging
import ssl

from resolver.control import config
from resolver.dataplane.tls import file_signature
from resolver.errors import ResolverError

log = logging.getLogger(__name__)

CHECK_SECONDS = 60.0  # a renewed certificate is taken within this long


class Certificate:
    """The TLS certificate of `blockpage.tls`, loaded again into the same context when its files change."""

    def __init__(self, tls: config.TlsListenConfig, setting: str):
        self.tls = tls
        self.setting = setting
        self.context = self._loaded()
        self._seen = file_signature(self.tls.cert_file, self.tls.key_file)

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed since the last look; True if they were.

        The pair is tried in a new context first, so that a certificate without its key (a renewal
        caught half-written) raises ResolverError and leaves the served one as it was; it is tried
        again at the next change.
        """
        seen = file_signature(self.tls.cert_file, self.tls.key_file)
        if seen == self._seen:
            return False
        self._seen = seen
        self._loaded()
        self._load_into(self.context)
        return True

    async def watch(self, interval_seconds: float = CHECK_SECONDS) -> None:
        """Take a renewed certificate without a restart. Never ends."""
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                if await asyncio.to_thread(self.reload_if_changed):
                    log.info("block page: certificate %s loaded again", self.tls.cert_file)
            except ResolverError as exc:
                log.error("block page: keeping the previous certificate: %s", exc)

    def _loaded(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._load_into(context)
        return context

    def _load_into(self, context: ssl.SSLContext) -> None:
        try:
            context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ResolverError(
                f"{self.setting}: cannot load the certificate {self.tls.cert_file} with the key "
                f"{self.tls.key_file}: {reason}"
            ) from None
