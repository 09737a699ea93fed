"""tests/perf/loadgen.py builds the queries of a dnsperf-style file as valid DNS messages, and names bad lines."""

import dns.flags
import dns.message
import dns.rdatatype
import pytest

from tests.perf import loadgen


def test_query_file_lines_become_dns_queries(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text("example.com A\n; a comment\n\nmail.example.org. MX\nwww.example.net\n")
    queries = loadgen.build_queries(path, seed=1)
    parsed = [dns.message.from_wire(query) for query in queries]
    assert [(str(m.question[0].name), dns.rdatatype.to_text(m.question[0].rdtype)) for m in parsed] == [
        ("example.com.", "A"),
        ("mail.example.org.", "MX"),
        ("www.example.net.", "A"),
    ]
    assert all(m.flags & dns.flags.RD and not m.flags & dns.flags.QR and m.edns < 0 for m in parsed)
    assert queries == loadgen.build_queries(path, seed=1)  # the IDs come from the seed
    assert [m.id for m in parsed] != [m.id for m in map(dns.message.from_wire, loadgen.build_queries(path, seed=2))]


@pytest.mark.parametrize(
    "line, error",
    [
        ("example.com BOGUS", "queries.txt:2: unknown query type 'BOGUS'"),
        ("bad..name A", "queries.txt:2: not a domain name: 'bad..name'"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(tmp_path, line, error):
    path = tmp_path / "queries.txt"
    path.write_text(f"good.example A\n{line}\n")
    with pytest.raises(SystemExit, match=error):
        loadgen.build_queries(path, seed=1)


def test_an_empty_file_is_an_error(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text("; nothing\n")
    with pytest.raises(SystemExit, match="no queries"):
        loadgen.build_queries(path, seed=1)
