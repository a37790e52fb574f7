"""A real headless browser for the report tests: Debian's `chromium`, driven over the Chrome DevTools
Protocol with the `websockets` client (already installed: a dependency of uvicorn/vLLM).

CDP rather than `--dump-dom`: the dumped DOM says nothing about whether an image decoded or whether the
console logged an error, while CDP reports both (`Log.entryAdded` carries failed resource loads,
`Runtime.exceptionThrown`/`consoleAPICalled` script errors) and lets us read `naturalWidth`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

INSTALL = "apt-get install -y --no-install-recommends chromium"


def chromium_exe() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, f"chromium missing (the report test opens the HTML in it): {INSTALL}"
    return exe


@dataclass
class PageResult:
    title: str
    headings: list[str]
    images: list[dict[str, Any]]
    """One per <img>: src, complete, naturalWidth."""
    errors: list[str] = field(default_factory=list)
    """Console errors, uncaught exceptions and failed resource loads."""


IMAGES_JS = """JSON.stringify({
  title: document.title,
  headings: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                                 naturalWidth: i.naturalWidth})),
})"""


class Browser:
    """`with Browser() as b: b.load(path)`; one headless chromium per `with`, stopped on exit."""

    def __enter__(self) -> Browser:
        self.profile = tempfile.mkdtemp(prefix="raylm-chromium-")
        self.proc = subprocess.Popen(
            [
                chromium_exe(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = Path(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert self.proc.poll() is None, f"chromium exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port in 60 s"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        assert pages, "chromium has no page to drive"
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.next_id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        """Send one CDP command and return its result; events that arrive meanwhile are kept."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == self.next_id:
                assert "error" not in msg, f"{method}: {msg['error']}"
                return msg.get("result", {})
            self.events.append(msg)

    def _wait_event(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))

    def load(self, path: Path) -> PageResult:
        """Open a local file, wait for its load event (images included), and report what rendered."""
        self.events = []
        self.call("Page.navigate", url=path.resolve().as_uri())
        self._wait_event("Page.loadEventFired")
        value = self.call("Runtime.evaluate", expression=IMAGES_JS, returnByValue=True)["result"]["value"]
        page = json.loads(value)
        result = PageResult(page["title"], page["headings"], page["images"])
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Log.entryAdded" and p["entry"].get("level") == "error":
                result.errors.append(
                    f"{p['entry'].get('source')}: {p['entry'].get('text')} {p['entry'].get('url', '')}"
                )
            elif e.get("method") == "Runtime.exceptionThrown":
                result.errors.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                result.errors.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
        return result
