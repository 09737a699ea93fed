"""Local names: forward_zones in policy files, the locally served zones, and how the pipeline answers both."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from resolver.control import config, snapshots
from resolver.dataplane import cache, metrics, pipeline, upstream, wire
from resolver.filtering import localzones, policy, policyfile
from resolver.yamlfile import ConfigError
from tests.support import harness
from tests.unit.test_pipeline import TableForwarder
from tests.unit.test_policyfile import CATEGORIES, province

LOOPBACK6_REVERSE = ".".join(["1"] + ["0"] * 31) + ".ip6.arpa"


# -------------------------------------------------------------------------------------------
# The table of locally served zones


@pytest.mark.parametrize(
    ("name", "zone"),
    [
        ("localhost", "localhost"),
        ("www.localhost", "localhost"),
        ("printer.invalid", "invalid"),
        ("a.test", "test"),
        ("x.onion", "onion"),
        ("router.home.arpa", "home.arpa"),
        ("10.in-addr.arpa", "10.in-addr.arpa"),
        ("4.3.2.10.in-addr.arpa", "10.in-addr.arpa"),
        ("1.0.16.172.in-addr.arpa", "16.172.in-addr.arpa"),
        ("1.0.31.172.in-addr.arpa", "31.172.in-addr.arpa"),
        ("1.1.168.192.in-addr.arpa", "168.192.in-addr.arpa"),
        ("1.0.64.100.in-addr.arpa", "64.100.in-addr.arpa"),
        ("1.0.0.127.in-addr.arpa", "127.in-addr.arpa"),
        ("5.4.254.169.in-addr.arpa", "254.169.in-addr.arpa"),
        ("0.in-addr.arpa", "0.in-addr.arpa"),
        ("255.255.255.255.in-addr.arpa", "255.255.255.255.in-addr.arpa"),
        (LOOPBACK6_REVERSE, LOOPBACK6_REVERSE),
        ("1.2.d.f.ip6.arpa", "d.f.ip6.arpa"),
        ("0.8.e.f.ip6.arpa", "8.e.f.ip6.arpa"),
        ("b.e.f.ip6.arpa", "b.e.f.ip6.arpa"),
    ],
)
def test_locally_served_names_and_their_zone(name, zone):
    found = localzones.lookup(name)
    assert found is not None and found.zone == zone


@pytest.mark.parametrize(
    "name",
    [
        "example.com",
        "notlocalhost",
        "localhost.example.com",
        "example",  # RFC 6761 6.5: resolved normally
        "in-addr.arpa",
        "arpa",
        "1.0.15.172.in-addr.arpa",
        "1.0.32.172.in-addr.arpa",
        "8.8.8.8.in-addr.arpa",
        "1.0.128.100.in-addr.arpa",
        "c.e.f.ip6.arpa",
        "resolver.arpa",
        "",
    ],
)
def test_other_names_are_not_locally_served(name):
    assert localzones.lookup(name) is None


# -------------------------------------------------------------------------------------------
# forward_zones in policy files

SCHOOL = "id: s\nlevel: primary\n"


def test_forward_zones_of_the_province_and_the_school():
    prov = province(harness.PROVINCE + 'forward_zones: {sogd.local: ["10.0.0.53"], truong.local: ["10.9.9.9"]}\n')
    school = policyfile.parse_school(
        SCHOOL + "forward_zones:\n"
        '  Truong.Local: ["10.1.2.3", "10.1.2.4:5353"]\n'
        '  2.1.10.in-addr.arpa: ["[2001:db8::53]:53", "2001:DB8::54"]\n',
        "s.yaml",
        CATEGORIES,
        province(),
    )
    assert {z: v.servers for z, v in school.forward_zones.items()} == {
        "truong.local": (("10.1.2.3", 53), ("10.1.2.4", 5353)),
        "2.1.10.in-addr.arpa": (("2001:db8::53", 53), ("2001:db8::54", 53)),
    }
    merged = policyfile.parse_school(
        SCHOOL + 'forward_zones: {truong.local: ["10.1.2.3"]}\n', "s.yaml", CATEGORIES, prov
    )
    zones = merged.forward_zones
    assert list(zones) == ["sogd.local", "truong.local"]
    assert zones["sogd.local"].authority == "province" and zones["truong.local"].authority == "school"
    assert zones["truong.local"].servers == (("10.1.2.3", 53),)  # the school's own entry replaces the province's
    assert zones["truong.local"].cache_suffix.endswith(b"s")
    assert merged.forward_zone("dc1.truong.local") is zones["truong.local"]
    assert merged.forward_zone("xtruong.local") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("forward_zones: [truong.local]\n", "s.yaml:3: forward_zones: expected a mapping, got a list"),
        ("forward_zones: {truong.local: 10.1.2.3}\n", "s.yaml:3: forward_zones.truong.local: expected a list"),
        ("forward_zones: {truong.local: []}\n", "s.yaml:3: forward_zones.truong.local: give at least one server"),
        ("forward_zones: {truong.local: }\n", "s.yaml:3: forward_zones.truong.local: give at least one server"),
        (
            'forward_zones:\n  truong.local: ["10.1.2.3", "dc1.truong.local"]\n',
            "s.yaml:4: forward_zones.truong.local[1]: 'dc1.truong.local' is not a server address IP[:port]",
        ),
        (
            'forward_zones: {truong.local: ["10.1.2.3:0"]}\n',
            "s.yaml:3: forward_zones.truong.local[0]: '10.1.2.3:0': the port must be 1-65535",
        ),
        (
            'forward_zones: {truong.local: ["0.0.0.0"]}\n',
            "s.yaml:3: forward_zones.truong.local[0]: '0.0.0.0' cannot be a DNS server's address",
        ),
        (
            'forward_zones: {truong.local: ["10.1.2.3", "10.1.2.3:53"]}\n',
            "s.yaml:3: forward_zones.truong.local[1]: server '10.1.2.3:53' is given twice",
        ),
        (
            'forward_zones: {"https://truong.local/": ["10.1.2.3"]}\n',
            "s.yaml:3: forward_zones.https://truong.local/: 'https://truong.local/' is a URL",
        ),
        (
            'forward_zones: {Truong.local: ["10.1.2.3"], truong.LOCAL: ["10.1.2.4"]}\n',
            "s.yaml:3: forward_zones.truong.LOCAL: zone 'truong.local' is given twice",
        ),
        ('forward_zones: {42: ["10.1.2.3"]}\n', "s.yaml:3: forward_zones.42: '42' is not a valid domain name"),
    ],
)
def test_forward_zone_errors_name_file_line_and_key(text, expected):
    with pytest.raises(ConfigError) as exc_info:
        policyfile.parse_school(SCHOOL + text, "s.yaml", CATEGORIES, province())
    assert any(str(p).startswith(expected) for p in exc_info.value.problems), [str(p) for p in exc_info.value.problems]


def test_the_number_of_distinct_forward_servers_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(policy, "MAX_FORWARD_SERVERS", 2)
    (tmp_path / "province.yaml").write_text(harness.PROVINCE)
    (tmp_path / "a.yaml").write_text(
        SCHOOL.replace("s", "a", 1) + 'forward_zones: {a.local: ["10.0.0.1", "10.0.0.2"]}\n'
    )
    (tmp_path / "b.yaml").write_text(SCHOOL.replace("s", "b", 1) + "forward_zones:\n  b.local: [10.0.0.2, 10.0.0.3]\n")
    with pytest.raises(ConfigError) as exc_info:
        policyfile.load_policies(tmp_path, CATEGORIES)
    assert [str(p) for p in exc_info.value.problems] == [
        f"{tmp_path / 'b.yaml'}:3: forward_zones: more than 2 distinct forward servers across all policy files "
        "(each is an upstream with its own sockets in every worker)"
    ]


def test_explain_says_who_answers_a_name():
    school = policyfile.parse_school(
        SCHOOL + "deny: [bad.truong.local]\nforward_zones: {truong.local: [10.1.2.3]}\n",
        "s.yaml",
        CATEGORIES,
        province(),
    )
    lines = policy.explain(school, "dc1.truong.local", 0, 0).lines()
    assert (
        lines[-1] == "answered by: the school's own DNS servers 10.1.2.3:53 (this school's forward zone 'truong.local')"
    )
    assert not any(line.startswith("answered by") for line in policy.explain(school, "bad.truong.local", 0, 0).lines())
    assert policy.explain(school, "4.3.2.10.in-addr.arpa", 0, 0).lines()[-1] == (
        "answered by: schooldns itself (locally served zone '10.in-addr.arpa', RFC 6303 (RFC 1918); "
        "never sent upstream)"
    )
    assert not any(line.startswith("answered by") for line in policy.explain(school, "example.com", 0, 0).lines())


# -------------------------------------------------------------------------------------------
# The pipeline


class FakeForwardPools:
    """The pipeline's ForwardPools protocol: one TableForwarder per server list, remembering who was asked."""

    def __init__(self) -> None:
        self.pools: dict[tuple[tuple[str, int], ...], TableForwarder] = {}
        self.retained: list[set[tuple[tuple[str, int], ...]]] = []

    def pool(self, servers: tuple[tuple[str, int], ...]) -> TableForwarder:
        return self.pools.setdefault(servers, TableForwarder())

    def retain(self, wanted: set[tuple[tuple[str, int], ...]]) -> None:
        self.retained.append(wanted)


SCHOOL_A_FORWARDS = harness.SCHOOL_A + 'forward_zones: {truong.local: ["10.1.2.3"], 2.1.10.in-addr.arpa: [10.1.2.3]}\n'


@pytest.fixture
def site(tmp_path):
    cfg = config.load_config(
        harness.write_site(tmp_path, ["127.0.0.1:53"], files={"policies/school-a.yaml": SCHOOL_A_FORWARDS})
    )
    public, pools, counters = TableForwarder(), FakeForwardPools(), metrics.Counters()
    pipe = pipeline.Pipeline(
        snapshots.build_snapshot(cfg, 1), cache.AnswerCache(100), public, counters, forward_pools=pools
    )
    return pipe, public, pools, counters


def ask(pipe: pipeline.Pipeline, name: str, qtype: str = "A", client: str = "127.0.0.1") -> dns.message.Message:
    query = dns.message.make_query(name, qtype, use_edns=0)
    answered: list[bytes | None] = []
    reply = pipe.handle(query.to_wire(), client, "udp")
    if isinstance(reply, pipeline.Pending):
        reply.deliver_to(answered.append)
        reply = answered[0]
    assert reply is not None
    return dns.message.from_wire(reply)


def test_the_pools_of_the_installed_forward_zones_are_retained(site):
    pipe, _, pools, _ = site
    pipe.install(pipe.snapshot)
    assert pools.retained == [{(("10.1.2.3", 53),)}]


def test_a_forward_zone_goes_to_its_schools_servers_and_is_cached_for_that_school_only(site):
    pipe, public, pools, counters = site
    intranet = pools.pool((("10.1.2.3", 53),))
    for _ in range(2):
        assert ask(pipe, "dc1.truong.local").rcode() == dns.rcode.NOERROR
    assert intranet.asked == ["dc1.truong.local"] and public.asked == []  # the second from school A's cache
    ask(pipe, "dc1.truong.local", client="127.0.0.2")  # school B: the public upstreams, not A's cached answer
    assert public.asked == ["dc1.truong.local"] and intranet.asked == ["dc1.truong.local"]
    ask(pipe, "4.3.2.1.10.in-addr.arpa", "PTR")  # deeper than the forward zone: still forwarded
    assert intranet.asked[-1] == "4.3.2.1.10.in-addr.arpa"
    assert counters.queries[("school-a", "udp", "forwarded")] == 2


def test_a_blocked_name_under_a_forward_zone_stays_blocked(tmp_path):
    files = {"policies/school-a.yaml": SCHOOL_A_FORWARDS.replace("denied.example.org", "games.truong.local")}
    cfg = config.load_config(harness.write_site(tmp_path, ["127.0.0.1:53"], files=files))
    pools = FakeForwardPools()
    pipe = pipeline.Pipeline(
        snapshots.build_snapshot(cfg, 1),
        cache.AnswerCache(10),
        TableForwarder(),
        metrics.Counters(),
        forward_pools=pools,
    )
    answer = ask(pipe, "www.games.truong.local")
    assert answer.rcode() == dns.rcode.NXDOMAIN and pools.pools == {}


@pytest.mark.parametrize(
    ("name", "qtype", "rcode", "answer", "soa_owner"),
    [
        ("localhost", "A", dns.rcode.NOERROR, "127.0.0.1", None),
        ("localhost", "AAAA", dns.rcode.NOERROR, "::1", None),
        ("www.LocalHost", "A", dns.rcode.NOERROR, "127.0.0.1", None),
        ("localhost", "MX", dns.rcode.NOERROR, None, "localhost."),
        ("localhost", "SOA", dns.rcode.NOERROR, "localhost. nobody.invalid. 1 3600 1200 604800 300", None),
        ("1.0.0.127.in-addr.arpa", "PTR", dns.rcode.NOERROR, "localhost.", None),
        ("1.0.0.127.in-addr.arpa", "A", dns.rcode.NOERROR, None, "127.in-addr.arpa."),
        ("2.0.0.127.in-addr.arpa", "PTR", dns.rcode.NXDOMAIN, None, "127.in-addr.arpa."),
        (LOOPBACK6_REVERSE, "PTR", dns.rcode.NOERROR, "localhost.", None),
        ("10.in-addr.arpa", "PTR", dns.rcode.NOERROR, None, "10.in-addr.arpa."),
        ("4.3.2.10.in-addr.arpa", "PTR", dns.rcode.NXDOMAIN, None, "10.in-addr.arpa."),  # school A forwards 2.1.10
        ("1.1.168.192.in-addr.arpa", "PTR", dns.rcode.NXDOMAIN, None, "168.192.in-addr.arpa."),
        ("printer.invalid", "A", dns.rcode.NXDOMAIN, None, "invalid."),
        ("www.example.test", "AAAA", dns.rcode.NXDOMAIN, None, "test."),
        ("x.onion", "A", dns.rcode.NXDOMAIN, None, "onion."),
    ],
)
def test_locally_served_zones_are_answered_here(site, name, qtype, rcode, answer, soa_owner):
    pipe, public, pools, counters = site
    reply = ask(pipe, name, qtype)
    assert reply.rcode() == rcode and reply.flags & dns.flags.AA and reply.flags & dns.flags.RA
    assert [rd.to_text() for rrset in reply.answer for rd in rrset] == ([answer] if answer else [])
    if soa_owner is not None:
        [soa] = reply.authority
        assert soa.rdtype == dns.rdatatype.SOA and str(soa.name) == soa_owner and soa.ttl == pipeline.LOCAL_TTL_SECONDS
    assert public.asked == [] and all(not p.asked for p in pools.pools.values())
    assert counters.queries[("school-a", "udp", "local")] == 1


def test_a_school_that_forwards_a_locally_served_zone_gets_its_servers_answer(site):
    pipe, public, pools, _ = site
    assert ask(pipe, "4.3.2.1.10.in-addr.arpa", "PTR").rcode() == dns.rcode.NOERROR  # school A forwards 2.1.10
    assert pools.pools[(("10.1.2.3", 53),)].asked == ["4.3.2.1.10.in-addr.arpa"]
    assert ask(pipe, "4.3.2.1.10.in-addr.arpa", "PTR", client="127.0.0.2").rcode() == dns.rcode.NXDOMAIN  # school B
    assert public.asked == []


async def test_forward_pools_are_bounded_made_once_and_closed_when_no_longer_named():
    pools = upstream.ForwardPools(max_pools=1)
    first = pools.pool((("127.0.0.1", 5300),))
    assert pools.pool((("127.0.0.1", 5300),)) is first
    failures: list[Exception | None] = []
    pools.pool((("127.0.0.1", 5301),)).ask(
        wire.make_synthetic_query("a.local", wire.TYPE_A), lambda a, e: failures.append(e)
    )
    assert isinstance(failures[0], upstream.UpstreamError) and "more than 1 forward server lists" in str(failures[0])
    pools.retain(set())
    assert pools.pools == {} and all(u.closed for u in first.upstreams)
