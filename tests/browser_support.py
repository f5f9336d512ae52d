"""What the browser tests share: Debian's Chromium through Playwright, a page that blocks and records every
request not to 127.0.0.1, a static file server on 127.0.0.1, and JupyterLab on 127.0.0.1 started through
:func:`phi3lab.serving.guard.spawn`, so it dies with the test process even when that is killed.

Without Chromium or Playwright a test skips and says what to install (no browser is ever downloaded).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import secrets
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

JUPYTER_START = 120  # seconds JupyterLab may take to answer (a loaded 2-core machine)
INSTALL = "apt-get install -y chromium && pip install playwright==1.65.2 (no browser download: the test uses Debian's)"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def chromium_path() -> str | None:
    for candidate in ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return path
    return None


@contextlib.contextmanager
def chromium():
    """A headless Chromium for a module's tests, or a skip that says how to install it."""
    path = chromium_path()
    if path is None:
        pytest.skip(f"no Chromium on this machine; install it with: {INSTALL}")
    playwright = pytest.importorskip("playwright.sync_api", reason=f"Playwright is not installed: {INSTALL}")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


class Watch:
    """A browser context whose pages may only reach 127.0.0.1 (and ``data:``/``blob:``): every other request
    is blocked and recorded in :attr:`left`; console errors, uncaught errors and failed local loads (4xx/5xx)
    are kept in :attr:`errors`."""

    def __init__(self, browser, **options):
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000}, **options)
        self.left: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("response", lambda r: r.status >= 400 and self.errors.append(f"{r.status} {r.url}"))

    def _route(self, route):
        url = route.request.url
        parsed = urlparse(url)
        if parsed.scheme in ("data", "blob") or parsed.hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            self.left.append(url)
            route.abort()

    def check(self):
        assert self.left == [], f"requests left 127.0.0.1: {self.left[:5]}"
        assert self.errors == [], f"console errors: {self.errors[:5]}"

    def shot(self, name: str) -> None:
        """A screenshot for a person to look at, when ``PHI3LAB_BROWSER_SHOTS`` names a folder."""
        folder = os.environ.get("PHI3LAB_BROWSER_SHOTS")
        if folder:
            self.page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)

    def close(self):
        self.context.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_folder(folder: Path):
    """Serve ``folder`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyter_lab(root: Path, timeout: float = JUPYTER_START):
    """JupyterLab 4 (which also serves Notebook 7) on 127.0.0.1, a free port and a fresh token, serving
    ``root``, with its settings, workspaces, data and runtime files under ``root`` (nothing of the user's is
    read or written); started with :func:`phi3lab.serving.guard.spawn` and stopped (its process group) on
    exit; its kernels end with it (ipykernel watches its parent).  Yields ``(base_url, token)``; fails with the server's log when it does not
    answer within ``timeout`` seconds."""
    from phi3lab.serving.guard import spawn, stop_group

    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "JUPYTER_CONFIG_DIR": str(root / ".config"),
        "JUPYTER_DATA_DIR": str(root / ".data"),
        "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(root / ".settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / ".workspaces"),
    }
    args = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        "--JupyterNotebookApp.expose_app_in_browser=True",
        "--LabApp.extension_manager=readonly",
        "--ServerApp.allow_root=True",
    ]
    log_path = root / "server.log"
    with open(log_path, "w") as log:
        server = spawn(args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, grace=10.0)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                        break
                except OSError:
                    if server.poll() is not None:
                        pytest.fail(f"JupyterLab exited with {server.returncode}: {log_path.read_text()[-2000:]}")
                    if time.monotonic() > deadline:
                        pytest.fail(f"JupyterLab did not answer within {timeout:.0f} s: {log_path.read_text()[-2000:]}")
                    time.sleep(0.5)
            yield base, token
        finally:
            stop_group(server.pid, grace=10.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(5)
