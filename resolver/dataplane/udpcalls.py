"""The C side of batched UDP: msghdr structures, recvmmsg and sendmmsg through ctypes, fixed buffers; never compiled."""

from __future__ import annotations

import ctypes
from typing import Any

from resolver.dataplane import wire

# Its own module, not udpbatch's: mypyc cannot compile a module that defines ctypes structures,
# and udpbatch's loops over the datagrams run compiled. Nothing here runs per datagram.

BATCH = wire.UDP_READ_BATCH  # datagrams per system call


# The C structures and the two system calls are public: tests/perf/loadgen.py sends its queries
# with them too.
class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(IoVec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("header", MsgHdr), ("length", ctypes.c_uint)]


HEADER_SIZE = ctypes.sizeof(MMsgHdr)  # the step from one message header of a ring to the next


def _system_calls() -> tuple[Any, Any] | None:
    """recvmmsg and sendmmsg of the C library this interpreter runs on, or None if it has none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, the C library's among them
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    recvmmsg.restype = sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


SYSTEM_CALLS = _system_calls()


def errno_now() -> int:
    """The errno the last system call through ctypes left (use_errno keeps a copy per thread)."""
    return ctypes.get_errno()


class Ring:
    """BATCH message headers, each with a fixed payload buffer and a fixed address buffer.

    With `head_size`, a message's payload is read into two buffers (two iovecs): its first
    head_size bytes into `heads`, where the heads of all messages lie next to each other, the rest
    into `payloads`. A query fits in its head, so the heads of a batch are copied out in one piece
    and each query is a slice of that bytes object (see udpbatch.BatchedUdp.receive).
    """

    def __init__(self, payload_size: int, address_size: int, head_size: int = 0):
        self.payload_size, self.address_size, self.head_size = payload_size, address_size, head_size
        self.tail_size = tail_size = payload_size - head_size
        vectors = 2 if head_size else 1
        self._heads = ctypes.create_string_buffer(BATCH * head_size or 1)
        self._payloads = ctypes.create_string_buffer(BATCH * tail_size)
        self._addresses = ctypes.create_string_buffer(BATCH * address_size)
        self._iovecs = (IoVec * (BATCH * vectors))()
        self._headers = (MMsgHdr * BATCH)()
        self.pointer = ctypes.addressof(self._headers)
        self.address_pointer = ctypes.addressof(self._addresses)
        self.head_pointer = ctypes.addressof(self._heads)
        self.payload_pointer = payload_pointer = ctypes.addressof(self._payloads)
        for i in range(BATCH):
            first = self._iovecs[i * vectors]
            if head_size:
                first.base, first.length = self.head_pointer + i * head_size, head_size
            tail = self._iovecs[i * vectors + vectors - 1]
            tail.base, tail.length = payload_pointer + i * tail_size, tail_size
            header = self._headers[i].header
            if address_size:  # else a connected socket's: no address, NULL
                header.name = self.address_pointer + i * address_size
                header.namelen = address_size  # the kernel writes it back unchanged: one family per socket
            header.iov = ctypes.pointer(first)
            header.iovlen = vectors
        self.heads = memoryview(self._heads).cast("B")
        self.payloads = memoryview(self._payloads).cast("B")
        self.addresses = memoryview(self._addresses).cast("B")
        # The headers' `length` fields (bytes received), and the iovecs' lengths and bases (what
        # to send, in a ring of one iovec a message), as strided views: read or written without a
        # ctypes attribute access per datagram.
        unsigned = memoryview(self._headers).cast("B").cast("I")
        self.received_lengths = unsigned[MMsgHdr.length.offset // 4 :: HEADER_SIZE // 4]
        octets = memoryview(self._iovecs).cast("B")
        word = ctypes.sizeof(ctypes.c_size_t)  # a pointer's size as well, where Python runs
        words = octets.cast("Q") if word == 8 else octets.cast("I")
        self.send_lengths = words[IoVec.length.offset // word :: ctypes.sizeof(IoVec) // word]
        self.send_bases = words[IoVec.base.offset // word :: ctypes.sizeof(IoVec) // word]
