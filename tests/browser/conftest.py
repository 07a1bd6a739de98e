"""JupyterLab and Debian's chromium, started for the browser tests and always stopped again.

The server runs from the venv on 127.0.0.1, on a free port, with a token; its runtime, settings and workspace
directories and its notebooks are in the test's temp dir, and ``LABKIT_ROOT`` points its kernels at a temp
store. The browser is ``/usr/bin/chromium`` (apt-get install chromium fonts-noto-cjk) driven by playwright's
Python API with a fresh profile — never ``playwright install``: nothing is downloaded.

Every exit path stops both: the server is asked to shut down (which shuts its kernels down) and then killed
with its process group; kernels and chromium processes still alive are found by the temp dir in their
command line and killed by pid.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (our temp dir: our kernels, our chromium), not ours."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def kill_all(pids: list[int], *, wait: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if os.path.exists(f"/proc/{p}") and _state(p) != "Z"]
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


class JupyterLab:
    """A JupyterLab server of the venv serving ``notebooks`` (see the module docstring)."""

    def __init__(self, base: str, notebooks: str, labkit_root: str) -> None:
        self.base, self.notebooks = base, notebooks
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "LABKIT_ROOT": labkit_root, "JUPYTER_RUNTIME_DIR": os.path.join(base, "runtime"),
               "JUPYTERLAB_SETTINGS_DIR": os.path.join(base, "settings"),
               "JUPYTERLAB_WORKSPACES_DIR": os.path.join(base, "workspaces"), "PYTHONUNBUFFERED": "1"}
        # every cell in the page (no windowing), no kernel-idle heuristics: a test clicks what a student sees
        settings = os.path.join(base, "settings", "@jupyterlab", "notebook-extension")
        os.makedirs(settings, exist_ok=True)
        with open(os.path.join(settings, "tracker.jupyterlab-settings"), "w") as f:
            json.dump({"windowingMode": "none"}, f)
        notification = os.path.join(base, "settings", "@jupyterlab", "apputils-extension")
        os.makedirs(notification, exist_ok=True)
        with open(os.path.join(notification, "notification.jupyterlab-settings"), "w") as f:
            json.dump({"fetchNews": "false", "checkForUpdates": False}, f)    # no news toast over the page
        jupyter = os.path.join(os.path.dirname(sys.executable), "jupyter")
        self.log = open(os.path.join(base, "jupyterlab.log"), "wb")
        self.proc = subprocess.Popen(
            [jupyter, "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={self.port}",
             "--port-retries=0", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={notebooks}",
             "--LabApp.extension_manager=readonly", "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=notebooks)
        self._wait_ready()

    def api(self, path: str, method: str = "GET") -> object:
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({self.proc.returncode}): see {self.log.name}")
            try:
                self.api("/api/status")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        raise TimeoutError(f"JupyterLab did not answer on {self.url} within {timeout:.0f} s")

    def page(self, name: str) -> str:
        """The URL of notebook ``name`` alone in a fresh workspace of its own."""
        workspace = "ws-" + name.split(".")[0]
        return f"{self.url}/lab/workspaces/{workspace}/tree/{name}?reset&token={self.token}"

    def stop(self) -> None:
        """Shut the server down (its kernels with it); kill whatever is left of it and of its kernels."""
        with contextlib.suppress(Exception):
            for k in self.api("/api/kernels") or []:
                self.api(f"/api/kernels/{k['id']}", method="DELETE")
        with contextlib.suppress(Exception):
            self.api("/api/shutdown", method="POST")
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)       # anything else of its process group
        kill_all(processes_mentioning(os.path.join(self.base, "runtime")))   # kernels: their connection file
        self.log.close()


@pytest.fixture
def browser_env(tmp_path):
    """(JupyterLab, playwright browser context, temp dir); both stopped on every exit path."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    pytest.importorskip("jupyterlab", reason="pip install jupyterlab (the test extra)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium fonts-noto-cjk")
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    profile = tmp_path / "chromium-profile"
    server = pw = context = None
    try:
        server = JupyterLab(str(tmp_path), str(notebooks), str(tmp_path / "labkit-root"))
        pw = playwright_api.sync_playwright().start()
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000}, device_scale_factor=1)
        context.set_default_timeout(60_000)
        yield server, context, tmp_path
    finally:
        if context is not None:
            with contextlib.suppress(Exception):
                context.close()
        if pw is not None:
            with contextlib.suppress(Exception):
                pw.stop()
        kill_all(processes_mentioning(str(profile)))
        if server is not None:
            server.stop()
        left = processes_mentioning(str(tmp_path))
        kill_all(left)
        shutil.rmtree(profile, ignore_errors=True)
        assert not left, f"processes of the browser test were still alive: {left}"
