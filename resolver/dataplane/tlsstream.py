"""TLS on an accepted TCP connection, driven here over an ssl.SSLObject: the DoT and DoH protocols' transport."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

READ_SIZE = 65536  # bytes received, and plaintext given to the application protocol, at once at most
RECORD = 16384  # the most plaintext one TLS record holds
SHUTDOWN_SECONDS = 5.0  # after close(): the peer's end of its stream is waited for this long, then it is cut
# Every connection of a worker receives into this one buffer and decrypts into the other: the bytes
# received go into the connection's TLS object, and its plaintext to its protocol (as bytes of their
# own), before the event loop turns to anything else. (asyncio's own TLS keeps 256 KiB a connection.)
_received = memoryview(bytearray(READ_SIZE))
_plain = memoryview(bytearray(READ_SIZE))


class TlsSession(asyncio.Transport, asyncio.BufferedProtocol):
    """One server-side TLS connection: the TCP transport's protocol, and the transport its protocol writes to.

    What a read brings is fed to the TLS object at once, and all the plaintext it then holds goes
    to the application protocol in one call. Each write is a TLS record of its own (a client may
    read one answer from a record and wait, stubby's and dnsperf's do), and the records written
    during that call, or in one turn of the event loop, leave in one write to the socket.
    `make_protocol` makes the application protocol once the handshake has ended, and `handshaken`
    says how the handshake ended. A peer's close_notify, or its end of the TCP stream, closes the
    connection; close() sends a close_notify and the end of the stream, then waits for the peer to
    end its side (at most SHUTDOWN_SECONDS), reading and dropping what it still sends.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        make_protocol: Callable[[], asyncio.BaseProtocol],
        handshaken: asyncio.Future[None],
    ):
        super().__init__()
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        # Given a buffer, read() returns how many bytes it put there (typeshed says bytes).
        self.read_into: Callable[[int, memoryview], int] = self.tls.read  # type: ignore[assignment]
        self.make_protocol = make_protocol
        self.handshaken = handshaken
        self.tcp: asyncio.Transport | None = None
        self.app: Any = None  # the application protocol, once the handshake has ended
        self.closing = False
        self.reading = False  # in the application's data_received: its writes leave when it returns
        self.flushing = False  # a write to the socket is due in this turn of the event loop
        self.shutdown_timer: asyncio.TimerHandle | None = None  # closed: how long the peer has to end its side

    # The TCP transport's side.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tcp = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return _received

    def buffer_updated(self, nbytes: int) -> None:
        if self.closing:
            return
        self.incoming.write(_received[:nbytes])
        if self.app is None and not self._handshake():
            return
        ended = False
        size = pos = 0
        try:
            while True:
                size = self.read_into(READ_SIZE - pos, _plain[pos:])
                if not size:
                    ended = True  # close_notify
                    break
                pos += size
                if not self.incoming.pending and not self.tls.pending():
                    break  # all read (asking once more would raise SSLWantReadError, which costs more)
                if pos > READ_SIZE - RECORD:  # full: what it holds goes now
                    self._deliver(pos)
                    pos = 0
                    if self.closing:
                        return
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            ended = True
        except ssl.SSLError:
            ended = True  # a bad record: what came before it is still answered
        if pos and not self.closing:
            self._deliver(pos)
        self._flush()  # the answers, or what the TLS object has to say (a KeyUpdate's, an alert)
        if ended:
            self.close()

    def _deliver(self, size: int) -> None:
        self.reading = True
        try:
            self.app.data_received(bytes(_plain[:size]))
        finally:
            self.reading = False

    def _handshake(self) -> bool:
        """The handshake's next step; True once it has ended well (the application protocol made)."""
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, OSError) as exc:
            self._flush()  # the alert that says why
            self.closing = True
            if self.tcp is not None:
                self.tcp.close()
            if not self.handshaken.done():
                self.handshaken.set_exception(exc)
            return False
        self._flush()
        self.app = self.make_protocol()
        if not self.handshaken.done():
            self.handshaken.set_result(None)
        self.app.connection_made(self)
        return not self.closing

    def eof_received(self) -> bool:
        return False  # the TCP stream ended, with or without a close_notify: closed

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.shutdown_timer is not None:
            self.shutdown_timer.cancel()
        if not self.handshaken.done():
            self.handshaken.set_exception(exc or ConnectionResetError("closed during the TLS handshake"))
        if self.app is not None:
            app, self.app = self.app, None
            app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    # The application protocol's side.

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data and not self.closing:
            try:
                self.tls.write(data)
            except ssl.SSLError:
                self.abort()
                return
            self._flush_soon()

    def writelines(self, list_of_data: Any) -> None:
        """Each piece in a TLS record of its own, all in one write to the socket."""
        if self.closing:
            return
        try:
            for data in list_of_data:
                if data:
                    self.tls.write(data)
        except ssl.SSLError:
            self.abort()
            return
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self.reading and not self.flushing:
            self.flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flushing = False
        if self.outgoing.pending and self.tcp is not None and not self.tcp.is_closing():
            self.tcp.write(self.outgoing.read())

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        tcp = self.tcp
        if tcp is None:
            return
        if self.app is None:
            tcp.close()
            return
        try:
            self.tls.unwrap()  # its close_notify
        except (ssl.SSLError, OSError):  # SSLWantReadError: the peer's is not waited for
            pass
        self._flush()
        # The end of this side's stream goes after the close_notify, and what the peer still sends is
        # read and dropped until it ends its own (or SHUTDOWN_SECONDS pass): a socket closed with bytes
        # unread is reset, and the reset can beat the last answers to the peer (a request refused
        # before its body had all come).
        tcp.write_eof()
        tcp.resume_reading()
        self.shutdown_timer = asyncio.get_running_loop().call_later(SHUTDOWN_SECONDS, tcp.abort)

    def abort(self) -> None:
        self.closing = True
        if self.tcp is not None:
            self.tcp.abort()

    def give_up(self) -> None:
        """End a connection whose handshake did not end in time (or ended badly): at once, unless closing already."""
        if self.tcp is not None and not self.tcp.is_closing():
            self.tcp.abort()
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing or self.tcp is None or self.tcp.is_closing()

    def pause_reading(self) -> None:
        if self.tcp is not None:
            self.tcp.pause_reading()

    def resume_reading(self) -> None:
        if self.tcp is not None:
            self.tcp.resume_reading()

    def is_reading(self) -> bool:
        return self.tcp is not None and self.tcp.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.tcp is not None:
            self.tcp.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self.outgoing.pending + (self.tcp.get_write_buffer_size() if self.tcp is not None else 0)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.tcp.get_write_buffer_limits() if self.tcp is not None else (0, 0)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.app  # type: ignore[no-any-return]

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.app = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.tls
        if name == "sslcontext":
            return self.tls.context
        if name == "peercert":
            return self.tls.getpeercert()
        if name == "cipher":
            return self.tls.cipher()
        return self.tcp.get_extra_info(name, default) if self.tcp is not None else default
