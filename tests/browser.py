"""A real headless Chromium driven over the DevTools protocol, for tests of the dashboard page.

Only what the tests need: open a URL, evaluate JavaScript, wait for a condition, take a screenshot, and
collect every console error and uncaught exception the page produced. The browser runs with its own
profile directory under the test's temporary directory and is killed on exit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tornado.websocket import websocket_connect

_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-quic", "--disable-extensions", "--mute-audio", "--remote-debugging-address=127.0.0.1",
          "--remote-debugging-port=0", "--window-size=1400,1000")


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, if any."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


class Browser:
    """One headless browser with one page.

    Examples
    --------
    >>> with Browser(tmp_path) as browser:  # doctest: +SKIP
    ...     browser.open("http://127.0.0.1:8787/training")
    ...     browser.wait_for("document.querySelectorAll('tr.trial').length > 0", timeout=30)
    """

    def __init__(self, workdir: Path, timeout: float = 30.0) -> None:
        self.workdir, self.timeout = Path(workdir), timeout
        self.errors: list[str] = []
        self._ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._process: subprocess.Popen | None = None
        self._socket: Any = None

    def __enter__(self) -> Browser:
        executable = find_chromium()
        if executable is None:
            raise RuntimeError("No chromium on PATH: install Debian's `chromium` (apt-get install chromium).")
        profile = self.workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "chromium.log").open("w")
        self._process = subprocess.Popen([executable, *_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                         stdout=subprocess.DEVNULL, stderr=log)
        try:
            port = self._devtools_port(profile / "DevToolsActivePort")
            target = self._page_target(port)
            self._socket = self._run(websocket_connect, target, max_message_size=256 << 20)
            for domain in ("Runtime", "Log", "Page"):
                self.send(f"{domain}.enable")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._socket is not None:
            async def close() -> None:  # on the loop that owns the connection
                self._socket.close()

            with contextlib.suppress(Exception):  # never hide the test's own failure behind a cleanup error
                self._loop.run_until_complete(close())
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=self.timeout)
        self._loop.close()

    def _devtools_port(self, path: Path) -> int:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._process.returncode}; "
                                   f"see {self.workdir}/chromium.log")
            if path.exists() and (lines := path.read_text().splitlines()):
                return int(lines[0])
            time.sleep(0.05)
        raise TimeoutError(f"chromium did not open its DevTools port within {self.timeout}s")

    def _page_target(self, port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=self.timeout) as response:
            pages = [t for t in json.load(response) if t.get("type") == "page"]
        return pages[0]["webSocketDebuggerUrl"]

    def _run(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """``await function(*args)`` on this browser's event loop, with the timeout."""
        async def call() -> Any:
            return await asyncio.wait_for(function(*args, **kwargs), self.timeout)

        return self._loop.run_until_complete(call())

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result. Console errors and exceptions arriving meanwhile are kept."""
        ident = next(self._ids)
        self._run(self._socket.write_message, json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            raw = self._run(self._socket.read_message)
            if raw is None:
                raise RuntimeError("chromium closed the DevTools connection")
            message = json.loads(raw)
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._note(message)

    def _note(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(f"exception: {details.get('exception', {}).get('description') or details['text']}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = (str(a.get("value", a.get("description"))) for a in params["args"])
            self.errors.append("console: " + " ".join(args))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", what=f"{url} to load")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None, what: str | None = None) -> Any:
        """Evaluate ``expression`` until it is truthy; its value. Fails after ``timeout`` seconds."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what or expression} not reached within {timeout or self.timeout}s")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path
