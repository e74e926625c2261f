"""A headless Chromium driven over the Chrome DevTools Protocol (websocket-client), for tests that check
what a user sees in a page. Debian's `chromium` package; `.ci/system-packages.sh` installs it.

`with Chromium() as browser:` starts it with a fresh profile and closes it (process and profile) on exit,
whatever happened. Every wait has a deadline: a page that never gets ready fails the test, never hangs it.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from urllib.request import urlopen

import websocket

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-unsafe-swiftshader", "--use-angle=swiftshader",  # WebGL on the CPU
         "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--remote-debugging-port=0"]


class BrowserError(AssertionError):
    pass


class Chromium:
    def __init__(self, width: int = 1200, height: int = 800, timeout: float = 30.0):
        if CHROMIUM is None:
            raise BrowserError("chromium is not installed (bash .ci/system-packages.sh installs it)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="cml-chromium-")
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)  # its own process group: closed as a whole
        self.ws = None
        self._id = 0
        try:
            self.ws = websocket.create_connection(self._page_socket(), timeout=timeout, suppress_origin=True)
        except BaseException:
            self.close()
            raise

    def _page_socket(self) -> str:
        found: list[str] = []

        def read() -> None:
            for line in self.proc.stderr:
                if "DevTools listening on" in line and not found:
                    found.append(line.split("listening on", 1)[1].strip())
        threading.Thread(target=read, daemon=True).start()  # also keeps draining stderr
        deadline = time.monotonic() + self.timeout
        while not found:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise BrowserError("chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port = found[0].split("127.0.0.1:", 1)[1].split("/", 1)[0]
        targets = json.load(urlopen(f"http://127.0.0.1:{port}/json", timeout=self.timeout))
        return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

    def send(self, method: str, **params) -> dict:
        """One CDP command; its result (events arriving meanwhile are dropped)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None):
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise BrowserError(f"timed out waiting for {expression}")

    def open(self, url: str, ready: str = "true") -> None:
        self.send("Page.navigate", url=url)
        self.wait_for(f"document.readyState === 'complete' && ({ready})")

    def mouse(self, kind: str, x: float, y: float, button: str = "none", modifiers: int = 0) -> None:
        """A real mouse event at page coordinates (kind: mouseMoved, mousePressed, mouseReleased)."""
        self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button=button, modifiers=modifiers,
                  clickCount=1 if kind != "mouseMoved" else 0)

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
        self.mouse("mouseMoved", *start)
        self.mouse("mousePressed", *start, button="left")
        for i in range(1, steps + 1):
            t = i / steps
            self.mouse("mouseMoved", start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1]),
                       button="left")
        self.mouse("mouseReleased", *end, button="left")

    def click(self, x: float, y: float, modifiers: int = 0) -> None:
        """Move there, rest as a hand does (plotly picks the clicked point from its throttled hover), click."""
        self.mouse("mouseMoved", x, y)
        time.sleep(0.15)
        self.mouse("mousePressed", x, y, button="left", modifiers=modifiers)
        self.mouse("mouseReleased", x, y, button="left", modifiers=modifiers)

    def screenshot(self, path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        try:  # renderer and GPU processes that outlive the browser's main process
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def map_point(browser: Chromium, row: int) -> tuple[float, float]:
    """Where the library map (cml/playlist/static/map.js) draws track ``row``, in page pixels."""
    return tuple(browser.evaluate(f"""(() => {{
        const gd = document.getElementById('cml-map'), L = gd._fullLayout, box = gd.getBoundingClientRect();
        for (const t of gd._fullData) {{ const i = (t.customdata || []).indexOf({row});
            if (i >= 0) return [box.left + L._size.l + L.xaxis.l2p(t.x[i]),
                                box.top + L._size.t + L.yaxis.l2p(t.y[i])]; }}
    }})()"""))
