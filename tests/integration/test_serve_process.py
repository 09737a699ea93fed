"""`schooldns serve` as a real process: workers sharing a port, SIGHUP reload, SIGTERM drain, restarts, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import SCHOOL_A, write_site
from tests.support.served import SCHOOLDNS, Served, serve


@pytest.fixture
async def upstream():
    async with FakeUpstream() as up:
        up.answer("www.example.com", "A", "192.0.2.10", ttl=300)
        up.answer("slow.example.com", "A", "192.0.2.11", ttl=300)
        up.delay(0.5, "slow.example.com")  # under the 1 s forwarding timeout
        yield up


async def _metric(served: Served, name: str) -> float:
    total = 0.0
    for line in (await served.metrics()).splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _until_metric(served: Served, name: str, value: float, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while await _metric(served, name) != value:
            await asyncio.sleep(0.2)


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _spawner_pid(served: Served) -> int:
    """The supervisor's one child: the spawner (resolver.processes.spawner), which forks the workers."""
    children = _children(served.process.pid)
    assert [_name(pid) for pid in children] == ["schooldns-spawn"]  # and nothing else, no resource tracker
    return children[0]


def _mapped_extensions(pid: int) -> set[str]:
    """The C extension modules a process has mapped, by module name ("_http_parser" for aiohttp's)."""
    with open(f"/proc/{pid}/maps") as maps:
        return {Path(line.split()[-1]).name.split(".")[0] for line in maps if ".cpython-" in line}


def _worker_pids(served: Served) -> list[int]:
    pids = _children(_spawner_pid(served))
    assert sorted(map(_name, pids)) == [f"schooldns-w{index}" for index in range(len(pids))]
    return pids


async def test_two_workers_share_the_port_and_report_merged_metrics(tmp_path, upstream):
    async with serve(tmp_path, upstream, workers=2) as served:
        answers = await asyncio.gather(*(served.query("www.example.com") for _ in range(200)))
        assert {a.rcode() for a in answers} == {dns.rcode.NOERROR}
        assert await _metric(served, "schooldns_workers") == 2
        await _until_metric(served, "schooldns_queries_total", 200)
        # Each worker has its own cache, so each forwards the name at most once.
        forwarded = upstream.count("www.example.com")
        assert 1 <= forwarded <= 2

        # A worker that dies is replaced.
        worker_pids = _worker_pids(served)
        assert len(worker_pids) == 2
        # Forked before the supervisor imported the admin API: aiohttp's C extensions are not mapped.
        assert "_http_parser" in _mapped_extensions(served.process.pid)
        assert not {"_http_parser", "_multidict"} & _mapped_extensions(_spawner_pid(served))
        assert not {"_http_parser", "_multidict"} & _mapped_extensions(worker_pids[0])
        os.kill(worker_pids[-1], signal.SIGKILL)
        await served.read_until(
            rf"ERROR resolver\.processes\.spawner: worker 1 \(pid {worker_pids[-1]}\) killed by SIGKILL"
        )
        await served.read_until(r"ERROR resolver\.processes\.app: worker 1 died; restarting it")
        await served.read_until(r"worker1 INFO resolver\.processes\.worker: serving DNS")
        assert (await served.query("www.example.com")).rcode() == dns.rcode.NOERROR
        replaced = _worker_pids(served)
        assert len(replaced) == 2 and worker_pids[0] in replaced and worker_pids[-1] not in replaced

        spawner = _spawner_pid(served)
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), 20) == 0
        assert not any(map(_running, [spawner, *replaced]))


def _ask_from_one_socket(port: int, name: str, count: int) -> int:
    """Send `count` queries one after another from one UDP socket (one source port); NOERROR answers."""
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.connect(("127.0.0.1", port))
        for _ in range(count):
            query = dns.message.make_query(name, "A")
            sock.send(query.to_wire())
            reply = dns.message.from_wire(sock.recv(4096))
            answered += reply.id == query.id and reply.rcode() == dns.rcode.NOERROR
    return answered


def _per_worker(metrics: str) -> dict[str, float]:
    return {
        m[1]: float(m[2])
        for m in re.finditer(r'^schooldns_worker_queries_total\{worker="(\d+)"\} (\S+)$', metrics, re.MULTILINE)
    }


@pytest.mark.parametrize("spread", ["client", "random"])
async def test_worker_spread_decides_whether_one_client_socket_reaches_every_worker(tmp_path, upstream, spread):
    async with serve(tmp_path, upstream, workers=2, more_config=f"worker_spread: {spread}\n") as served:
        assert await asyncio.to_thread(_ask_from_one_socket, served.dns_port, "www.example.com", 200) == 200
        await _until_metric(served, "schooldns_worker_queries_total", 200)
        per_worker = _per_worker(await served.metrics())
        assert sorted(per_worker) == ["0", "1"]
        if spread == "client":  # one address and port: the kernel's hash puts every query on one worker
            assert sorted(per_worker.values()) == [0, 200]
        else:  # each datagram to a random worker: fewer than 41 of 200 on one has a chance below 1e-15
            assert min(per_worker.values()) > 40


async def test_a_spawner_that_died_is_replaced_when_a_worker_must_be_restarted(tmp_path, upstream):
    async with serve(tmp_path, upstream, workers=2) as served:
        workers = _worker_pids(served)
        os.kill(_spawner_pid(served), signal.SIGKILL)
        assert (await served.query("www.example.com")).rcode() == dns.rcode.NOERROR  # its workers go on
        os.kill(workers[0], signal.SIGKILL)
        await served.read_until(r"ERROR resolver\.processes\.app: the spawner process is gone .*; starting a new one")
        await served.read_until(r"worker0 INFO resolver\.processes\.worker: serving DNS")
        assert (await served.query("www.example.com")).rcode() == dns.rcode.NOERROR
        replacement = _spawner_pid(served)
        assert Path(f"/proc/{replacement}/cmdline").read_bytes().split(b"\0")[1:3] == [
            b"-c",
            b"import sys; from resolver.processes import spawner; spawner.main(sys.argv[1:])",
        ]
        assert _name(_children(replacement)[0]) == "schooldns-w0"
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), 20) == 0


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan may wait for a reaper that never comes)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_workers_stop_when_their_supervisor_is_killed(tmp_path, upstream):
    # Nothing would restart, reload or count an orphaned worker, and it would keep the port.
    async with serve(tmp_path, upstream, workers=2) as served:
        workers = _worker_pids(served)
        assert len(workers) == 2
        served.process.kill()  # the supervisor alone, not its process group (whose stderr the workers share)
        await served.read_until(r"worker\d ERROR resolver\.processes\.worker: lost the supervisor")
        await served.read_until(r"worker\d ERROR resolver\.processes\.worker: lost the supervisor")
        async with asyncio.timeout(15):
            while any(map(_running, workers)):
                await asyncio.sleep(0.1)


async def test_sigterm_while_a_worker_restarts_stops_that_worker_too(tmp_path, upstream):
    async with serve(tmp_path, upstream, workers=2) as served:
        os.kill(_worker_pids(served)[-1], signal.SIGKILL)
        await served.read_until(r"worker \d died")
        # The new worker serves before the supervisor has taken it in: stop right then.
        await served.read_until(r"worker\d INFO resolver\.processes\.worker: serving DNS")
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), 20) == 0


def index_mappings(pid: int) -> list[str]:
    """Each domain index file a process has mapped, as "inode" ("inode (deleted)" for a replaced one)."""
    with open(f"/proc/{pid}/maps") as maps:
        return sorted({" ".join(line.split()[4:]) for line in maps if "index.bin" in line})


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_new_list_releases_the_old_index(tmp_path, upstream, workers):
    async with serve(tmp_path, upstream, workers) as served:
        dns_pids = [served.process.pid] if workers == 1 else _worker_pids(served)
        assert len(dns_pids) == workers
        for generation in (2, 3):
            (tmp_path / "blocklists/adult.txt").write_text(f"www.example.com\nextra{generation}.example.org\n")
            served.process.send_signal(signal.SIGHUP)
            for _ in range(workers):
                await served.read_until(rf"installed generation {generation}")
        assert (await served.query("www.example.com")).rcode() == dns.rcode.NXDOMAIN
        current = (tmp_path / "var/index.bin").stat().st_ino
        for pid in dns_pids:  # only the newest index stays mapped: no snapshot outlives its swap
            assert index_mappings(pid) == [f"{current} {tmp_path / 'var/index.bin'}"]


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_reload_compiles_at_idle_priority_and_a_start_at_nice_10(tmp_path, upstream, workers):
    # A reload's compile shares the core with queries: under SCHED_IDLE it runs only on the CPU
    # time they leave (docs/operations.md). The child logs the priority it reads back.
    async with serve(tmp_path, upstream, workers) as served:
        assert any(
            re.search(r" compile INFO resolver\.control\.compiler: compiling the lists at nice \+10$", line.rstrip())
            for line in served.log
        ), "".join(served.log)
        (tmp_path / "blocklists/adult.txt").write_text("www.example.com\n")
        served.process.send_signal(signal.SIGHUP)
        await served.read_until(
            r"compile INFO resolver\.control\.compiler: compiling the lists at idle priority \(SCHED_IDLE\)"
        )
        for _ in range(workers):
            await served.read_until(r"installed generation 2")
        assert (await served.query("www.example.com")).rcode() == dns.rcode.NXDOMAIN


async def test_sighup_reloads_and_sigterm_drains_queries_in_flight(tmp_path, upstream):
    async with serve(tmp_path, upstream, workers=1) as served:
        assert (await served.query("www.example.com")).rcode() == dns.rcode.NOERROR
        (tmp_path / "blocklists/adult.txt").write_text("www.example.com\n")
        served.process.send_signal(signal.SIGHUP)
        await served.read_until(r"installed generation 2")
        assert (await served.query("www.example.com")).rcode() == dns.rcode.NXDOMAIN

        slow = asyncio.create_task(served.query("slow.example.com"))
        async with asyncio.timeout(5):
            while upstream.count("slow.example.com") == 0:
                await asyncio.sleep(0.01)
        served.process.send_signal(signal.SIGTERM)
        answer = await slow
        assert answer.rcode() == dns.rcode.NOERROR and answer.answer[0][0].to_text() == "192.0.2.11"
        assert await asyncio.wait_for(served.process.wait(), 10) == 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_systemd_is_told_ready_once_dns_serves_and_stopping_on_sigterm(tmp_path, upstream, workers):
    # systemd's side of Type=notify: a datagram socket named in NOTIFY_SOCKET (here in the abstract namespace).
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"schooldns-test-notify-{os.getpid()}-{workers}"
    manager.bind("\0" + name)
    manager.setblocking(False)
    loop = asyncio.get_running_loop()
    with manager:
        async with serve(tmp_path, upstream, workers, env={"NOTIFY_SOCKET": "@" + name}) as served:
            assert await asyncio.wait_for(loop.sock_recv(manager, 4096), 10) == b"READY=1"
            assert (await served.query("www.example.com")).rcode() == dns.rcode.NOERROR
            assert await served.admin("/readyz") == "ready\n"
            served.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(loop.sock_recv(manager, 4096), 10) == b"STOPPING=1"
            assert await asyncio.wait_for(served.process.wait(), 15) == 0


async def test_check_reports_every_problem_as_file_line_key(tmp_path, upstream):
    config = write_site(
        tmp_path,
        [upstream.address],
        files={
            "policies/school-b.yaml": "id: school-b\nname: B\nlevel: upper_secondary\nnetworks: [127.0.0.2/32]\n"
            "block: [gamez]\ncolour: blue\n"
        },
    )
    process = await asyncio.create_subprocess_exec(
        *SCHOOLDNS, "check", "--config", str(config), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    assert process.returncode == 1
    lines = err.decode().splitlines()
    school_b = str(tmp_path / "policies/school-b.yaml")
    assert any(line.startswith(f"{school_b}:5: block[0]: unknown category 'gamez'") for line in lines), lines
    assert any(line.startswith(f"{school_b}:6: colour: unknown key 'colour'") for line in lines), lines


async def test_check_and_explain_on_the_shipped_example():
    root = Path(__file__).resolve().parents[2]
    config = root / "deploy/example/config.yaml"
    process = await asyncio.create_subprocess_exec(
        *SCHOOLDNS, "--log-level", "warning", "check", "--config", str(config), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0 and out.decode().endswith("config.yaml: OK\n")
    process = await asyncio.create_subprocess_exec(
        *SCHOOLDNS,
        "--log-level",
        "warning",
        "explain",
        "--config",
        str(config),
        "thcs-le-loi",
        "www.facebook.com",
        "--at",
        "2026-11-23 22:00",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    text = out.decode()
    assert process.returncode == 0
    assert "decision: block (null_ip, category social, authority school)" in text
    assert "active schedules: boarding-night" in text
    assert "listed: facebook.com (block, subtree) in social" in text
    assert "from social/seed.txt:" in text


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_cold_start_compiles_the_lists_in_a_child_process(tmp_path, upstream, workers):
    # Compiling a million names leaves ~110 MB of freed memory in the process that did it: a
    # serving process (or the supervisor) hands the compile to a child, at start as on reload.
    async with serve(tmp_path, upstream, workers) as served:
        compiled = [
            line for line in served.log if re.search(r" compile INFO resolver\.control\.compiler: lists: ", line)
        ]
        assert compiled, "".join(served.log)
        assert not any(re.search(r"\d INFO resolver\.control: lists: ", line) for line in served.log)
        assert (await served.query("www.example.com")).rcode() == dns.rcode.NOERROR
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), 20) == 0


async def _status(served: Served) -> dict:
    return json.loads(await served.admin("/status"))


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_start_with_broken_files_serves_the_last_good_policies_and_lists(tmp_path, upstream, workers):
    # An edit that a reload rejected, then a power cut: the next start must not leave the school
    # without DNS. It serves what last built, says so, and takes the files again once they build.
    upstream.answer("games.example.com", "A", "192.0.2.12", ttl=300)
    async with serve(tmp_path, upstream, workers) as served:
        assert (await served.query("games.example.com")).rcode() == dns.rcode.NXDOMAIN
        assert await _metric(served, "schooldns_serving_last_good") == 0
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), 20) == 0

    # A policy file that does not parse, and a list file emptied since.
    broken = SCHOOL_A.replace("deny: [denied.example.org]", "deny: [denied.example.org")
    files = {"policies/school-a.yaml": broken, "blocklists/games.txt": ""}
    async with serve(tmp_path, upstream, workers, files) as served:
        log = "".join(served.log)
        assert "SERVING THE LAST GOOD policies and lists" in log
        assert f"{tmp_path / 'policies/school-a.yaml'}:7: invalid YAML" in log  # the problem, by file and line
        # The last good policy (games blocked for school A, its deny entry) and lists (with games.txt).
        assert (await served.query("games.example.com")).rcode() == dns.rcode.NXDOMAIN
        assert (await served.query("denied.example.org")).rcode() == dns.rcode.NXDOMAIN
        assert (await served.query("www.example.com")).rcode() == dns.rcode.NOERROR
        await _until_metric(served, "schooldns_serving_last_good", workers)
        assert (await _status(served))["serving_last_good"] is True

        # Still broken: a reload is rejected and the last good state keeps serving.
        served.process.send_signal(signal.SIGHUP)
        await _until_metric(served, "schooldns_reload_failures_total", 1)
        assert (await served.query("games.example.com")).rcode() == dns.rcode.NXDOMAIN

        # Fixed: the next reload builds from the files again, with the emptied games list.
        (tmp_path / "policies/school-a.yaml").write_text(SCHOOL_A)
        served.process.send_signal(signal.SIGHUP)
        await _until_metric(served, "schooldns_serving_last_good", 0)
        assert (await _status(served))["serving_last_good"] is False
        assert (await served.query("games.example.com")).rcode() == dns.rcode.NOERROR
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), 20) == 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_start_with_broken_files_and_no_last_good_state_fails_naming_the_problem(tmp_path, upstream, workers):
    broken = SCHOOL_A.replace("deny: [denied.example.org]", "deny: [denied.example.org")
    config = write_site(tmp_path, [upstream.address], f"workers: {workers}\n", files={"policies/school-a.yaml": broken})
    process = await asyncio.create_subprocess_exec(
        *SCHOOLDNS, "serve", "--config", str(config), stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert f"{tmp_path / 'policies/school-a.yaml'}:7: invalid YAML" in err.decode()
    assert "last good" not in err.decode().lower()
    assert "Traceback" not in err.decode()
    if workers > 1:  # the worker said why, in its log; the supervisor says which worker
        assert err.decode().endswith("worker 0 exited while starting (its log says why)\n")
