"""The wheel: built from the repository and installed in a fresh venv, checks and serves outside the checkout."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dns.asyncquery
import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import yaml

import resolver
from tests.support.fake_upstream import FakeUpstream

# A wheel build and a fresh venv take about 25 s: `make test-wheel` runs this, and CI does.
pytestmark = pytest.mark.wheel

# `SCHOOLDNS_COMPILE=1 make test-wheel`: the same with the compiled wheel (about two minutes more).
COMPILED = os.environ.get("SCHOOLDNS_COMPILE") == "1"

ROOT = Path(__file__).resolve().parents[2]
# The installed package must be found in the venv, never through the checkout.
CLEAN_ENV = {
    name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
}


@dataclasses.dataclass(frozen=True, slots=True)
class Installed:
    venv: Path
    home: Path  # outside the checkout: the commands run here

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / program), *args],
            cwd=self.home,
            env=CLEAN_ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    # Built from a copy: a build in the checkout would write build/ there, and setuptools puts the
    # stale modules it finds in build/lib into the wheel too.
    source = base / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "var", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "*.so"
        ),
    )
    dist = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(source)],
        check=True,
        timeout=600 if COMPILED else 120,
    )
    [wheel] = dist.glob("schooldns-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    # The runtime dependencies come from the package index (quick from pip's cache).
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True,
        env=CLEAN_ENV,
        timeout=120,
    )
    home = base / "home"
    home.mkdir()
    return Installed(venv, home)


def write_config(root: Path, upstream: str) -> Path:
    """deploy/example/config.yaml over copies of the repository's policies and lists, on loopback."""
    for directory in ("policies", "blocklists"):
        shutil.copytree(ROOT / directory, root / directory)
    config = yaml.safe_load((ROOT / "deploy/example/config.yaml").read_text(encoding="utf-8"))
    config.update(
        listen=["127.0.0.1:0"],
        upstreams=[upstream],
        admin={"listen": "127.0.0.1:0"},
        policies_dir="policies",
        blocklists_dir="blocklists",
        state_dir="var",
    )
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_the_installed_package_and_command_are_the_wheels(installed):
    version = installed.run("schooldns", "--version")
    compiled = ", ".join(name.rsplit(".", 1)[1] for name in resolver.COMPILABLE)
    built = f" (compiled: {compiled})" if COMPILED else ""
    assert (version.returncode, version.stdout, version.stderr) == (0, f"schooldns 0.1.0{built}\n", "")

    code = "import json, sys, resolver; print(json.dumps([resolver.__file__, sys.path]))"
    where = installed.run("python", "-c", code)
    assert where.returncode == 0, where.stderr
    package, path = json.loads(where.stdout)
    assert Path(package).is_relative_to(installed.venv)
    # Built without SCHOOLDNS_COMPILE: pure Python, no extension module (--version says so too).
    assert bool(list(Path(package).parent.rglob("*.so"))) == COMPILED
    assert not [entry for entry in path if entry and Path(entry).resolve().is_relative_to(ROOT)]


def test_the_openapi_document_is_package_data(installed):
    # docs/openapi.yaml is a link to it in the repository; the wheel holds the file itself.
    code = "from resolver.operations import admin; print(sorted(admin.openapi_document()['paths'])[0])"
    result = installed.run("python", "-c", code)
    assert (result.returncode, result.stdout, result.stderr) == (0, "/healthz\n", "")
    assert (ROOT / "docs" / "openapi.yaml").resolve() == ROOT / "resolver" / "operations" / "openapi.yaml"


def test_check_from_the_wheel(installed, tmp_path):
    config = write_config(tmp_path, "127.0.0.1:53")
    result = installed.run("schooldns", "check", "--config", str(config))
    assert (result.returncode, result.stderr) == (0, "")
    assert re.match(r"\d+ schools, \d+ categories, \d+ list entries\n", result.stdout)
    assert result.stdout.endswith(f"{config}: OK\n")


def _ede_texts(answer: dns.message.Message) -> list[str]:
    return [option.text for option in answer.options if option.otype == dns.edns.EDE]


async def test_serve_from_the_wheel_blocks_rewrites_forwards_and_stops_on_sigterm(installed, tmp_path):
    async with FakeUpstream() as upstream:
        upstream.answer("www.example.com", "A", "192.0.2.10", ttl=300)
        upstream.answer("forcesafesearch.google.com", "A", "216.239.38.120", ttl=300)
        config = write_config(tmp_path, upstream.address)
        process = await asyncio.create_subprocess_exec(
            str(installed.venv / "bin" / "schooldns"),
            "serve",
            "--config",
            str(config),
            cwd=installed.home,
            env=CLEAN_ENV,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        log: list[str] = []
        try:
            async with asyncio.timeout(30):
                while not (match := re.search(r"serving DNS on 127\.0\.0\.1:(\d+) ", log[-1] if log else "")):
                    line = (await process.stderr.readline()).decode()
                    assert line, "schooldns exited:\n" + "".join(log)
                    log.append(line)
            port = int(match[1])

            async def ask(name: str) -> dns.message.Message:
                query = dns.message.make_query(name, "A", use_edns=0)
                return await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=3)

            # The loopback client is policies/demo-local.yaml's school (lower secondary: adult blocked).
            blocked = await ask("pornhub.com")
            assert blocked.rcode() == dns.rcode.NXDOMAIN and not blocked.answer
            assert any("category=adult" in text for text in _ede_texts(blocked)), blocked

            # The safe-search table is package data: resolver/filtering/data/safe_search.yaml.
            rewritten = await ask("www.google.com")
            assert rewritten.rcode() == dns.rcode.NOERROR
            cname = rewritten.answer[0]
            assert cname.rdtype == dns.rdatatype.CNAME and cname[0].target.to_text() == "forcesafesearch.google.com."
            assert [r.to_text() for r in rewritten.answer[-1]] == ["216.239.38.120"]

            forwarded = await ask("www.example.com")
            assert forwarded.rcode() == dns.rcode.NOERROR
            assert [r.to_text() for r in forwarded.answer[0]] == ["192.0.2.10"]
            assert upstream.count("www.example.com") == 1
            assert upstream.count("pornhub.com") == upstream.count("www.google.com") == 0

            process.send_signal(signal.SIGTERM)
            rest = await asyncio.wait_for(process.stderr.read(), 20)
            assert await asyncio.wait_for(process.wait(), 20) == 0, "".join(log) + rest.decode()
        finally:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
