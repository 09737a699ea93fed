"""HPACK (RFC 7541) decoding of the header blocks an HTTP/2 client sends: static and dynamic tables, Huffman strings."""

from __future__ import annotations

from typing import Final

from resolver.errors import ResolverError

# Not Final: mypyc would build a Final tuple anew where it is used.
STATIC: tuple[tuple[bytes, bytes], ...] = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
DEFAULT_TABLE_SIZE: Final = 4096  # SETTINGS_HEADER_TABLE_SIZE's initial value
ENTRY_OVERHEAD: Final = 32  # what an entry counts beyond its name and value (RFC 7541 4.1)
MAX_INTEGER_BYTES: Final = 4  # continuation bytes of an integer: 2**28, past any length a frame can hold

# The Huffman code's length in bits of each symbol, 0 to 255 and EOS (256), as letters ("a" is 5 bits):
# the code is canonical (RFC 7541 Appendix B), so the lengths alone make it.
_LENGTHS: Final = (
    "isxxxxxxxtzxxzxxxxxxxxzxxxxxxxxxbffhibdgffdgdbbbaaabbbbbbbcdkbhf"
    "ibccccccccccccccccccccccdcdioijbkabababbbaccbbbabcbaabccccckgjix"
    "prpprrrsrssssststtrstssssqrsrsstrqprrssqsrrtqrssqqrqsrssprrrsrrs"
    "vvporsruvvvwwvtuoqvwwvwtqqvvxwwwptpqrqqsrruuttvsvwvvwwwwwxwwwwwv"
    "z"
)
_EOS: Final = 256


class HeaderBlockError(ResolverError):
    """A header block that does not decode: the connection cannot go on (COMPRESSION_ERROR, RFC 9113 4.3)."""


class HeaderListTooLong(HeaderBlockError):
    """A header list longer than the decoder takes (its size counted as RFC 9113 6.5.2 says)."""


def _huffman_tables() -> tuple[list[int], list[bytes], list[bool]]:
    """The decoding automaton, a byte at a time: its states are the code tree's inner nodes (0 the root),
    and one more that a string holding EOS stays in.

    For state s and input byte b, at s * 256 + b: the next state, times 256, and the symbols
    completed on the way. A string may end in a state reached from the root by at most seven 1
    bits, its padding (RFC 7541 5.2).
    """
    codes = sorted(range(_EOS + 1), key=lambda symbol: (ord(_LENGTHS[symbol]) - 92, symbol))
    # The tree: children[2 * node + bit] is an inner node (> 0) or a symbol (-1 - symbol).
    children = [0, 0]
    code, length = 0, 0
    for n, symbol in enumerate(codes):
        bits = ord(_LENGTHS[symbol]) - 92
        code = 0 if n == 0 else (code + 1) << (bits - length)
        length = bits
        node = 0
        for shift in range(bits - 1, 0, -1):
            bit = code >> shift & 1
            if not children[2 * node + bit]:
                children += [0, 0]
                children[2 * node + bit] = len(children) // 2 - 1
            node = children[2 * node + bit]
        children[2 * node + (code & 1)] = -1 - symbol
    failed = len(children) // 2  # the state past EOS
    states = failed + 1
    # A nibble at a time first (next state, symbols), then two nibbles make a byte.
    nibbles: list[tuple[int, bytes]] = []
    for state in range(states):
        for nibble in range(16):
            node, symbols = state, bytearray()
            for shift in (3, 2, 1, 0):
                if node == failed:
                    break
                child = children[2 * node + (nibble >> shift & 1)]
                if child == -1 - _EOS:
                    node = failed
                elif child < 0:
                    symbols.append(-1 - child)
                    node = 0
                else:
                    node = child
            nibbles.append((node, bytes(symbols)))
    next_state = [0] * (states * 256)
    emitted = [b""] * (states * 256)
    shared: dict[bytes, bytes] = {}
    for state in range(states):
        for byte in range(256):
            middle, first = nibbles[state * 16 + (byte >> 4)]
            end, second = nibbles[middle * 16 + (byte & 15)]
            out = first + second if end != failed else b""
            next_state[state * 256 + byte] = end * 256
            emitted[state * 256 + byte] = shared.setdefault(out, out)
    accepting = [False] * states
    node = 0
    for _ in range(8):  # the root, and the nodes at the end of one to seven 1 bits
        accepting[node] = True
        node = children[2 * node + 1]
    return next_state, emitted, accepting


_NEXT, _EMITTED, _ACCEPTING = _huffman_tables()


def huffman(data: bytes, start: int, end: int) -> bytes:
    """The string Huffman-coded in data[start:end]; HeaderBlockError when it holds EOS or bad padding."""
    parts: list[bytes] = []
    state = 0
    next_state = _NEXT
    emitted = _EMITTED
    for byte in data[start:end]:
        at = state | byte
        state = next_state[at]
        parts.append(emitted[at])
    if not _ACCEPTING[state >> 8]:  # (nor is the state past EOS)
        raise HeaderBlockError("a Huffman-coded string holds EOS or ends in bad padding")
    return b"".join(parts)


def integer(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """The integer (RFC 7541 5.1) at `pos` with a `prefix`-bit prefix, and the position after it."""
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    end = len(data)
    for shift in range(0, 7 * MAX_INTEGER_BYTES, 7):
        if pos >= end:
            raise HeaderBlockError("a header block ends inside an integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise HeaderBlockError("an integer in a header block is too long")


def string(data: bytes, pos: int) -> tuple[bytes, int]:
    """The string literal (RFC 7541 5.2) at `pos`, and the position after it."""
    if pos >= len(data):
        raise HeaderBlockError("a header block ends before a string")
    coded = data[pos] & 0x80
    length, pos = integer(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HeaderBlockError("a header block ends inside a string")
    return (huffman(data, pos, end) if coded else data[pos:end]), end


class Decoder:
    """One connection's decoding context: its dynamic table, bounded, and the bound on a decoded header list.

    `max_allowed_table_size` is the SETTINGS_HEADER_TABLE_SIZE this side announced (and saw
    acknowledged): a size update past it, or a table left larger at the end of a block, is an
    error. The names and values stay bytes; nothing is checked of them here.
    """

    def __init__(self, max_header_list_size: int = 65536) -> None:
        self.max_header_list_size = max_header_list_size
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE
        self.table_size = DEFAULT_TABLE_SIZE  # the limit the encoder chose
        self.entries: list[tuple[bytes, bytes]] = []  # the dynamic table, the newest last
        self.size = 0  # the entries' size, as RFC 7541 4.1 counts it

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The headers of one whole header block, in order; HeaderBlockError when it does not decode."""
        headers: list[tuple[bytes, bytes]] = []
        total = 0
        pos = 0
        end = len(data)
        while pos < end:
            byte = data[pos]
            if byte & 0x80:  # an indexed field
                index, pos = integer(data, pos, 7)
                header = self.entry(index)
            elif byte & 0x40 or not byte & 0x20:  # a literal, with incremental indexing or not
                indexing = byte & 0x40
                index, pos = integer(data, pos, 6 if indexing else 4)
                if index:
                    name = self.entry(index)[0]
                else:
                    name, pos = string(data, pos)
                value, pos = string(data, pos)
                header = (name, value)
                if indexing:
                    self._add(header)
            else:  # a dynamic table size update, allowed before the first field only
                if headers:
                    raise HeaderBlockError("a table size update after a header field")
                size, pos = integer(data, pos, 5)
                if size > self.max_allowed_table_size:
                    raise HeaderBlockError("a table size update past the size allowed")
                self.table_size = size
                self._evict()
                continue
            total += ENTRY_OVERHEAD + len(header[0]) + len(header[1])
            if total > self.max_header_list_size:
                raise HeaderListTooLong(f"a header list longer than {self.max_header_list_size}")
            headers.append(header)
        if self.table_size > self.max_allowed_table_size:
            raise HeaderBlockError("the table was not made as small as allowed")
        return headers

    def entry(self, index: int) -> tuple[bytes, bytes]:
        """The static or dynamic table's entry at `index` (from 1)."""
        if 0 < index <= len(STATIC):
            return STATIC[index - 1]
        dynamic = index - len(STATIC)
        if index <= 0 or dynamic > len(self.entries):
            raise HeaderBlockError(f"no table entry {index}")
        return self.entries[-dynamic]

    def _add(self, header: tuple[bytes, bytes]) -> None:
        size = ENTRY_OVERHEAD + len(header[0]) + len(header[1])
        if size > self.table_size:  # larger than the table: it empties it (RFC 7541 4.4)
            self.entries.clear()
            self.size = 0
            return
        self.entries.append(header)
        self.size += size
        self._evict()

    def _evict(self) -> None:
        entries = self.entries
        while self.size > self.table_size:
            name, value = entries.pop(0)
            self.size -= ENTRY_OVERHEAD + len(name) + len(value)
