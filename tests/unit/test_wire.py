"""wire: parsing queries, building and replaying answers, checked against dnspython."""

import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.dataplane import wire


def q(name="www.Example.com", rdtype="A", **kw) -> bytes:
    return dns.message.make_query(name, rdtype, **kw).to_wire()


def test_parse_query_keeps_question_bytes_and_lowercases_name():
    data = q("WwW.ExAmple.COM", "AAAA")
    query = wire.parse_query(data)
    assert query.name == "www.example.com"
    assert query.qtype == 28 and query.qclass == 1
    assert query.question == data[12:]
    assert not query.edns and query.payload == 512


@pytest.mark.parametrize("payload,expected", [(4096, 1232), (1232, 1232), (600, 600), (100, 512)])
def test_edns_payload_is_clamped(payload, expected):
    query = wire.parse_query(q(use_edns=0, payload=payload, want_dnssec=True))
    assert query.edns and query.do
    assert query.payload == expected


def test_key_ignores_case_but_not_do_bit():
    a = wire.parse_query(q("EXAMPLE.com"))
    b = wire.parse_query(q("example.COM"))
    c = wire.parse_query(q("example.com", use_edns=0, want_dnssec=True))
    assert a.key == b.key != c.key


def test_root_query():
    assert wire.parse_query(q(".", "NS")).name == ""


def test_label_with_a_dot_is_escaped_not_split():
    name = dns.name.Name([b"evil.com", b"x", b""])
    query = wire.parse_query(q(name))
    assert query.name == "evil\\046com.x"


def _header(qid=1, flags=0x0100, qd=1, an=0, ns=0, ar=0):
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x07example\x03com\x00\x00\x01\x00\x01"


@pytest.mark.parametrize(
    "data,error",
    [
        (b"", wire.Unanswerable),
        (b"\x00" * 11, wire.Unanswerable),
        (_header(flags=0x8000) + QUESTION, wire.Unanswerable),  # a response
        (_header(flags=0x2800) + QUESTION, wire.NotImplementedOpcode),  # UPDATE
        (_header(flags=0x1000) + QUESTION, wire.NotImplementedOpcode),  # STATUS
        (_header(qd=0), wire.FormError),
        (_header(qd=2) + QUESTION * 2, wire.FormError),
        (_header(an=1) + QUESTION, wire.FormError),
        (_header(ns=1) + QUESTION + b"\x00\x00\x06\x00\x01" + bytes(6), wire.FormError),  # authority, not IXFR
        (_header() + b"\x07example", wire.FormError),  # name runs past the end
        (_header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", wire.FormError),  # label > 63
        (_header() + b"\xc0\x0c\x00\x01\x00\x01", wire.FormError),  # compression in question
        (_header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01", wire.FormError),  # name > 255
        (_header() + QUESTION[:-2], wire.FormError),  # no class
        (_header(ar=1) + QUESTION + b"\x00\x00\x29", wire.FormError),  # truncated OPT
        (_header(ar=2) + QUESTION + (b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00") * 2, wire.FormError),
    ],
)
def test_malformed_queries_raise_the_right_error(data, error):
    with pytest.raises(error):
        wire.parse_query(data)


def test_an_ixfr_query_carries_the_clients_soa_in_its_authority_section():
    message = dns.message.make_query("malware.rpz.example", "IXFR", use_edns=0, payload=1232)
    message.authority.append(
        dns.rrset.from_text("malware.rpz.example.", 60, "IN", "SOA", "localhost. hostmaster.localhost. 7 1 1 1 1")
    )
    query = wire.parse_query(message.to_wire())
    assert (query.name, query.qtype, query.edns) == ("malware.rpz.example", wire.TYPE_IXFR, True)
    with pytest.raises(wire.FormError, match="authority record data runs past the end"):
        wire.parse_query(message.to_wire()[:-20])


def test_edns_version_1_is_badvers():
    data = q(use_edns=1)
    with pytest.raises(wire.BadVersion) as info:
        wire.parse_query(data)
    answer = dns.message.from_wire(
        wire.make_error(info.value.query.id, info.value.query.flags, wire.BADVERS, info.value.query)
    )
    assert answer.rcode() == dns.rcode.BADVERS


# Example counts are kept to what make test can afford; make fuzz (atheris) runs the same parsers for minutes.
@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_wire_errors(data):
    try:
        wire.parse_query(data)
    except wire.WireError:
        pass


@settings(max_examples=700, deadline=None)
@given(st.data())
def test_mutated_queries_only_raise_wire_errors(data):
    raw = bytearray(q("a.b.example.com", "A", use_edns=0, want_dnssec=True))
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        wire.parse_query(bytes(raw[:cut]))
    except wire.WireError:
        pass


def _refusal(data: bytes, rcode: int) -> bytes:
    """The FORMERR / NOTIMP answer to data, as the pipeline makes it."""
    with pytest.raises((wire.FormError, wire.NotImplementedOpcode)) as info:
        wire.parse_query(data)
    return wire.make_error(info.value.query_id, info.value.flags, rcode, info.value.echo)


def test_formerr_answer_to_two_questions_has_header_only_and_echoes_id():
    answer = _refusal(_header(qid=4242, qd=2) + QUESTION * 2, wire.FORMERR)
    assert answer == _header(qid=4242, flags=0x8181, qd=0)  # QR, RD, RA, FORMERR; nothing to repeat


OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00"  # payload 1232, DO
OUR_OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00"  # the same, from us
ZONE = b"\x07example\x03com\x00\x00\x06\x00\x01"  # example.com SOA: an UPDATE's zone section
RECORD = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"  # example.com A 192.0.2.1


@pytest.mark.parametrize(
    "data,rcode,answer",
    [
        # NOTIFY (opcode 4) with EDNS: NOTIMP, the opcode, the question and an OPT; no RA.
        (_header(flags=0x2000, ar=1) + QUESTION + OPT, wire.NOTIMP, _header(flags=0xA004, ar=1) + QUESTION + OUR_OPT),
        # UPDATE (opcode 5) with prerequisites and updates in its other sections: the zone section repeated.
        (
            _header(flags=0x2800, an=1, ns=1) + ZONE + RECORD + RECORD,
            wire.NOTIMP,
            _header(flags=0xA804) + ZONE,
        ),
        # A query with an answer record: FORMERR, RA, the question and an OPT (found after the record).
        (_header(an=1, ar=1) + QUESTION + RECORD + OPT, wire.FORMERR, _header(flags=0x8181, ar=1) + QUESTION + OUR_OPT),
        # No question, an OPT: the OPT only.
        (_header(qd=0, ar=1) + OPT, wire.FORMERR, _header(flags=0x8181, qd=0, ar=1) + OUR_OPT),
        # Two OPT records: not understood, so none in the answer (RFC 6891 6.1.1); the question is fine.
        (_header(ar=2) + QUESTION + OPT * 2, wire.FORMERR, _header(flags=0x8181) + QUESTION),
        # A compressed question name: nothing to repeat that stands alone.
        (_header() + b"\xc0\x0c\x00\x01\x00\x01", wire.FORMERR, _header(flags=0x8181, qd=0)),
        # A question that runs past the end: the header only.
        (_header(flags=0x0110) + b"\x07example", wire.FORMERR, _header(flags=0x8191, qd=0)),  # CD kept
        # A truncated OPT: the question, no OPT.
        (_header(ar=1) + QUESTION + OPT[:5], wire.FORMERR, _header(flags=0x8181) + QUESTION),
    ],
    ids=["notify", "update", "answer-record", "no-question", "two-opts", "compressed", "cut-name", "cut-opt"],
)
def test_formerr_and_notimp_answers_repeat_what_parses(data, rcode, answer):
    assert _refusal(data, rcode) == answer
    dns.message.from_wire(answer)  # well-formed to an independent parser


@settings(max_examples=700, deadline=None)
@given(st.data())
def test_formerr_and_notimp_answers_to_mutated_queries_are_well_formed(data):
    raw = bytearray(_header(ar=1) + QUESTION + OPT)
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(2, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw[2] &= 0x7F  # a query, not a response
    cut = data.draw(st.integers(12, len(raw)))
    try:
        wire.parse_query(bytes(raw[:cut]))
    except (wire.FormError, wire.NotImplementedOpcode) as exc:
        rcode = wire.FORMERR if isinstance(exc, wire.FormError) else wire.NOTIMP
        out = bytearray(wire.make_error(exc.query_id, exc.flags, rcode, exc.echo))
        out[2] &= 0x87  # read as a QUERY: dnspython holds an UPDATE's zone section to an UPDATE's rules
        answer = dns.message.from_wire(bytes(out))
        assert answer.rcode() == rcode and len(answer.question) == (1 if exc.echo.question else 0)
    except wire.WireError:
        pass


def _ede(message: dns.message.Message):
    return [o for o in message.options if o.otype == dns.edns.EDE]


def test_blocked_nxdomain_has_soa_with_blocked_ttl_and_ede():
    query = wire.parse_query(q("Ads.Example.com", "HTTPS", use_edns=0))
    ede = wire.ede_option(wire.EDE_FILTERED, "category=adult; authority=school")
    parsed = dns.message.from_wire(wire.make_local_answer(query, wire.NXDOMAIN, [], 60, ede))
    assert parsed.rcode() == dns.rcode.NXDOMAIN
    assert parsed.question[0].name == dns.name.from_text("Ads.Example.com")
    assert str(parsed.question[0].name) == "Ads.Example.com."  # the client's case
    soa = parsed.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 60 and soa[0].minimum == 60
    (option,) = _ede(parsed)
    assert option.code == 17 and option.text == "category=adult; authority=school"


@pytest.mark.parametrize("qclass,rclass", [("CH", "CH"), ("HS", "HS"), ("IN", "IN"), ("ANY", "IN")])
def test_a_blocked_answer_is_in_the_class_of_the_query(qclass, rclass):
    query = wire.parse_query(q("version.bind", "TXT", rdclass=qclass, use_edns=0))
    parsed = dns.message.from_wire(wire.make_local_answer(query, wire.NXDOMAIN, [], 60))
    [soa] = parsed.authority
    assert dns.rdataclass.to_text(soa.rdclass) == rclass and soa.rdtype == dns.rdatatype.SOA


def test_null_ip_answer():
    query = wire.parse_query(q("x.example.com", "A"))
    parsed = dns.message.from_wire(wire.make_local_answer(query, wire.NOERROR, [(1, 60, bytes(4))], 60))
    assert [r.to_text() for r in parsed.answer[0]] == ["0.0.0.0"]
    assert not parsed.options  # no EDNS from the client -> no OPT back


def upstream_reply(query_wire: bytes, build) -> bytes:
    request = dns.message.from_wire(query_wire)
    response = dns.message.make_response(request)
    build(response)
    return response.to_wire()


def test_upstream_query_uses_our_id_lowercase_and_do_bit():
    query = wire.parse_query(q("WWW.example.com", use_edns=0, want_dnssec=True))
    ours = dns.message.from_wire(wire.make_upstream_query(query, 777))
    assert ours.id == 777 and str(ours.question[0].name) == "www.example.com."
    assert ours.flags & dns.flags.RD and ours.ednsflags & dns.flags.DO


def _answer_for(query, build, **limits):
    reply = upstream_reply(wire.make_upstream_query(query, 1), build)
    assert wire.reply_matches(reply, 1, query.question.lower())
    args = {"min_ttl": 0, "max_ttl": 86400, "negative_max_ttl": 3600} | limits
    return wire.parse_upstream_answer(reply, len(query.question), **args)


def test_upstream_answer_replays_with_client_id_case_and_opt():
    query = wire.parse_query(q("WWW.Example.com", use_edns=0))

    def build(r):
        r.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "CNAME", "cdn.example.net."))
        r.answer.append(dns.rrset.from_text("cdn.example.net.", 60, "IN", "A", "192.0.2.7"))

    answer = _answer_for(query, build)
    assert answer.ttl == 60 and answer.targets == ("cdn.example.net",)
    out = dns.message.from_wire(wire.replay(answer.message, answer.question_length, query, 1232))
    assert out.id == query.id and str(out.question[0].name) == "WWW.Example.com."
    assert out.edns == 0 and out.answer[1][0].to_text() == "192.0.2.7"
    plain = wire.parse_query(q("www.example.com"))
    assert dns.message.from_wire(wire.replay(answer.message, answer.question_length, plain, 512)).edns == -1


def test_ttls_age_and_never_go_negative():
    query = wire.parse_query(q("www.example.com"))
    answer = _answer_for(
        query,
        lambda r: r.answer.append(dns.rrset.from_text("www.example.com.", 100, "IN", "A", "192.0.2.1", "192.0.2.2")),
    )
    aged = dns.message.from_wire(wire.reduce_ttls(answer.message, answer.ttl_offsets, 40))
    assert aged.answer[0].ttl == 60
    assert dns.message.from_wire(wire.reduce_ttls(answer.message, answer.ttl_offsets, 500)).answer[0].ttl == 0


@pytest.mark.parametrize("ttl,min_ttl,max_ttl,expected", [(5, 30, 100, 30), (500, 0, 100, 100), (50, 0, 100, 50)])
def test_ttl_clamps(ttl, min_ttl, max_ttl, expected):
    query = wire.parse_query(q("www.example.com"))
    answer = _answer_for(
        query,
        lambda r: r.answer.append(dns.rrset.from_text("www.example.com.", ttl, "IN", "A", "192.0.2.1")),
        min_ttl=min_ttl,
        max_ttl=max_ttl,
    )
    assert answer.ttl == expected
    assert dns.message.from_wire(answer.message).answer[0].ttl == expected


def _soa(r, ttl, minimum):
    r.authority.append(
        dns.rrset.from_text("example.com.", ttl, "IN", "SOA", f"ns.example.com. h.example.com. 1 2 3 4 {minimum}")
    )


@pytest.mark.parametrize(
    "rcode,soa,expected",
    [
        (dns.rcode.NXDOMAIN, (300, 60), 60),  # RFC 2308: min(SOA TTL, MINIMUM)
        (dns.rcode.NXDOMAIN, (30, 600), 30),
        (dns.rcode.NOERROR, (300, 120), 120),  # NODATA
        (dns.rcode.NXDOMAIN, None, 0),  # no SOA: not cached
        (dns.rcode.SERVFAIL, None, 0),
        (dns.rcode.REFUSED, None, 0),
    ],
)
def test_negative_and_error_cache_lifetimes(rcode, soa, expected):
    query = wire.parse_query(q("gone.example.com"))

    def build(r):
        r.set_rcode(rcode)
        if soa:
            _soa(r, *soa)

    assert _answer_for(query, build).ttl == expected


@pytest.mark.parametrize(
    "rcode,qtype,cname_ttl,soa,expected",
    [
        (dns.rcode.NOERROR, "AAAA", 3600, (300, 60), 60),  # CNAME to NODATA: the SOA's negative TTL
        (dns.rcode.NXDOMAIN, "A", 3600, (300, 60), 60),  # CNAME to NXDOMAIN too
        (dns.rcode.NOERROR, "AAAA", 30, (300, 60), 30),  # ... and no longer than the CNAME
        (dns.rcode.NOERROR, "AAAA", 3600, None, 0),  # no SOA: a negative answer that is not cached
        (dns.rcode.NOERROR, "CNAME", 3600, None, 3600),  # the CNAME was asked for: a positive answer
    ],
)
def test_a_cname_chain_that_ends_in_no_data_lives_as_long_as_a_negative_answer(rcode, qtype, cname_ttl, soa, expected):
    query = wire.parse_query(q("alias.example.com", qtype))

    def build(r):
        r.set_rcode(rcode)
        r.answer.append(dns.rrset.from_text("alias.example.com.", cname_ttl, "IN", "CNAME", "gone.example.net."))
        if soa:
            _soa(r, *soa)

    assert _answer_for(query, build).ttl == expected


@pytest.mark.parametrize("client_flags", [0x0000, 0x0100, 0x0010, 0x0110])  # RD and CD, each on or off
@pytest.mark.parametrize("upstream_flags", [0x8580, 0x8400, 0x8130, 0x8000])  # AA/RA/RD, AA, RD/AD/CD, none
def test_a_replayed_answer_has_our_header_bits_and_the_clients_rd_and_cd(client_flags, upstream_flags):
    query = wire.parse_query(_header(qid=99, flags=client_flags) + QUESTION)
    reply = _header(qid=1, flags=upstream_flags, an=1) + QUESTION + RECORD
    answer = wire.parse_upstream_answer(reply, len(QUESTION), 0, 86400, 3600)
    flags = struct.unpack("!H", wire.replay(answer.message, answer.question_length, query, 512)[2:4])[0]
    ad = upstream_flags & wire.AD  # the upstream's word on DNSSEC validation is kept
    assert flags == wire.QR | wire.RA | ad | client_flags  # not AA (not authoritative), always RA


def test_truncated_upstream_answer_is_never_cached():
    query = wire.parse_query(q("www.example.com"))

    def build(r):
        r.flags |= dns.flags.TC
        r.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "A", "192.0.2.1"))

    assert _answer_for(query, build).ttl == 0


def test_opt_is_stripped_from_stored_answer():
    query = wire.parse_query(q("www.example.com", use_edns=0))
    reply = dns.message.make_response(dns.message.from_wire(wire.make_upstream_query(query, 1)))
    reply.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "A", "192.0.2.1"))
    answer = wire.parse_upstream_answer(reply.to_wire(), len(query.question), 0, 86400, 3600)
    assert dns.message.from_wire(answer.message).edns == -1


def test_answer_too_big_for_client_is_truncated_with_tc():
    query = wire.parse_query(q("big.example.com", "TXT"))

    def build(r):
        r.answer.append(
            dns.rrset.from_text("big.example.com.", 300, "IN", "TXT", *[f'"{"x" * 100} {i}"' for i in range(10)])
        )

    answer = _answer_for(query, build)
    out = wire.replay(answer.message, answer.question_length, query, 512)
    parsed = dns.message.from_wire(out)
    assert parsed.flags & dns.flags.TC and not parsed.answer and parsed.id == query.id
    assert len(wire.replay(answer.message, answer.question_length, query, 65535)) > 1000


def test_an_answer_too_big_only_for_its_additional_records_goes_without_them_and_without_tc():
    query = wire.parse_query(q("_sip._tcp.example.com", "SRV", use_edns=0, payload=512))

    def build(r):
        r.answer.append(dns.rrset.from_text("_sip._tcp.example.com.", 300, "IN", "SRV", "0 5 5060 a.example.com."))
        r.additional.append(
            dns.rrset.from_text("a.example.com.", 300, "IN", "AAAA", *[f"2001:db8::{i:x}" for i in range(1, 30)])
        )

    answer = _answer_for(query, build)
    parsed = dns.message.from_wire(wire.replay(answer.message, answer.question_length, query, 512))
    assert not parsed.flags & dns.flags.TC and parsed.edns == 0 and not parsed.additional
    assert parsed.answer[0][0].to_text() == "0 5 5060 a.example.com."
    bare = wire.parse_query(q("_sip._tcp.example.com", "SRV"))  # no EDNS: no OPT comes back either
    assert dns.message.from_wire(wire.replay(answer.message, answer.question_length, bare, 512)).edns == -1


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:1] + bytes([b[1] ^ 1]) + b[2:],  # wrong ID
        lambda b: b[:2] + bytes([b[2] & 0x7F]) + b[3:],  # not a response
        lambda b: b[:13] + b"X" + b[14:],  # other question
        lambda b: b[:10],  # too short
    ],
)
def test_reply_matching_rejects(mutate):
    query = wire.parse_query(q("www.example.com"))
    reply = upstream_reply(wire.make_upstream_query(query, 99), lambda r: None)
    assert wire.reply_matches(reply, 99, query.question.lower())
    assert not wire.reply_matches(mutate(reply), 99, query.question.lower())


def test_reply_question_case_does_not_matter():
    query = wire.parse_query(q("www.example.com"))
    reply = bytearray(upstream_reply(wire.make_upstream_query(query, 5), lambda r: None))
    reply[13:16] = b"WWW"
    assert wire.reply_matches(bytes(reply), 5, query.question.lower())


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_mutated_upstream_replies_only_raise_bad_reply(data):
    query = wire.parse_query(q("www.example.com", use_edns=0))

    def build(r):
        r.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "CNAME", "a.example.net."))
        r.answer.append(dns.rrset.from_text("a.example.net.", 300, "IN", "A", "192.0.2.1"))
        _soa(r, 300, 60)

    raw = bytearray(upstream_reply(wire.make_upstream_query(query, 1), build))
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(12 + len(query.question), len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        answer = wire.parse_upstream_answer(bytes(raw), len(query.question), 0, 86400, 3600)
    except wire.BadReply:
        return
    wire.replay(wire.reduce_ttls(answer.message, answer.ttl_offsets, 3), answer.question_length, query, 1232)


def test_rewrite_answers_cname_plus_target_addresses():
    query = wire.parse_query(q("www.Google.com", "A", use_edns=0))
    target_query = wire.make_synthetic_query("forcesafesearch.google.com", wire.TYPE_A)
    target = _answer_for(
        target_query,
        lambda r: r.answer.append(dns.rrset.from_text("forcesafesearch.google.com.", 300, "IN", "A", "216.239.38.120")),
    )
    answer = wire.make_rewrite(query, "forcesafesearch.google.com", target, 300)
    out = dns.message.from_wire(wire.replay(answer.message, answer.question_length, query, 1232))
    assert str(out.question[0].name) == "www.Google.com."
    assert out.answer[0].rdtype == dns.rdatatype.CNAME
    assert str(out.answer[0][0].target) == "forcesafesearch.google.com."
    assert out.answer[1].name == dns.name.from_text("forcesafesearch.google.com")
    assert out.answer[1][0].to_text() == "216.239.38.120"
    assert dns.message.from_wire(wire.reduce_ttls(answer.message, answer.ttl_offsets, 100)).answer[1].ttl == 200


def test_tcp_frame():
    assert wire.frame(b"abc") == b"\x00\x03abc"


@pytest.mark.parametrize("rdtype", ["HTTPS", "SVCB", "A", "TYPE90"])  # 65 and 90 are ASCII "A" and "Z"
def test_lowercasing_never_touches_the_question_type(rdtype):
    query = wire.parse_query(q("WWW.Example.COM", rdtype))
    sent = dns.message.from_wire(wire.make_upstream_query(query, 7))
    assert sent.question[0].rdtype == dns.rdatatype.from_text(rdtype)
    assert sent.question[0].name.to_text() == "www.example.com."
    other = wire.parse_query(q("www.example.com", "TYPE97"))  # 97 = "a"
    assert query.key != other.key
