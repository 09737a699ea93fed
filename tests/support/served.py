"""Run the real `schooldns serve` as a child process over a small site; read its log, DNS port and admin port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.message

from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import write_site

SCHOOLDNS = [sys.executable, "-m", "resolver"]
ROOT = Path(__file__).resolve().parents[2]


class Served:
    """A `schooldns serve` child process and what it logged."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.log: list[str] = []
        self.dns_port = 0
        self.admin_port = 0
        self.blockpage_port = 0  # with `blockpage:` in more_config

    async def read_until(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        assert self.process.stderr is not None
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.process.stderr.readline()).decode()
                assert line, "schooldns exited:\n" + "".join(self.log)
                self.log.append(line)
                if match := re.search(pattern, line):
                    return match

    async def query(self, name: str, timeout: float = 3.0) -> dns.message.Message:
        return await dns.asyncquery.udp(
            dns.message.make_query(name, "A"), "127.0.0.1", port=self.dns_port, timeout=timeout
        )

    async def admin(self, path: str, token: str | None = None) -> str:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.admin_port}{path}", headers=headers) as response,
        ):
            assert response.status == 200, path
            return await response.text()

    async def metrics(self) -> str:
        return await self.admin("/metrics")


@contextlib.asynccontextmanager
async def serve(
    root: Path,
    upstream: FakeUpstream,
    workers: int,
    files: dict[str, str] | None = None,
    more_config: str = "",
    env: dict[str, str] | None = None,
    admin_port: int = 0,
) -> AsyncIterator[Served]:
    """`schooldns serve` over the test site under `root`; `env` adds to the child's environment; the
    admin API on `admin_port` (0: any free port)."""
    config = write_site(
        root,
        [upstream.address],
        f'workers: {workers}\nadmin: {{listen: "127.0.0.1:{admin_port}"}}\nreload: {{watch_interval_seconds: 0}}\n'
        + more_config,
        files,
    )
    process = await asyncio.create_subprocess_exec(
        *SCHOOLDNS,
        "serve",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    served = Served(process)
    try:
        if workers == 1:
            served.dns_port = int((await served.read_until(r"serving DNS on 127\.0\.0\.1:(\d+)"))[1])
        else:
            served.dns_port = int((await served.read_until(r"workers serving DNS on ports \((\d+),"))[1])
        served.admin_port = int((await served.read_until(r"admin API on http://127\.0\.0\.1:(\d+)/"))[1])
        if "blockpage:" in more_config:
            served.blockpage_port = int((await served.read_until(r"block page on http://127\.0\.0\.1:(\d+)/"))[1])
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):  # the whole session: workers outlive a killed supervisor
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
