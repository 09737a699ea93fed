"""The admin HTTP API on a real socket: liveness, readiness, metrics and status of the state it is given."""

from __future__ import annotations

import dataclasses
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

import resolver
from resolver.control import config
from resolver.dataplane import pipeline
from resolver.dataplane.workerstate import WorkerState
from resolver.operations import admin
from resolver.processes import app
from tests.support import harness
from tests.support.states import state, upstream


async def test_the_admin_api_answers_from_the_state_it_reads_at_each_request(tmp_path):
    cfg = config.load_config(harness.write_site(tmp_path, ["192.0.2.53:53"], 'admin: {listen: "127.0.0.1:0"}\n'))
    current: list[WorkerState] = [
        dataclasses.replace(state(), generation=0, loaded_at=0.0, list_entries={}, lists_updated_at=0.0)
    ]

    async def reload() -> bool:
        return True

    sock = app.bind_admin(cfg)
    assert sock is not None

    async def snapshot() -> pipeline.Snapshot:
        raise AssertionError("the endpoints without a token read no snapshot")

    control = admin.Control(state=lambda: current[0], reload=reload, config=cfg, snapshot=snapshot)
    runner = await admin.start(sock, control)
    base = f"http://127.0.0.1:{admin.bound_port(runner)}"
    try:
        async with aiohttp.ClientSession() as session:

            async def get(path: str) -> tuple[int, str, str]:
                async with session.get(base + path) as response:
                    return response.status, response.headers["Content-Type"], await response.text()

            assert await get("/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
            assert await get("/readyz") == (503, "text/plain; charset=utf-8", "not ready: no snapshot installed\n")
            status, _, text = await get("/status")
            assert status == 200 and '"lists_age_seconds": null' in text

            loaded_at = time.time() - 60
            current[0] = state(
                answered=2,
                upstreams=(
                    upstream("192.0.2.53:53", latency_seconds=0.012345),
                    upstream("192.0.2.54:53", up=False, latency_seconds=None),
                ),
                loaded_at=loaded_at,
                lists_updated_at=loaded_at,
                cache_entries=7,
                serving_last_good=1,
                list_entries={"adult": 3, "games": 1},
            )
            assert (await get("/readyz"))[::2] == (200, "ready\n")

            status, content_type, text = await get("/metrics")
            assert status == 200 and content_type == "text/plain; version=0.0.4; charset=utf-8"
            samples = {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }
            assert (
                samples[
                    ("schooldns_queries_total", (("result", "forwarded"), ("school", "school-a"), ("transport", "udp")))
                ]
                == 2
            )
            assert samples[("schooldns_upstream_up", (("upstream", "192.0.2.54:53"),))] == 0
            assert samples[("schooldns_serving_last_good", ())] == 1

            async with session.get(base + "/status") as response:
                assert response.status == 200 and response.content_type == "application/json"
                body = await response.json()
            age = body.pop("lists_age_seconds")
            assert 59 <= age <= 120
            assert body == {
                "version": resolver.__version__,
                "generation": 1,
                "list_entries": {"adult": 3, "games": 1},
                "serving_last_good": True,
                "workers": 1,
                "cache_entries": 7,
                "degraded": False,
                "upstreams": [
                    {"address": "192.0.2.53:53", "up": True, "failing": False, "latency_ms": 12.35},
                    {"address": "192.0.2.54:53", "up": False, "failing": False, "latency_ms": None},
                ],
                "compiled": [name.rsplit(".", 1)[1] for name in resolver.compiled_modules()],
            }

            assert (await get("/nothing"))[0] == 404
            async with session.post(base + "/status") as response:
                assert response.status == 405  # read-only
    finally:
        await runner.cleanup()
