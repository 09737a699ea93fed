"""A headless Chromium (Debian's `chromium`) driven over the DevTools protocol: pages, forms, text, screenshots."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1200,1500",
)


class Page:
    """One tab: DevTools commands by id, events kept in order for whoever waits for them."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse):
        self.socket = socket
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.console: list[str] = []  # what the page logged (Content-Security-Policy refusals among it)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.socket:
            data = json.loads(message.data)
            if "id" in data:
                self.waiting.pop(data["id"]).set_result(data)
            elif data.get("method") == "Log.entryAdded":
                self.console.append(data["params"]["entry"]["text"])
            else:
                self.events.put_nowait(data)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        self.waiting[ident] = asyncio.get_running_loop().create_future()
        await self.socket.send_json({"id": ident, "method": method, "params": params})
        async with asyncio.timeout(30):
            reply = await self.waiting[ident]
        assert "error" not in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    async def loaded(self, action: Any) -> None:
        """Run `action` (a coroutine that navigates) and wait for the page it leads to to load."""
        while not self.events.empty():
            self.events.get_nowait()
        await action
        async with asyncio.timeout(30):
            while (await self.events.get()).get("method") != "Page.loadEventFired":
                pass

    async def open(self, url: str) -> None:
        await self.loaded(self.send("Page.navigate", url=url))

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def submit(self, selector: str, fields: dict[str, str]) -> None:
        """Fill a form's fields and submit it, as a person would (the browser sends it)."""
        filling = "".join(
            f"document.querySelector({json.dumps(name)}).value = {json.dumps(value)};" for name, value in fields.items()
        )
        await self.loaded(self.evaluate(f"{filling} document.querySelector({json.dumps(selector)}).requestSubmit();"))

    async def text(self) -> str:
        text: str = await self.evaluate("document.body.innerText")
        return text

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Page]:
    """A fresh headless Chromium with its profile in `profile`, and its one page."""
    profile.mkdir(parents=True)
    process = await asyncio.create_subprocess_exec(
        "chromium",
        *FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        async with asyncio.timeout(30):
            while not port_file.exists() or not port_file.read_text().strip():
                await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                [target] = [t for t in await response.json() if t["type"] == "page"]
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 2**20) as socket:
                page = Page(socket)
                await page.send("Page.enable")
                await page.send("Log.enable")
                try:
                    yield page
                finally:
                    page.reader.cancel()
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its renderers too
            await process.wait()
