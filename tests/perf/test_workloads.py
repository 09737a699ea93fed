"""tests/perf/workloads.py: the 0x20 and cookie files ask what the query file asks, line for line, and differ as stated.

dnspython reads every message of the cookie file; the 0x20 file is read as dnsperf reads it.
"""

import collections
import struct

import dns.edns
import dns.flags
import dns.message

from tests.perf import bench, workloads

QUERIES = [("www.example.com", "A"), ("ab.cd", "A"), ("blocked.example.org", "AAAA"), ("ab.cd", "A")]


def test_every_line_of_the_0x20_file_is_its_query_line_in_a_letter_case_of_its_own(tmp_path):
    path = tmp_path / "case.txt"
    written = workloads.write_case_file(path, QUERIES, lines=40, seed=1, window=1000)
    lines = path.read_text().splitlines()
    assert written == workloads.Written(lines=40, passes=10, twins=written.twins) and len(lines) == 40
    for number, line in enumerate(lines):
        name, qtype = line.split()
        assert (name.lower(), qtype) == QUERIES[number % len(QUERIES)]
    by_name = collections.defaultdict(list)
    for line in lines:
        by_name[line.split()[0].lower()].append(line)
    # a name with enough letters never comes back in the same case ...
    assert len(set(by_name["www.example.com"])) == 10 and len(set(by_name["blocked.example.org"])) == 10
    # ... one with 4 letters goes through all 16 of its cases before any comes again
    short = by_name["ab.cd"]
    assert len(short) == 20 and len(set(short[:16])) == 16 and short[16:] == short[:4]
    assert written.twins == 4  # within the window of 1000 lines after their twins
    assert workloads.write_case_file(tmp_path / "again.txt", QUERIES, 40, 1, 1000) == written
    assert (tmp_path / "again.txt").read_bytes() == path.read_bytes()  # from the seed
    assert workloads.write_case_file(tmp_path / "short.txt", QUERIES, 40, 1, window=10).twins == 0


def test_the_cookie_file_is_dnsperf_binary_input_with_one_cookie_per_client(tmp_path, monkeypatch):
    monkeypatch.setattr(workloads, "COOKIE_CLIENTS", 7)  # few clients, so that some ask a name again
    path = tmp_path / "cookies.bin"
    queries = [(f"host{number}.example.com", "A") for number in range(500)]
    written = workloads.write_cookie_file(path, queries, lines=2000, seed=1, window=700)
    messages = workloads.read_binary(path)
    assert written.lines == len(messages) == 2000 and written.passes == 4
    cookies = []
    last: dict[tuple[int, bytes], int] = {}
    twins = 0
    for number, wire in enumerate(messages):
        message = dns.message.from_wire(wire)
        assert message.id == 0 and message.flags & dns.flags.RD and not message.flags & dns.flags.QR
        assert str(message.question[0].name) == queries[number % 500][0] + "."
        if message.edns < 0:  # the bytes dnsperf sends for the text line
            assert wire == workloads.query_message(*queries[number % 500])
            continue
        assert message.payload == 1232
        (option,) = message.options
        assert option.otype == dns.edns.OptionType.COOKIE and len(option.client) == 8 and not option.server
        cookies.append(option.client)
        twins += last.get((number % 500, option.client), -(10**9)) >= number - 700
        last[number % 500, option.client] = number
    assert written.cookies == len(cookies)
    assert 0.25 < len(cookies) / len(messages) < 0.35
    assert len(set(cookies)) == 7
    assert written.twins == twins > 0  # the same client's same query within the window


def test_a_name_that_is_no_domain_name_is_refused():
    try:
        workloads.qname_wire("bad..name")
    except ValueError as exc:
        assert "bad..name" in str(exc)
    else:
        raise AssertionError("no error")
    assert workloads.qname_wire("a.bc") == b"\x01a\x02bc\x00"
    assert struct.unpack("!HHHHHH", workloads.query_message("a.bc")[:12]) == (0, 0x0100, 1, 0, 0, 0)


def test_the_bench_counts_blocked_lines_of_any_workload_file(tmp_path):
    data = bench.generate(tmp_path, entries=300, queries=200, misses=10, miss_files=1, seed=3, variant_lines=450)
    assert data.case.passes == data.cookie.passes == 3 and data.case.lines == 600
    asked = workloads.read_queries(data.queries)
    blocked = [data.expected[name] == "NXDOMAIN" for name, _ in asked]
    for sent in (0, 1, 199, 200, 201, 599, 600, 601, 1234):
        assert data.blocked_in(sent) == sum(blocked[line % 200] for line in range(sent)), sent
    case_names = [line.split()[0].lower() for line in data.case_queries.read_text().splitlines()]
    assert case_names == [name for name, _ in asked] * 3
