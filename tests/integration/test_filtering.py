"""Filtering over real sockets: per-school answers, blocked answer format, CNAME cloaking, safe search, reload."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import zoneinfo

import aiohttp
import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from resolver.dataplane import cache
from resolver.processes import worker
from tests.support import harness
from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import running_resolver

SCHOOL_A = "127.0.0.1"  # primary: adult, games, bypass blocked; allow allowed.example.com; deny denied.example.org
SCHOOL_B = "127.0.0.2"  # upper_secondary: adult, bypass blocked; safe search on
TZ = zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")


@pytest.fixture
async def upstream():
    async with FakeUpstream() as up:
        for name in ("games.example.com", "allowed.example.com", "www.example.com", "khan.example.org"):
            up.answer(name, "A", "192.0.2.10", ttl=300)
        up.answer("forcesafesearch.google.com", "A", "216.239.38.120", ttl=300)
        up.answer("restrictmoderate.youtube.com", "A", "216.239.38.119", ttl=300)
        up.cname("cloak.example.net", "games.example.com")
        up.cname("tracker.allowed.example.com", "games.example.com")
        up.answer("svc.example.net", "HTTPS", "1 cdn.games.example.com. alpn=h2")
        yield up


@pytest.fixture
async def resolver(tmp_path, upstream):
    async with running_resolver(tmp_path, [upstream.address], with_admin=True) as running:
        yield running


def _ede(message):
    return [(o.code, o.text) for o in message.options if o.otype == dns.edns.EDE]


def _addresses(message):
    return [r.to_text() for rrset in message.answer for r in rrset if rrset.rdtype == dns.rdatatype.A]


async def test_two_schools_get_different_answers_for_the_same_name(resolver):
    blocked = await resolver.udp("games.example.com", source=SCHOOL_A, use_edns=0)
    assert blocked.rcode() == dns.rcode.NXDOMAIN
    assert _ede(blocked) == [(17, "category=games; authority=school; info=http://blocked.example.vn/")]
    soa = blocked.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 60 and soa.name.to_text() == "games.example.com."
    allowed = await resolver.udp("games.example.com", source=SCHOOL_B)
    assert allowed.rcode() == dns.rcode.NOERROR and _addresses(allowed) == ["192.0.2.10"]
    metrics = await _metrics(resolver)
    assert 'schooldns_blocked_total{category="games",school="school-a"} 1.0' in metrics
    assert 'schooldns_worker_queries_total{worker="0"} 2.0' in metrics  # one process: worker 0 answers all


async def test_metrics_show_the_cache_and_its_estimated_memory(resolver):
    for name in ("one.example.com", "two.example.com"):  # NXDOMAIN with an SOA: cached too (RFC 2308)
        await resolver.udp(name, source=SCHOOL_B)
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in (await _metrics(resolver)).splitlines()
        if line.startswith(("schooldns_cache_entries ", "schooldns_cache_bytes "))
    }
    assert values["schooldns_cache_entries"] == 2
    assert 2 * cache.ENTRY_OVERHEAD_BYTES < values["schooldns_cache_bytes"] < 2 * (cache.ENTRY_OVERHEAD_BYTES + 512)


@pytest.mark.parametrize("rdtype", ["A", "AAAA", "HTTPS", "SVCB", "TXT", "MX", "ANY"])
async def test_every_query_type_of_a_blocked_name_is_blocked(resolver, upstream, rdtype):
    answer = await resolver.udp("www.adult.example.com", rdtype, source=SCHOOL_B)
    assert answer.rcode() == dns.rcode.NXDOMAIN
    assert upstream.count("www.adult.example.com") == 0


async def test_mandatory_category_beats_the_school_allow_list(tmp_path, upstream):
    files = {
        "policies/school-a.yaml": "id: school-a\nname: A\nlevel: primary\nnetworks: [127.0.0.1/32]\n"
        "allow: [malware.example.com]\n"
    }
    async with running_resolver(tmp_path, [upstream.address], files=files) as resolver:
        answer = await resolver.udp("malware.example.com", use_edns=0)
    assert answer.rcode() == dns.rcode.NXDOMAIN
    assert _ede(answer) == [(16, "category=malware; authority=province; info=http://blocked.example.vn/")]


async def test_a_school_network_inside_a_district_network_is_the_schools(tmp_path, upstream):
    # The district office's /16 around school C's /24: the most specific network wins.
    files = {
        "policies/district.yaml": "id: district\nlevel: upper_secondary\nnetworks: [127.1.0.0/16]\n",
        "policies/school-c.yaml": "id: school-c\nlevel: primary\nnetworks: [127.1.2.0/24]\n",
    }
    async with running_resolver(tmp_path, [upstream.address], files=files, with_admin=True) as resolver:
        pupil = await resolver.udp("games.example.com", source="127.1.2.34", use_edns=0)  # school C: primary
        assert pupil.rcode() == dns.rcode.NXDOMAIN
        assert _ede(pupil) == [(17, "category=games; authority=school; info=http://blocked.example.vn/")]
        office = await resolver.tcp("games.example.com", source="127.1.9.9")  # the district: upper secondary
        assert office.rcode() == dns.rcode.NOERROR and _addresses(office) == ["192.0.2.10"]
        metrics = await _metrics(resolver)
    assert 'schooldns_blocked_total{category="games",school="school-c"} 1.0' in metrics
    assert 'schooldns_queries_total{result="forwarded",school="district",transport="tcp"} 1.0' in metrics


async def test_deny_and_allow_entries(resolver):
    denied = await resolver.udp("www.denied.example.org", use_edns=0)
    assert denied.rcode() == dns.rcode.NXDOMAIN and _ede(denied)[0][0] == 15
    assert "authority=deny" in _ede(denied)[0][1]
    allowed = await resolver.udp("allowed.example.com")  # listed in games, allowed by school A
    assert _addresses(allowed) == ["192.0.2.10"]


@pytest.mark.parametrize(
    "action, rdtype, rcode, records",
    [
        ("refused", "A", dns.rcode.REFUSED, []),
        ("null_ip", "A", dns.rcode.NOERROR, ["0.0.0.0"]),
        ("null_ip", "AAAA", dns.rcode.NOERROR, ["::"]),
        ("null_ip", "TXT", dns.rcode.NOERROR, []),
        ("blockpage", "A", dns.rcode.NOERROR, ["192.0.2.80"]),
        ("blockpage", "AAAA", dns.rcode.NOERROR, ["2001:db8::80"]),
    ],
)
async def test_block_actions(tmp_path, upstream, action, rdtype, rcode, records):
    files = {
        "policies/province.yaml": harness.PROVINCE + 'blockpage: {ipv4: 192.0.2.80, ipv6: "2001:db8::80"}\n',
        "policies/school-a.yaml": harness.SCHOOL_A + f"action: {action}\n",
    }
    async with running_resolver(tmp_path, [upstream.address], files=files) as resolver:
        answer = await resolver.udp("adult.example.com", rdtype, use_edns=0)
    assert answer.rcode() == rcode
    assert [r.to_text() for rrset in answer.answer for r in rrset] == records
    assert all(rrset.ttl == 60 for rrset in answer.answer)
    assert _ede(answer)[0][0] == 17


async def test_cname_cloaking_is_blocked_per_school_also_from_the_cache(resolver, upstream):
    first = await resolver.udp("cloak.example.net", source=SCHOOL_A, use_edns=0)
    assert first.rcode() == dns.rcode.NXDOMAIN and "category=games" in _ede(first)[0][1]
    # School B does not block games: the same (now cached) chain is answered.
    second = await resolver.udp("cloak.example.net", source=SCHOOL_B)
    assert _addresses(second) == ["192.0.2.10"]
    again = await resolver.udp("cloak.example.net", source=SCHOOL_A)
    assert again.rcode() == dns.rcode.NXDOMAIN
    assert upstream.count("cloak.example.net") == 1


async def test_explicitly_allowed_name_is_not_blocked_by_its_cname_chain(resolver):
    answer = await resolver.udp("tracker.allowed.example.com", source=SCHOOL_A)
    assert answer.rcode() == dns.rcode.NOERROR and _addresses(answer) == ["192.0.2.10"]


async def test_a_mandatory_category_binds_on_the_chain_of_an_explicitly_allowed_name(resolver, upstream):
    upstream.cname("bad.allowed.example.com", "malware.example.com")
    upstream.answer("malware.example.com", "A", "192.0.2.66")
    upstream.answer("svc.allowed.example.com", "HTTPS", "1 malware.example.com. alpn=h2")
    for name, rdtype in (("bad.allowed.example.com", "A"), ("svc.allowed.example.com", "HTTPS")):
        for _ in range(2):  # forwarded, then from the cache
            answer = await resolver.udp(name, rdtype, source=SCHOOL_A, use_edns=0)
            assert answer.rcode() == dns.rcode.NXDOMAIN
            assert _ede(answer) == [(16, "category=malware; authority=province; info=http://blocked.example.vn/")]
        assert upstream.count(name) == 1


async def test_https_record_pointing_into_blocked_space_is_blocked(resolver):
    answer = await resolver.udp("svc.example.net", "HTTPS", source=SCHOOL_A)
    assert answer.rcode() == dns.rcode.NXDOMAIN
    answer = await resolver.udp("svc.example.net", "HTTPS", source=SCHOOL_B)
    assert answer.rcode() == dns.rcode.NOERROR and answer.answer


@pytest.mark.parametrize(
    "name, target, address",
    [
        ("www.google.com", "forcesafesearch.google.com.", "216.239.38.120"),
        ("www.google.com.vn", "forcesafesearch.google.com.", "216.239.38.120"),
        ("www.youtube.com", "restrictmoderate.youtube.com.", "216.239.38.119"),
    ],
)
async def test_safe_search_answers_cname_and_target_addresses(resolver, upstream, name, target, address):
    for _ in range(2):  # the second answer comes from the cache
        answer = await resolver.udp(name, source=SCHOOL_B)
        assert answer.rcode() == dns.rcode.NOERROR
        cname = answer.answer[0]
        assert cname.rdtype == dns.rdatatype.CNAME and cname.name.to_text() == name + "."
        assert cname[0].target.to_text() == target
        assert _addresses(answer) == [address]
    assert upstream.count(name) == 0


async def test_search_engine_without_safe_mode_is_blocked(resolver):
    answer = await resolver.udp("vn.search.yahoo.com", source=SCHOOL_B, use_edns=0)
    assert answer.rcode() == dns.rcode.NXDOMAIN and "category=safe_search" in _ede(answer)[0][1]


@pytest.mark.parametrize(
    "name, rdtype, rcode",
    [
        ("use-application-dns.net", "A", dns.rcode.NXDOMAIN),
        ("mask.icloud.com", "AAAA", dns.rcode.NXDOMAIN),
        ("_dns.resolver.arpa", "SVCB", dns.rcode.NOERROR),
    ],
)
async def test_bypass_prevention_is_on_by_default(resolver, upstream, name, rdtype, rcode):
    answer = await resolver.udp(name, rdtype, source=SCHOOL_B, use_edns=0)
    assert answer.rcode() == rcode and not answer.answer
    assert "category=bypass" in _ede(answer)[0][1]
    assert upstream.count(name) == 0


async def test_schedule_blocks_only_inside_its_window(tmp_path, upstream):
    files = {
        "policies/school-b.yaml": harness.SCHOOL_B + "schedules:\n  - {name: lessons, days: [mon], "
        'from: "07:00", to: "11:30", block: [games]}\n'
    }
    async with running_resolver(tmp_path, [upstream.address], files=files) as resolver:
        monday = datetime.datetime(2026, 11, 23, tzinfo=TZ)  # a Monday
        clock = {"now": (monday + datetime.timedelta(hours=7)).timestamp()}
        resolver.worker.pipeline.wall_clock = lambda: clock["now"]
        inside = await resolver.udp("games.example.com", source=SCHOOL_B)
        clock["now"] = (monday + datetime.timedelta(hours=11, minutes=30)).timestamp()
        outside = await resolver.udp("games.example.com", source=SCHOOL_B)
    assert inside.rcode() == dns.rcode.NXDOMAIN
    assert outside.rcode() == dns.rcode.NOERROR


async def test_broken_policy_file_leaves_the_old_policy_serving(resolver):
    (resolver.root / "policies/school-a.yaml").write_text(
        "id: school-a\nname: A\nlevel: primary\nnetworks: [127.0.0.1/32]\ndeny: [www.example.com]\nblok: [games]\n"
    )
    assert await resolver.worker.reload() is False
    assert (await resolver.udp("www.example.com")).rcode() == dns.rcode.NOERROR  # new deny not installed
    assert (await resolver.udp("games.example.com")).rcode() == dns.rcode.NXDOMAIN  # old policy still there
    metrics = await _metrics(resolver)
    assert "schooldns_reload_failures_total 1.0" in metrics
    assert resolver.worker.pipeline.snapshot.generation == 1


async def test_changed_file_is_picked_up_without_a_signal(tmp_path, upstream):
    async with running_resolver(tmp_path, [upstream.address], "reload: {watch_interval_seconds: 0.05}\n") as resolver:
        assert (await resolver.udp("www.example.com")).rcode() == dns.rcode.NOERROR
        (resolver.root / "blocklists/adult.txt").write_text("adult.example.com\nwww.example.com\n")
        await _until(lambda: resolver.worker.pipeline.snapshot.generation == 2)
        assert (await resolver.udp("www.example.com")).rcode() == dns.rcode.NXDOMAIN


async def test_the_watcher_does_not_build_again_files_a_reload_already_read(tmp_path, upstream):
    """SIGHUP and the admin API reload at once; the file watcher, polling after them, builds nothing more."""
    async with running_resolver(tmp_path, [upstream.address], "reload: {watch_interval_seconds: 0}\n") as resolver:
        (resolver.root / "blocklists/adult.txt").write_text("adult.example.com\nwww.example.com\n")
        assert await resolver.worker.reload()  # as SIGHUP or a policy written through the admin API does
        assert resolver.worker.pipeline.snapshot.generation == 2
        polls: list[tuple[object, ...]] = []

        def seen() -> tuple[object, ...]:  # what the watcher compares with at each poll
            polls.append(resolver.worker.files)
            return resolver.worker.files

        polling = dataclasses.replace(resolver.config.reload, watch_interval_seconds=0.01)
        cfg = dataclasses.replace(resolver.config, reload=polling)
        watcher = asyncio.create_task(worker.watch_files(cfg, resolver.worker.reload, seen))
        try:
            await _until(lambda: len(polls) >= 3)
            assert resolver.worker.pipeline.snapshot.generation == 2
            # A change that only the watcher sees is built, once.
            (resolver.root / "blocklists/adult.txt").write_text("adult.example.com\n")
            await _until(lambda: resolver.worker.pipeline.snapshot.generation == 3)
            polled = len(polls)
            await _until(lambda: len(polls) >= polled + 3)
            assert resolver.worker.pipeline.snapshot.generation == 3
            assert (await resolver.udp("www.example.com")).rcode() == dns.rcode.NOERROR
        finally:
            watcher.cancel()


async def test_reload_under_load_answers_every_query(resolver):
    names = [f"n{i}.example.com" for i in range(40)]

    async def client(offset: int) -> list[int]:
        rcodes = []
        for i in range(60):
            answer = await resolver.udp(names[(offset + i) % len(names)], timeout=2.0)
            rcodes.append(answer.rcode())
        return rcodes

    lists = resolver.root / "blocklists/adult.txt"

    async def reloads() -> int:
        installed = 0
        for round_ in range(3):
            lists.write_text("adult.example.com\n" + "".join(f"x{round_}-{i}.example.com\n" for i in range(20000)))
            installed += await resolver.worker.reload()
        return installed

    results = await asyncio.gather(reloads(), *(client(k) for k in range(8)))
    assert results[0] == 3
    rcodes = [rcode for batch in results[1:] for rcode in batch]
    assert len(rcodes) == 480 and set(rcodes) == {dns.rcode.NXDOMAIN}  # the fake upstream's answer
    # The file watcher (running, as in `schooldns serve`) may install one more of the same files, if
    # it polled between a write and the reload that read it.
    assert resolver.worker.pipeline.snapshot.generation >= 4
    assert resolver.worker.pipeline.snapshot.entry_counts["adult"] == 20001


async def _metrics(resolver) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{resolver.admin_port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


async def _until(condition, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
