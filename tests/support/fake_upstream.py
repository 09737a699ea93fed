"""A real dnspython DNS server on loopback (UDP+TCP) that plays the upstream resolver in tests."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self, TypeAlias

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["Call", "FakeUpstream", "HookResult", "Transport", "Unframed"]

Transport: TypeAlias = Literal["udp", "tcp"]

#: EDNS payload the fake advertises in its replies.
SERVER_PAYLOAD = 1232
#: Reply limit for UDP queries without EDNS (RFC 1035).
CLASSIC_UDP_LIMIT = 512
#: Longest CNAME chain followed before answering SERVFAIL (loop guard).
MAX_CNAME_CHAIN = 8
DEFAULT_SOA_TTL = 300


@dataclass(frozen=True, slots=True)
class Call:
    """One well-formed query received by the fake."""

    name: str  # lower-case, no trailing dot ("." for the root)
    qtype: str  # "A", "AAAA", ...
    transport: Transport
    id: int
    do: bool  # EDNS DO bit set
    payload: int | None  # advertised EDNS payload; None without EDNS
    raw: bytes  # the query exactly as received (without the TCP length prefix)
    peer: tuple[str, int] = ("", 0)  # client address (a hook can find it by query id)


@dataclass(frozen=True, slots=True)
class Unframed:
    """Hook result sent exactly as given: on TCP without the 2-byte length prefix."""

    data: bytes


#: What a hook may return: raw message bytes, a message, Unframed stream bytes,
#: None (send nothing) or "default" (let the fake answer normally).
HookResult: TypeAlias = bytes | dns.message.Message | Unframed | Literal["default"] | None
Hook: TypeAlias = Callable[[dns.message.Message, Transport], HookResult | Awaitable[HookResult]]


@dataclass(frozen=True, slots=True)
class _Soa:
    ttl: int
    minimum: int
    apex: dns.name.Name | None = None  # None: derived from the queried name


@dataclass(frozen=True, slots=True)
class _Outcome:
    rcode: dns.rcode.Rcode
    answer: tuple[dns.rrset.RRset, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()


_NameKey: TypeAlias = dns.name.Name | None  # None: fault applies to every name


def _name(text: str | dns.name.Name) -> dns.name.Name:
    """Absolute dnspython name; dnspython names compare and hash case-insensitively."""
    if isinstance(text, dns.name.Name):
        return text if text.is_absolute() else text.concatenate(dns.name.root)
    return dns.name.from_text(text)


def _key(name: str | dns.name.Name | None) -> _NameKey:
    return None if name is None else _name(name)


def _rdtype(rdtype: str | int) -> dns.rdatatype.RdataType:
    if isinstance(rdtype, str):
        return dns.rdatatype.from_text(rdtype)
    return dns.rdatatype.RdataType.make(rdtype)


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


class FakeUpstream:
    """Scriptable upstream DNS server: builder methods add data and faults, ``calls`` records queries.

    Resolution order for a query (name, type): a per-name rcode set by
    ``nxdomain``/``servfail``/``refuse`` (the latest call wins), then an explicit
    ``nodata`` for that type, then records of that type, then a CNAME (chased within
    the fake's data), then NOERROR/NODATA if the name owns any data or is an empty
    non-terminal above a name that does, else NXDOMAIN. Negative answers carry an SOA.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        default_soa_ttl: int = DEFAULT_SOA_TTL,
        default_soa_minimum: int = DEFAULT_SOA_TTL,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls  # a server context: TCP is DNS over TLS (an upstream written tls://)
        self.default_soa = _Soa(default_soa_ttl, default_soa_minimum)
        self.hook: Hook | None = None
        self.calls: list[Call] = []
        self.malformed = 0
        #: Exceptions raised while answering (e.g. by a hook); stop() re-raises the first.
        self.errors: list[BaseException] = []

        self._rrsets: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset] = {}
        self._rcodes: dict[dns.name.Name, tuple[dns.rcode.Rcode, _Soa | None]] = {}
        self._nodata: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], _Soa] = {}
        self._delays: dict[_NameKey, float] = {}
        self._truncated: set[_NameKey] = set()
        self._dropped: set[_NameKey] = set()

        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(raise_errors=exc_type is None)

    async def start(self) -> None:
        """Bind UDP and TCP on the same port (retrying if port 0 picks a port busy for UDP)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _attempt in range(20):
            tcp_sock = socket.socket(family, socket.SOCK_STREAM)
            udp_sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                tcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp_sock.bind((self.host, self.port))
                port = tcp_sock.getsockname()[1]
                udp_sock.bind((self.host, port))
            except OSError as exc:
                tcp_sock.close()
                udp_sock.close()
                if exc.errno == errno.EADDRINUSE and self.port == 0:
                    continue
                raise
            break
        else:  # pragma: no cover - twenty collisions in a row
            raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")
        self.port = port
        self._stopping = False
        self._server = await asyncio.start_server(self._serve_tcp, sock=tcp_sock, ssl=self.tls)
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=udp_sock)

    async def stop(self, *, raise_errors: bool = True) -> None:
        """Close sockets, connections and in-flight tasks; re-raise a hook's error."""
        self._stopping = True
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
        if server is not None:
            await server.wait_closed()
        await asyncio.sleep(0)  # let transports run their connection_lost callbacks
        if raise_errors and self.errors:
            raise self.errors[0]

    # ------------------------------------------------------------------ data builder

    def answer(self, name: str, rdtype: str | int, *rdatas: str, ttl: int = 300) -> Self:
        """Add records (in dnspython text form; names in rdata are taken as absolute)."""
        owner, rtype = _name(name), _rdtype(rdtype)
        if not rdatas:
            raise ValueError("answer() needs at least one rdata")
        rrset = self._rrsets.get((owner, rtype))
        if rrset is None:
            rrset = self._rrsets[owner, rtype] = dns.rrset.RRset(owner, dns.rdataclass.IN, rtype)
        for text in rdatas:
            rdata = dns.rdata.from_text(dns.rdataclass.IN, rtype, text, origin=dns.name.root, relativize=False)
            rrset.add(rdata, ttl)  # an RRset keeps the smallest TTL given
        return self

    def cname(self, alias: str, target: str, ttl: int = 300) -> Self:
        """Make ``alias`` a CNAME to ``target`` (replacing an earlier CNAME)."""
        self._rrsets.pop((_name(alias), dns.rdatatype.CNAME), None)
        return self.answer(alias, "CNAME", _name(target).to_text(), ttl=ttl)

    def nxdomain(
        self,
        name: str,
        soa_ttl: int = DEFAULT_SOA_TTL,
        soa_minimum: int | None = None,
        *,
        apex: str | None = None,
    ) -> Self:
        """NXDOMAIN with an SOA for the parent of ``name`` (or ``apex``)."""
        soa = _Soa(soa_ttl, soa_ttl if soa_minimum is None else soa_minimum, _key(apex))
        self._rcodes[_name(name)] = (dns.rcode.NXDOMAIN, soa)
        return self

    def nodata(
        self,
        name: str,
        rdtype: str | int,
        soa_ttl: int = DEFAULT_SOA_TTL,
        soa_minimum: int | None = None,
        *,
        apex: str | None = None,
    ) -> Self:
        """NOERROR with no answer and an SOA for queries of ``rdtype`` at ``name``."""
        soa = _Soa(soa_ttl, soa_ttl if soa_minimum is None else soa_minimum, _key(apex))
        self._nodata[_name(name), _rdtype(rdtype)] = soa
        return self

    def servfail(self, name: str) -> Self:
        self._rcodes[_name(name)] = (dns.rcode.SERVFAIL, None)
        return self

    def refuse(self, name: str) -> Self:
        self._rcodes[_name(name)] = (dns.rcode.REFUSED, None)
        return self

    def large_answer(self, name: str, count: int, rdtype: str = "A", ttl: int = 300) -> Self:
        """Add ``count`` distinct A or TXT records (≈16 / ≈60 bytes each on the wire)."""
        match rdtype.upper():
            case "A":
                rdatas = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(count)]
            case "TXT":
                rdatas = [f'"record {i:05d} {"x" * 40}"' for i in range(count)]
            case _:
                raise ValueError("large_answer() supports A and TXT")
        return self.answer(name, rdtype, *rdatas, ttl=ttl)

    # ------------------------------------------------------------------ faults

    def delay(self, seconds: float, name: str | None = None) -> Self:
        """Delay replies for ``name`` (every name when None); a per-name delay wins."""
        self._delays[_key(name)] = seconds
        return self

    def truncate(self, name: str | None = None) -> Self:
        """UDP replies get TC=1 and empty sections; TCP still gets the full answer."""
        self._truncated.add(_key(name))
        return self

    def drop(self, name: str | None = None) -> Self:
        """Never reply (queries are still read and recorded)."""
        self._dropped.add(_key(name))
        return self

    def clear_faults(self, name: str | None = None) -> Self:
        """Undo delay/truncate/drop for ``name``; with no name, undo all of them."""
        if name is None:
            self._delays.clear()
            self._truncated.clear()
            self._dropped.clear()
        else:
            key = _key(name)
            self._delays.pop(key, None)
            self._truncated.discard(key)
            self._dropped.discard(key)
        return self

    # ------------------------------------------------------------------ observation

    def count(
        self,
        name: str | None = None,
        qtype: str | None = None,
        transport: Transport | None = None,
    ) -> int:
        want_name = None if name is None else name.lower().rstrip(".") or "."
        return sum(
            1
            for call in self.calls
            if (want_name is None or call.name == want_name)
            and (qtype is None or call.qtype == qtype.upper())
            and (transport is None or call.transport == transport)
        )

    def send_udp(self, data: bytes, peer: tuple[str, int]) -> None:
        """Send a datagram from the fake's own UDP socket: a stray or spoofed reply (from a hook, say)."""
        if self._udp is not None:
            self._udp.sendto(data, peer)

    def reset(self) -> None:
        """Forget recorded calls and the malformed counter; keep data and faults."""
        self.calls.clear()
        self.malformed = 0

    # ------------------------------------------------------------------ serving

    def _accept(self, data: bytes, transport: Transport, peer: tuple[str, int]) -> dns.message.Message | None:
        """Parse and record a query; None (and malformed += 1) if it is not one."""
        try:
            query = dns.message.from_wire(data)
        except Exception:  # any parse failure: ignore like a server would
            query = None
        if query is None or query.flags & dns.flags.QR or len(query.question) != 1:
            self.malformed += 1
            return None
        question = query.question[0]
        self.calls.append(
            Call(
                name=question.name.to_text(omit_final_dot=True).lower(),
                qtype=dns.rdatatype.to_text(question.rdtype),
                transport=transport,
                id=query.id,
                do=bool(query.ednsflags & dns.flags.DO),
                payload=query.payload if query.edns >= 0 else None,
                raw=bytes(data),
                peer=(str(peer[0]), int(peer[1])),
            )
        )
        return query

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fault(self, faults: set[_NameKey], qname: dns.name.Name) -> bool:
        return qname in faults or None in faults

    async def _reply(self, query: dns.message.Message, transport: Transport) -> bytes | Unframed | None:
        """The bytes to send for ``query`` (no TCP framing), or None for silence."""
        qname = query.question[0].name
        seconds = self._delays.get(qname, self._delays.get(None, 0.0))
        if seconds > 0:
            await asyncio.sleep(seconds)
        if self.hook is not None:
            result = self.hook(query, transport)
            if inspect.isawaitable(result):
                result = await result
            if isinstance(result, dns.message.Message):
                return result.to_wire(max_size=65535)
            if result != "default":
                return result
        if self._fault(self._dropped, qname):
            return None
        return self._render(query, transport)

    def _render(self, query: dns.message.Message, transport: Transport) -> bytes:
        question = query.question[0]
        response = dns.message.make_response(query, recursion_available=True, our_payload=SERVER_PAYLOAD)
        response.flags |= query.flags & dns.flags.CD
        if query.edns >= 0:  # echo OPT, and the DO bit (RFC 3225)
            response.use_edns(0, query.ednsflags & dns.flags.DO, SERVER_PAYLOAD)
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response.to_wire(max_size=65535)
        outcome = self._resolve(question.name, question.rdtype)
        response.set_rcode(outcome.rcode)
        response.answer.extend(outcome.answer)
        response.authority.extend(outcome.authority)
        wire = response.to_wire(max_size=65535)
        if transport == "udp":
            limit = max(CLASSIC_UDP_LIMIT, query.payload) if query.edns >= 0 else CLASSIC_UDP_LIMIT
            if len(wire) > limit or self._fault(self._truncated, question.name):
                response.answer.clear()
                response.authority.clear()
                response.additional.clear()
                response.flags |= dns.flags.TC
                wire = response.to_wire(max_size=65535)
        return wire

    def _resolve(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, depth: int = 0) -> _Outcome:
        rcode, soa = self._rcodes.get(qname, (None, None))
        if rcode is not None:
            authority = (self._soa(qname, soa, parent=True),) if soa is not None else ()
            return _Outcome(rcode, authority=authority)
        if (qname, rdtype) in self._nodata:
            return _Outcome(dns.rcode.NOERROR, authority=(self._soa(qname, self._nodata[qname, rdtype]),))
        if rdtype == dns.rdatatype.ANY:
            found = tuple(rr for (owner, _), rr in self._rrsets.items() if owner == qname)
            if found:
                return _Outcome(dns.rcode.NOERROR, answer=found)
        elif (rrset := self._rrsets.get((qname, rdtype))) is not None:
            return _Outcome(dns.rcode.NOERROR, answer=(rrset,))
        cname = self._rrsets.get((qname, dns.rdatatype.CNAME))
        if cname is not None:
            if depth >= MAX_CNAME_CHAIN:
                return _Outcome(dns.rcode.SERVFAIL)
            rest = self._resolve(cname[0].target, rdtype, depth + 1)
            return _Outcome(rest.rcode, (cname, *rest.answer), rest.authority)
        if self._exists(qname):
            return _Outcome(dns.rcode.NOERROR, authority=(self._soa(qname, self.default_soa),))
        return _Outcome(dns.rcode.NXDOMAIN, authority=(self._soa(qname, self.default_soa, parent=True),))

    def _exists(self, qname: dns.name.Name) -> bool:
        """Whether ``qname`` owns data or is an empty non-terminal above data."""
        owners: Iterable[dns.name.Name] = (
            *(owner for owner, _ in self._rrsets),
            *(owner for owner, _ in self._nodata),
        )
        return any(owner.is_subdomain(qname) for owner in owners)

    @staticmethod
    def _soa(qname: dns.name.Name, soa: _Soa, *, parent: bool = False) -> dns.rrset.RRset:
        """SOA rrset; apex is ``soa.apex`` or derived: the parent for a missing name,
        else the name itself when it has at most two labels, else its parent."""
        if soa.apex is not None:
            apex = soa.apex
        elif qname == dns.name.root:
            apex = qname
        elif parent or len(qname) > 3:
            apex = qname.parent()
        else:
            apex = qname
        rdata = dns.rdata.from_text(
            dns.rdataclass.IN,
            dns.rdatatype.SOA,
            f"ns1 hostmaster 1 7200 3600 1209600 {soa.minimum}",
            origin=apex,
            relativize=False,
        )
        return dns.rrset.from_rdata(apex, soa.ttl, rdata)

    # UDP ---------------------------------------------------------------------

    def _on_datagram(self, data: bytes, peer: tuple[str, int]) -> None:
        if self._stopping:
            return
        query = self._accept(data, "udp", peer)
        if query is not None:
            self._spawn(self._answer_udp(query, peer))

    async def _reply_or_record(self, query: dns.message.Message, transport: Transport) -> bytes | Unframed | None:
        """``_reply``, but an exception (from a hook, say) is kept for stop() and means silence."""
        try:
            return await self._reply(query, transport)
        except Exception as exc:
            self.errors.append(exc)
            return None

    async def _answer_udp(self, query: dns.message.Message, peer: tuple[str, int]) -> None:
        reply = await self._reply_or_record(query, "udp")
        if reply is None or self._udp is None:
            return
        self._udp.sendto(reply.data if isinstance(reply, Unframed) else reply, peer)

    # TCP ---------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read RFC 7766 frames until EOF; answer each query as soon as it is ready."""
        task = asyncio.current_task()
        assert task is not None
        if self._stopping:
            writer.close()
            return
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(writer)
        peer = writer.get_extra_info("peername") or ("", 0)
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                query = self._accept(data, "tcp", peer)
                if query is None:
                    continue
                reply_task = asyncio.create_task(self._answer_tcp(query, writer))
                pending.add(reply_task)
                reply_task.add_done_callback(pending.discard)
            # EOF: finish replies still in flight (delayed ones), then close.
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for reply_task in pending:
                reply_task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _answer_tcp(self, query: dns.message.Message, writer: asyncio.StreamWriter) -> None:
        reply = await self._reply_or_record(query, "tcp")
        if reply is None or writer.is_closing():
            return
        writer.write(reply.data if isinstance(reply, Unframed) else _frame(reply))
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: FakeUpstream) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._owner._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        pass
