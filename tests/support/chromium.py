"""A headless Chromium (Debian `chromium`) on loopback, driven over the DevTools protocol with aiohttp's WebSocket."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

# Headless, as root (no sandbox), and quiet: nothing is fetched from the internet on its own
# (components, sync, safe browsing lists, field trials) and QUIC is off.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-default-browser-check",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
START_SECONDS = 20.0


class Page:
    """One tab, attached over a flat DevTools session."""

    def __init__(self, browser: Chromium, session: str):
        self.browser = browser
        self.session = session
        self.console: list[str] = []  # what the page logged (Content-Security-Policy refusals among it)

    async def send(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        return await self.browser.send(method, params, self.session)

    async def evaluate(self, expression: str) -> Any:
        reply = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def until(self, expression: str, timeout_seconds: float = 10.0) -> Any:
        """Evaluate `expression` every 20 ms until it is truthy; its value."""
        async with asyncio.timeout(timeout_seconds):
            while not (value := await self.evaluate(expression)):
                await asyncio.sleep(0.02)
        return value

    async def until_text(self, words: str, timeout_seconds: float = 10.0) -> str:
        """The page's text once a loaded page holds `words` (after a click that loads another page)."""
        loaded = f"document.readyState === 'complete' && document.body?.innerText.includes({json.dumps(words)})"
        await self.until(loaded, timeout_seconds)
        return str(await self.evaluate("document.body.innerText"))

    async def open(self, url: str) -> str:
        """Load `url` and return the page's text once it has loaded."""
        reply = await self.send("Page.navigate", {"url": url})
        assert "errorText" not in reply, reply
        await self.until(f"document.readyState === 'complete' && location.href === {json.dumps(url)}")
        return str(await self.evaluate("document.body.innerText"))

    async def text(self) -> str:
        return str(await self.evaluate("document.body.innerText"))

    async def submit(self, selector: str, fields: Mapping[str, str]) -> str:
        """Fill a form's fields and submit it as a person would (the browser sends it); the next page's text."""
        filling = "".join(
            f"document.querySelector({json.dumps(k)}).value = {json.dumps(v)};" for k, v in fields.items()
        )
        # A mark on this document's window: the page the form leads to has none.
        await self.evaluate(f"window.schooldnsLeaving = true; {filling}")
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).requestSubmit(); true")
        await self.until("!window.schooldnsLeaving && document.readyState === 'complete'")
        return await self.text()

    async def phone(self, width: int = 390, height: int = 844) -> None:
        """Lay pages out as a phone of this size (CSS pixels) does."""
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True},
        )

    async def screenshot(self, path: Path) -> bytes:
        """The whole page (not only the viewport) as a PNG, written to `path`."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        reply = await self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            },
        )
        data = base64.b64decode(reply["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data


class Chromium:
    """The browser process and its DevTools connection; replies matched to commands by id."""

    def __init__(self, process: asyncio.subprocess.Process, socket: aiohttp.ClientWebSocketResponse):
        self.process = process
        self.socket = socket
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._pages: dict[str, Page] = {}  # by DevTools session: where a page's console messages go
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def send(self, method: str, params: Mapping[str, Any] | None = None, session: str | None = None) -> Any:
        command_id = next(self._ids)
        message: dict[str, Any] = {"id": command_id, "method": method, "params": dict(params or {})}
        if session is not None:
            message["sessionId"] = session
        reply = self._waiting[command_id] = asyncio.get_running_loop().create_future()
        await self.socket.send_str(json.dumps(message))
        async with asyncio.timeout(15):
            return await reply

    def close(self) -> None:
        self._reader.cancel()

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        session = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = self._pages[session["sessionId"]] = Page(self, session["sessionId"])
        await page.send("Page.enable")
        await page.send("Log.enable")
        return page

    async def _read(self) -> None:
        async for message in self.socket:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if data.get("method") == "Log.entryAdded" and data.get("sessionId") in self._pages:
                self._pages[data["sessionId"]].console.append(data["params"]["entry"]["text"])
            waiting = self._waiting.pop(data.get("id", -1), None)
            if waiting is None or waiting.done():
                continue  # an event
            if "error" in data:
                waiting.set_exception(AssertionError(f"DevTools: {data['error']}"))
            else:
                waiting.set_result(data.get("result", {}))
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(AssertionError("the browser closed its DevTools connection"))


@contextlib.asynccontextmanager
async def chromium(host_rules: str) -> AsyncIterator[Chromium]:
    """A fresh headless Chromium (its own profile, removed after) whose names resolve by `host_rules` only
    (e.g. "MAP blocked.example 127.0.0.1:8080, MAP * ~NOTFOUND"): it asks no DNS server."""
    executable = shutil.which("chromium")
    assert executable, "chromium is not installed (make test-tools installs the Debian package)"
    profile = tempfile.mkdtemp(prefix="schooldns-chromium-")
    process = await asyncio.create_subprocess_exec(
        executable,
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--host-resolver-rules={host_rules}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        active = Path(profile, "DevToolsActivePort")  # the port, then the browser's path, once it listens
        async with asyncio.timeout(START_SECONDS):
            while not (active.exists() and len(active.read_text().split()) == 2):
                assert process.returncode is None, "chromium exited at start"
                await asyncio.sleep(0.02)
        port, path = active.read_text().split()
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=64 * 1024 * 1024) as socket,
        ):
            browser = Chromium(process, socket)
            try:
                yield browser
            finally:
                browser.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its helper processes too
        await process.wait()
        shutil.rmtree(profile, ignore_errors=True)
