"""`schooldns token` as a real process against a real `schooldns serve` with two workers, and an edit over its API."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys

import aiohttp
import dns.rcode

import resolver
from tests.support import served
from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import write_site


async def schooldns(*args: str) -> tuple[int, str, str]:
    """The command as a child process (awaited: a server may run in this event loop)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "resolver",
        *args,
        cwd=served.ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_token_added_edits_a_policy_on_two_workers_and_stops_working_once_revoked(tmp_path):
    config = str(tmp_path / "config.yaml")
    async with FakeUpstream() as upstream, served.serve(tmp_path, upstream, workers=2) as server:
        code, out, err = await schooldns("token", "add", "--config", config, "--role", "province", "--name", "ops")
        assert code == 0, err
        [secret] = out.splitlines()  # printed once, on stdout alone
        assert secret.startswith("sdns_")
        assert err == f"token 'ops' (province) added to {tmp_path / 'var' / 'tokens.yaml'}; it is shown only now\n"
        assert secret not in (tmp_path / "var" / "tokens.yaml").read_text()

        code, out, _ = await schooldns("token", "list", "--config", config)
        assert code == 0 and re.fullmatch(r"ops\tprovince\t\d{4}-\d\d-\d\d \d\d:\d\d UTC\n", out), out

        base = f"http://127.0.0.1:{server.admin_port}"
        auth = {"Authorization": f"Bearer {secret}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/v1/schools/school-a/policy", headers=auth) as response:
                assert response.status == 200
                etag, text = response.headers["ETag"], await response.text()
            changed = text.replace("deny: [denied.example.org]", "deny: [denied.example.org, edited.example.net]")
            async with session.put(
                f"{base}/v1/schools/school-a/policy", data=changed.encode(), headers={**auth, "If-Match": etag}
            ) as response:
                assert response.status == 200, await response.text()
                written = await response.json()
            # The answer comes once both workers serve the new generation.
            assert written["generation"] == 2
            async with session.get(f"{base}/status") as response:
                status = await response.json()
            assert (status["generation"], status["workers"]) == (2, 2)
            for _ in range(8):  # from new source ports each: both workers are asked
                assert (await server.query("edited.example.net")).rcode() == dns.rcode.NXDOMAIN

            code, _, err = await schooldns("token", "revoke", "--config", config, "ops")
            assert (code, err) == (0, "token 'ops' (province) revoked\n")
            async with session.get(f"{base}/v1/status", headers=auth) as response:
                assert response.status == 401

    entries = [json.loads(line) for line in (tmp_path / "var" / "audit.jsonl").read_text().splitlines()]
    assert [(e["action"], e["who"], e["token"]) for e in entries] == [
        ("token.add", entries[0]["who"], "ops (province)"),
        ("policy.write", "ops", None),
        ("token.revoke", entries[0]["who"], "ops (province)"),
    ]
    assert entries[0]["who"].startswith("cli:") and entries[0]["role"] == "local"


async def test_a_tokens_file_others_may_read_is_refused_in_one_line(tmp_path):
    config = str(write_site(tmp_path, ["127.0.0.1:53"]))
    code, out, _ = await schooldns("token", "add", "--config", config, "--role", "viewer")
    assert code == 0 and out.startswith("sdns_")
    path = tmp_path / "var" / "tokens.yaml"
    os.chmod(path, 0o644)
    for command in (["list"], ["add", "--role", "viewer"], ["revoke", "viewer-1"]):
        code, out, err = await schooldns("token", *command, "--config", config)
        assert (code, out) == (1, "")
        assert err == f"{path}: the tokens file is readable by other users (mode 0644); run: chmod 600 {path}\n"
    code, _, err = await schooldns("token", "add", "--config", config, "--role", "teacher")
    assert code == 2
    assert err == (
        "schooldns token: --role: unknown role 'teacher': "
        "expected province, viewer, school:<school-id> or doh:<school-id>\n"
    )


async def test_status_and_reload_ask_the_running_server_with_a_token(tmp_path):
    config = str(tmp_path / "config.yaml")
    async with FakeUpstream() as upstream, served.serve(tmp_path, upstream, workers=1) as server:
        code, secret, _ = await schooldns("token", "add", "--config", config, "--role", "province")
        assert code == 0
        # The server was given port 0; the commands read the port it took from their config file.
        text = (tmp_path / "config.yaml").read_text()
        config = str(tmp_path / "cli.yaml")
        (tmp_path / "cli.yaml").write_text(text.replace('"127.0.0.1:0"}', f'"127.0.0.1:{server.admin_port}"}}'))
        token_file = tmp_path / "token"
        token_file.write_text(secret)
        code, out, err = await schooldns("status", "--config", config, "--token-file", str(token_file))
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == f"schooldns {resolver.__version__}: generation 1, 1 worker(s)"
        assert lines[2] == f"upstream {upstream.address}: no answer yet"
        await server.query("forwarded.example.net")
        code, out, _ = await schooldns("status", "--config", config, "--token-file", str(token_file))
        assert out.splitlines()[2] == f"upstream {upstream.address}: up"

        code, out, err = await schooldns("reload", "--config", config, "--token-file", str(token_file))
        assert (code, out, err) == (0, "reloaded: generation 2\n", "")
        code, out, _ = await schooldns("status", "--config", config, "--json", "--token-file", str(token_file))
        assert code == 0 and json.loads(out)["generation"] == 2

        token_file.write_text("sdns_not-a-token")
        code, out, err = await schooldns("reload", "--config", config, "--token-file", str(token_file))
        assert (code, out) == (1, "")
        assert err.startswith(f"http://127.0.0.1:{server.admin_port}/v1/reload: 401 the token was refused")

    code, out, err = await schooldns("status", "--config", config)  # no token given
    assert (code, out) == (2, "")
    assert err.startswith("schooldns status: no token: pass --token-file FILE or set SCHOOLDNS_TOKEN")
    code, out, err = await schooldns("status", "--config", config, "--token-file", str(token_file))
    assert (code, out) == (1, "")  # the server has stopped
    assert err.startswith(f"no admin API answers at http://127.0.0.1:{server.admin_port}/v1/status (admin.listen in ")
