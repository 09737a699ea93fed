"""The shipped Prometheus config, rules and dashboard: promtool, the names they read, a real Prometheus scraping."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.message
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from resolver.control.syncstate import SyncStatus
from resolver.operations import exposition
from tests.support.fake_upstream import FakeUpstream
from tests.support.served import ROOT, serve
from tests.support.states import state

PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "schooldns.json"

# A third school, on 127.0.0.4 (the test site's school-a is 127.0.0.1, school-b 127.0.0.2).
SCHOOL_C = {"policies/school-c.yaml": 'id: school-c\nname: "THCS C"\nlevel: primary\nnetworks: [127.0.0.4/32]\n'}
SYNCED = SyncStatus(
    repository="https://hub.example.vn/repository",
    version=3,
    last_attempt=1_700_000_000.0,
    last_success=1_700_000_000.0,
    consecutive_failures=0,
    last_error=None,
    metadata_expires=1_700_086_400.0,
    metadata_expired=False,
)


def promtool(*args: str | Path) -> None:
    done = subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{done.stdout}{done.stderr}"


def test_promtool_accepts_the_shipped_config_and_rules_and_their_unit_tests_pass():
    promtool("check", "config", PROMETHEUS / "prometheus.yml")
    promtool("check", "rules", *RULES)
    promtool("test", "rules", *sorted((PROMETHEUS / "tests").glob("*.yml")))


def rule_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every rule."""
    return [
        (f"{path.name}: {rule.get('record') or rule.get('alert')}", rule["expr"])
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def recorded() -> set[str]:
    return {
        rule["record"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel's queries, and the variables' label_values() queries."""
    board = json.loads(DASHBOARD.read_text())
    found = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]
    found += [
        (f"variable {variable['name']}", variable["definition"])
        for variable in board["templating"]["list"]
        if variable["type"] == "query"
    ]
    return found


def names(promql: str) -> set[str]:
    """The metric and recorded series names a PromQL expression reads (functions and labels too,
    which are told apart by the caller: a metric of ours starts with schooldns_, a recorded series has colons)."""
    without_strings = re.sub(r'"(?:\\.|[^"\\])*"', '""', promql)
    return set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_strings))


def exported(text: str) -> set[str]:
    """The sample names of every family in a /metrics text, with or without samples."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in suffixes.get(family.type, [""])
    }


async def test_every_metric_the_rules_and_the_dashboard_name_is_one_the_server_exports(tmp_path):
    async with FakeUpstream() as upstream, serve(tmp_path, upstream, 1) as served:
        text = await served.metrics()
    # The sync metrics are given only by an instance with `sync:`: read from a state with a sync status.
    names_exported = exported(text) | exported(exposition.render(state, SYNCED).decode())
    names_recorded = recorded()
    unknown = []
    used = set()
    for where, promql in [*rule_expressions(), *dashboard_expressions()]:
        for name in names(promql):
            if ":" in name:
                used.add(name)
                if name not in names_recorded:
                    unknown.append(f"{where}: {name} is recorded by no rule")
            elif name.startswith("schooldns_"):
                used.add(name)
                if name not in names_exported:
                    unknown.append(f"{where}: {name} is not exported")
    assert not unknown, "\n".join(unknown)
    # The reader above finds what is there.
    assert {
        "schooldns_school_last_query_timestamp_seconds",
        "schooldns_query_duration_seconds_bucket",
        "schooldns_sync_last_success_timestamp_seconds",
        "province:schooldns_coverage_ratio_24h",
    } <= used


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def prometheus(root: Path, targets: list[int]):
    """A real Prometheus on loopback with the shipped prometheus.yml and rules: scrapes and rule
    evaluations every 200 ms, `targets` (admin API ports) listed through file_sd. Yields its base URL."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="200ms", scrape_timeout="200ms", evaluation_interval="200ms")
    config["rule_files"] = [str(path) for path in RULES]
    [job] = config["scrape_configs"]
    [file_sd] = job["file_sd_configs"]
    file_sd["files"] = [str(root / "targets" / "*.yml")]
    (root / "targets").mkdir(parents=True)
    (root / "targets" / "fleet.yml").write_text(
        yaml.safe_dump([{"targets": [f"127.0.0.1:{port}" for port in targets], "labels": {"site": "test"}}])
    )
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(root / "prometheus.log", "wb") as log:
        process = await asyncio.create_subprocess_exec(
            "prometheus",
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def instant(session: aiohttp.ClientSession, base: str, promql: str) -> list[dict]:
    async with session.get(f"{base}/api/v1/query", params={"query": promql}) as response:
        body = await response.json()
    assert body["status"] == "success", f"{promql}: {body}"
    result: list[dict] = body["data"]["result"]
    return result


async def ask_from(port: int, source: str) -> None:
    query = dns.message.make_query("adult.example.com", "A")  # blocked for every school: no upstream needed
    await dns.asyncquery.udp(query, "127.0.0.1", port=port, source=source, timeout=3)


async def test_prometheus_sees_each_school_and_the_province_coverage_over_two_instances(tmp_path):
    one_port, two_port = free_port(), free_port()
    started = time.time()
    async with (
        FakeUpstream() as upstream,
        prometheus(tmp_path / "prometheus", [one_port, two_port]) as base,  # starts while the instances do
        contextlib.AsyncExitStack() as stack,
        aiohttp.ClientSession() as session,
    ):
        one, two = await asyncio.gather(
            stack.enter_async_context(serve(tmp_path / "one", upstream, 1, SCHOOL_C, admin_port=one_port)),
            stack.enter_async_context(serve(tmp_path / "two", upstream, 1, SCHOOL_C, admin_port=two_port)),
        )
        # Instance one answers schools a and b, instance two school b; nobody answers school c.
        await asyncio.gather(
            ask_from(one.dns_port, "127.0.0.1"),
            ask_from(one.dns_port, "127.0.0.2"),
            ask_from(two.dns_port, "127.0.0.2"),
        )
        one_at, two_at = f"127.0.0.1:{one_port}", f"127.0.0.1:{two_port}"
        expected = {
            "asked": {(one_at, "school-a"), (one_at, "school-b"), (two_at, "school-b")},
            "silent": {(one_at, "school-c"), (two_at, "school-a"), (two_at, "school-c")},
            "instance coverage": {one_at: "0.6666666666666666", two_at: "0.3333333333333333"},
            "province": ["3", "2", "0.6666666666666666"],
        }

        async def seen() -> dict[str, object]:
            last = "schooldns_school_last_query_timestamp_seconds"
            return {
                "asked": {
                    (r["metric"]["instance"], r["metric"]["school"])
                    for r in await instant(session, base, f"{last} > 0")
                },
                "silent": {
                    (r["metric"]["instance"], r["metric"]["school"])
                    for r in await instant(session, base, f"{last} == 0")
                },
                "instance coverage": {
                    r["metric"]["instance"]: r["value"][1]
                    for r in await instant(session, base, 'schooldns_coverage_ratio{window="24h"}')
                },
                "province": [
                    r["value"][1]
                    for name in (
                        "province:schooldns_schools_configured:count",
                        "province:schooldns_schools_active_24h:count",
                        "province:schooldns_coverage_ratio_24h",
                    )
                    for r in await instant(session, base, name)
                ],
            }

        got: dict[str, object] = {}
        try:
            # Prometheus 2.42 applies its scrape targets 5 s after it starts: the first scrape comes then.
            async with asyncio.timeout(20):
                while got != expected:
                    got = await seen()
                    await asyncio.sleep(0.1)
        except TimeoutError:
            log = (tmp_path / "prometheus" / "prometheus.log").read_text()[-3000:]
            pytest.fail(f"Prometheus saw {got}, not {expected}\n{log}")

        # Each school's time is that of its query (to within the second the instance reads it at).
        for row in await instant(session, base, "schooldns_school_last_query_timestamp_seconds > 0"):
            assert started - 1 <= float(row["value"][1]) <= time.time()
        # Every query of the dashboard is valid PromQL that Prometheus runs.
        for _, promql in dashboard_expressions():
            if promql.startswith("label_values("):
                continue
            for variable, value in {
                "$__rate_interval": "1m",
                "$__range": "1h",
                "$instance": ".*",
                "$school": ".*",
            }.items():
                promql = promql.replace(variable, value)
            await instant(session, base, promql)
