"""Daily rollups written by the real server and the annual report made of them: a known sequence of queries
from two of three schools, across a worker's death, a kill -9 and a restart, and merged with another instance."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import sqlite3
import zoneinfo
from collections.abc import Mapping
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from resolver.processes import cli
from tests.support.fake_upstream import FakeUpstream
from tests.support.served import ROOT, SCHOOLDNS, Served, serve

ZONE = zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")  # the test site's province.yaml
# A third school, on 127.0.0.4 (the test site's school-a is 127.0.0.1, school-b 127.0.0.2).
SCHOOL_C = {"policies/school-c.yaml": 'id: school-c\nname: "THCS C"\nlevel: primary\nnetworks: [127.0.0.4/32]\n'}
FAST = "rollups: {interval_seconds: 0.1}\n"  # written ten times a second: the test waits for rows, not for time
A, B, NOBODY, C = "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"
# What each school asks in one round, and what that adds up to.
ROUND = (
    (A, "www.example.com", dns.rcode.NOERROR),  # forwarded
    (A, "adult.example.com", dns.rcode.NXDOMAIN),  # primary's profile: the school's choice
    (A, "www.denied.example.org", dns.rcode.NXDOMAIN),  # school-a's deny list
    (A, "malware.example.com", dns.rcode.NXDOMAIN),  # mandatory: the province's
    (B, "adult.example.com", dns.rcode.NXDOMAIN),
    (B, "games.example.com", dns.rcode.NOERROR),  # upper_secondary does not block games
    (NOBODY, "www.example.com", dns.rcode.REFUSED),  # no school's network
)


@contextlib.asynccontextmanager
async def upstream_answering():
    async with FakeUpstream() as upstream:
        upstream.answer("www.example.com", "A", "192.0.2.10")
        upstream.answer("games.example.com", "A", "192.0.2.11")
        yield upstream


async def ask(served: Served, asked: tuple[tuple[str, str, int], ...]) -> None:
    for source, name, rcode in asked:
        query = dns.message.make_query(name, "A")
        reply = await dns.asyncquery.udp(query, "127.0.0.1", port=served.dns_port, source=source, timeout=3)
        assert reply.rcode() == rcode, (source, name)


def written(state_dir: Path) -> dict[str, int]:
    """Queries per school in the rollups file, read with sqlite3 itself."""
    path = state_dir / "rollups.sqlite"
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
        try:
            return dict(db.execute("SELECT school, sum(queries) FROM school_days GROUP BY school").fetchall())
        except sqlite3.OperationalError:  # the tables are being made
            return {}


async def until_written(state_dir: Path, queries: Mapping[str, int]) -> None:
    async with asyncio.timeout(15):
        while (got := {school: n for school, n in written(state_dir).items() if n}) != queries:
            assert all(got.get(school, 0) <= n for school, n in queries.items()), got  # never more than asked
            await asyncio.sleep(0.05)


async def schooldns_report(config: Path, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *SCHOOLDNS,
        "report",
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode()


def today() -> datetime.date:
    return datetime.datetime.now(ZONE).date()


def report_here(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> str:
    """`schooldns report` in this process (the same command line, without an interpreter's start)."""
    capsys.readouterr()
    assert cli.main(["report", "--config", str(config), *args]) == 0
    return capsys.readouterr().out


async def test_the_report_counts_a_known_sequence_across_a_dead_worker_a_kill_and_a_restart(tmp_path, capsys):
    site, other = tmp_path / "one", tmp_path / "two"
    first_day = today()
    async with upstream_answering() as upstream:
        async with serve(site, upstream, 2, SCHOOL_C, FAST) as served:
            await ask(served, ROUND)
            await until_written(site / "var", {"school-a": 4, "school-b": 2, "unknown": 1})
            # A worker dies, and its replacement counts from 0: nothing is counted twice, nothing lost.
            os.kill(_a_worker(served), signal.SIGKILL)
            await served.read_until(r"worker \d died; restarting it")
            await served.read_until(r"worker\d INFO resolver\.processes\.worker: serving DNS")
            await ask(served, ROUND)
            await until_written(site / "var", {"school-a": 8, "school-b": 4, "unknown": 2})
        # Leaving `serve` killed the whole process group with SIGKILL. The same site starts again, in one process.
        async with serve(site, upstream, 1, SCHOOL_C, FAST) as served:
            await ask(
                served,
                ((A, "adult.example.com", dns.rcode.NXDOMAIN),) * 2 + ((B, "malware.example.com", dns.rcode.NXDOMAIN),),
            )
            await until_written(site / "var", {"school-a": 10, "school-b": 5, "unknown": 2})
        # Another instance serves the same schools: school-c, and school-a once more.
        async with serve(other, upstream, 1, SCHOOL_C, FAST) as served:
            await ask(served, ((C, "games.example.com", dns.rcode.NXDOMAIN), (A, "www.example.com", dns.rcode.NOERROR)))
            await until_written(other / "var", {"school-a": 1, "school-c": 1})
    same_day = today() == first_day  # a run across midnight in Hanoi spreads the days over two
    year = str(first_day.year)

    report = json.loads(report_here(capsys, site / "config.yaml", "--year", year, "--format", "json"))
    summary = report["summary"]
    assert (summary["schools_configured"], summary["schools_active"], summary["coverage"]) == (3, 2, 0.6667)
    assert summary["silent_schools"] == ["school-c"] and summary["unknown_queries"] == 2
    assert (summary["queries"], summary["blocked"]) == (15, 11)
    assert summary["blocked_by_category"] == {"adult": 6, "malware": 3, "deny": 2}
    assert summary["blocked_by_authority"] == {"province": 3, "school": 6, "deny": 2}
    a, b, c = report["schools"]
    assert (a["id"], a["name"], a["queries"], a["blocked"]) == ("school-a", "Tiểu học A", 10, 8)
    assert a["blocked_by_category"] == {"adult": 4, "deny": 2, "malware": 2}
    assert (b["id"], b["queries"], b["blocked_by_category"]) == ("school-b", 5, {"adult": 2, "malware": 1})
    assert (c["id"], c["queries"], c["days_active"], c["first_day"]) == ("school-c", 0, 0, None)
    if same_day:
        assert (a["days_active"], a["first_day"], a["last_day"]) == (1, first_day.isoformat(), first_day.isoformat())
        assert report["recorded_days"] == [first_day.isoformat()]

    # The other instance's JSON merged into this one's: school-c is covered there, school-a on both.
    (tmp_path / "two.json").write_text(
        report_here(capsys, other / "config.yaml", "--year", year, "--format", "json"), encoding="utf-8"
    )
    # The real command, as a process of its own.
    merged = await schooldns_report(site / "config.yaml", "--year", year, "--merge", str(tmp_path / "two.json"))
    assert "| Trường có truy vấn trong năm / Schools with queries during the year | 3/3 (100%) |" in merged
    assert "| Trường chưa có truy vấn nào / Schools never seen | không có / none |" in merged
    assert "Số máy chủ / Instances: 2" in merged
    if same_day:
        assert "| Tiểu học A | `school-a` | 1 | 11 | 8 |" in merged  # its day on both instances: one day
        assert "| THCS C | `school-c` | 1 | 1 | 1 |" in merged


def _a_worker(served: Served) -> int:
    spawner = int(Path(f"/proc/{served.process.pid}/task/{served.process.pid}/children").read_text().split()[0])
    return int(Path(f"/proc/{spawner}/task/{spawner}/children").read_text().split()[-1])
