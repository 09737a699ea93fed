"""headerblock's HPACK decoding against hpack's encoder and decoder, an independent implementation, as the oracle."""

from __future__ import annotations

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.dataplane import headerblock

NAMES = [b":method", b":path", b":authority", b"accept", b"content-type", b"user-agent", b"x-custom", b""]
header_lists = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(NAMES), st.binary(max_size=20)),
        st.one_of(st.sampled_from([b"GET", b"/dns-query", b"", b"gzip, deflate"]), st.binary(max_size=60)),
        st.booleans(),  # never indexed
    ),
    max_size=12,
)
# Blocks of one connection in order; each may first change the encoder's table size.
connections = st.lists(
    st.tuples(st.one_of(st.none(), st.integers(0, 4096)), header_lists, st.booleans()), min_size=1, max_size=6
)


def test_the_static_table_is_rfc_7541s():
    assert headerblock.STATIC == HeaderTable.STATIC_TABLE


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_huffman_strings_decode_to_what_was_coded(text):
    coded = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(text)
    assert headerblock.huffman(coded, 0, len(coded)) == text


@pytest.mark.parametrize(
    "coded",
    [
        b"\xff\xff\xff\xff",  # EOS (30 one bits) inside a string
        b"\x1f\xff",  # "a" (00011) then 11 one bits: padding longer than 7 bits
        b"\x00",  # "0" (00000) then 000: padding not all ones
        b"\xfe",  # 7 one bits of padding but a 0 first: not EOS's prefix
    ],
)
def test_bad_huffman_strings_are_errors(coded):
    with pytest.raises(headerblock.HeaderBlockError):
        headerblock.huffman(coded, 0, len(coded))


@settings(max_examples=200, deadline=None)
@given(connections)
def test_blocks_decode_as_hpacks_encoder_made_them_with_one_dynamic_table(blocks):
    encoder = hpack.Encoder()
    ours = headerblock.Decoder(1 << 20)
    for size, headers, huffman in blocks:
        if size is not None:
            encoder.header_table_size = size
        block = encoder.encode(headers, huffman=huffman)
        assert ours.decode(block) == [(name, value) for name, value, _ in headers]
        assert ours.size == sum(32 + len(n) + len(v) for n, v in ours.entries) <= ours.table_size


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=4))
def test_any_bytes_decode_as_hpacks_decoder_says_or_are_an_error_where_it_errs(blocks):
    ours = headerblock.Decoder(4096)
    theirs = hpack.Decoder(4096)
    for block in blocks:
        try:
            expected = [(bytes(n), bytes(v)) for n, v in theirs.decode(block, raw=True)]
        except (hpack.HPACKError, IndexError):
            with pytest.raises(headerblock.HeaderBlockError):
                ours.decode(block)
            return  # the connection ends: nothing decodes after an error
        assert ours.decode(block) == expected
        assert ours.entries == [tuple(e) for e in reversed(theirs.header_table.dynamic_entries)]


def test_errors_of_a_hostile_peer():
    decoder = headerblock.Decoder(100)
    cases = [
        b"\x80",  # index 0
        b"\xbf\x00",  # index 62: the dynamic table is empty
        b"\xff\xff\xff\xff\xff\x0f",  # an integer longer than any block
        b"\x7f",  # a literal whose name index is cut off
        b"\x40\x85ab",  # a name shorter than its length
        b"\x3f\xe2\x1f",  # a table size update past the 4096 allowed
        b"\x82\x20",  # a table size update after a field
    ]
    for block in cases:
        with pytest.raises(headerblock.HeaderBlockError):
            decoder.decode(block)
    with pytest.raises(headerblock.HeaderListTooLong):  # 3 fields of 32 + 7 + 3 > 100
        decoder.decode(b"\x82\x82\x82")


def test_the_dynamic_table_keeps_within_its_size_and_a_smaller_allowed_size_is_enforced():
    decoder = headerblock.Decoder()
    big = hpack.Encoder().encode([(b"x-a", b"v" * 5000)])  # larger than the table: empties it
    assert decoder.decode(big) == [(b"x-a", b"v" * 5000)]
    assert decoder.entries == [] and decoder.size == 0
    encoder = hpack.Encoder()
    for n in range(200):
        decoder.decode(encoder.encode([(b"x-%d" % n, b"value")]))
        assert decoder.size <= 4096
    decoder.max_allowed_table_size = 100  # announced and acknowledged: the peer must shrink its table
    with pytest.raises(headerblock.HeaderBlockError):
        decoder.decode(b"\x82")
    assert decoder.decode(b"\x3f\x45\x82") == [(b":method", b"GET")]  # size update to 100 first
    assert decoder.size <= 100
