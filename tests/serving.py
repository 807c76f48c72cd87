"""Helpers of the `pipeline serve` tests: the server as a user starts it (a fresh `pipeline serve` process on a free
loopback port), plain HTTP requests, and Debian's Chromium driven by playwright (its own browser download does not
work offline: `.ci/setup` installs the `chromium` package)."""
from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(config: Path, *args: str) -> Iterator[str]:
    """`pipeline serve --config CONFIG --port P ARGS` in a subprocess; yields its base URL once it answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "--config", str(config), "--port", str(port),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"pipeline serve exited {proc.returncode}:\n{proc.communicate()}")
            try:
                if request("127.0.0.1", port, "GET", "/runs")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise AssertionError("pipeline serve did not answer within 90 s")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
        assert "Traceback" not in err, err


def request(host: str, port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One raw HTTP request (the path sent as given: no client-side normalisation of '..'); status and body."""
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def get(base: str, path: str, **params: Any) -> tuple[int, str]:
    u = urllib.parse.urlsplit(base)
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    return request(u.hostname or "127.0.0.1", int(u.port or 80), "GET", path + query)


def post_file(base: str, path: str, fields: dict[str, str], file: tuple[str, bytes]) -> tuple[int, str]:
    """A multipart/form-data POST with text fields and one file field named `file`."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file[0]}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + file[1] + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    u = urllib.parse.urlsplit(base)
    return request(u.hostname or "127.0.0.1", int(u.port or 80), "POST", path, body,
                   {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def alert(page_html: str) -> str:
    """The message of an error page (its role=alert box)."""
    import re

    m = re.search(r'role="alert">([^<]*)<', page_html)
    return m.group(1) if m else ""


@contextmanager
def chromium(width: int = 1300) -> Iterator[Any]:
    """A playwright page in Debian's Chromium, `width` px wide."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "these tests drive Debian's chromium: apt-get install chromium (.ci/setup does)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": 900})
        finally:
            browser.close()


def fits(page: Any) -> bool:
    """Whether the page needs no horizontal scrolling at its viewport's width."""
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())
