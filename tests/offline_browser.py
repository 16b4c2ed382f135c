"""Render an HTML file in headless Chromium with every network request sent to a recorder that answers none.

The recorder is Chromium's proxy: each request the page makes arrives there (``GET http://...`` or
``CONNECT host:443``) and gets a 502. Chromium's own housekeeping (Google hosts) is recorded too and filtered out.
"""

from __future__ import annotations

import shutil
import socketserver
import subprocess
import threading
from pathlib import Path

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
BROWSER_OWN_HOSTS = ("google.com", "gstatic.com", "googleapis.com", "gvt1.com")


class _Recorder(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[str] = []


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline().decode(errors="replace").strip()
        if line:
            self.server.requests.append(line)  # type: ignore[attr-defined]
        self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def _host(request: str) -> str:
    target = request.split()[1] if len(request.split()) > 1 else ""
    return target.split("://")[-1].split("/")[0].split(":")[0]


def render_offline(html: Path) -> tuple[str, list[str]]:
    """(the DOM after loading ``html``, the requests it tried to make beyond the browser's own)."""
    assert BROWSER is not None
    recorder = _Recorder()
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    try:
        done = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               f"--proxy-server=http://127.0.0.1:{recorder.server_address[1]}",
                               "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=5000", "--dump-dom",
                               html.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    finally:
        recorder.shutdown()
    page = [r for r in recorder.requests if not _host(r).endswith(BROWSER_OWN_HOSTS)]
    return done.stdout, page
