"""The README's commands: set-up is idempotent and the lab command serves notebooks/."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import tasks  # noqa: E402


def test_cpu_torch_on_linux_without_nvidia(monkeypatch):
    monkeypatch.setattr(tasks.platform, "system", lambda: "Linux")
    monkeypatch.setattr(tasks, "_has_nvidia", lambda: False)
    assert tasks._torch_requirement() == "torch==2.13.0"
    monkeypatch.setattr(tasks, "_has_nvidia", lambda: True)
    assert tasks._torch_requirement().startswith("torch>=")


def test_setup_installs_nothing_when_nothing_changed(monkeypatch):
    calls = []
    monkeypatch.setattr(tasks, "_run", lambda *args, **kwargs: calls.append(args))
    tasks.setup()
    assert calls == [] and tasks.STAMP.read_text().strip() == tasks._fingerprint()


def test_setup_reinstalls_when_the_pins_change(monkeypatch):
    calls = []
    monkeypatch.setattr(tasks, "_run", lambda *args, **kwargs: calls.append([str(a) for a in args]))
    monkeypatch.setattr(tasks, "_fingerprint", lambda: "changed")
    monkeypatch.setattr(tasks, "STAMP", tasks.VENV / ".phi3lab-setup-test")
    try:
        tasks.setup()
    finally:
        tasks.STAMP.unlink(missing_ok=True)
    assert [c[-1] for c in calls] == [tasks._torch_requirement(), ".[notebooks,test,quant,docs,demo]"]


def test_unknown_task_is_refused():
    out = subprocess.run([sys.executable, str(ROOT / "tasks.py"), "labb"], capture_output=True, text=True)
    assert out.returncode != 0 and "unknown task 'labb'" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not tasks.PY.exists(), reason="needs the .venv that tasks.py sets up")
@pytest.mark.slow
def test_lab_serves_the_notebooks():
    port = _free_port()
    env = dict(os.environ, PHI3LAB_PORT=str(port))
    from phi3lab.serving.guard import spawn, stop_group

    proc = spawn(  # in a session of its own, watched: it dies with this test run even under SIGKILL
        [sys.executable, str(ROOT / "tasks.py"), "lab"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        url, deadline, seen = None, time.time() + 120, []
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            match = re.search(rf"http://(?:localhost|127\.0\.0\.1):{port}/lab\?token=(\w+)", line)
            if match:
                url, token = match.group(0), match.group(1)
        assert url, "".join(seen[-20:])
        names, error = set(), None
        for _ in range(60):  # the server may still be settling on a loaded machine
            for host in ("127.0.0.1", "localhost"):
                try:
                    with urllib.request.urlopen(f"http://{host}:{port}/api/contents?token={token}", timeout=10) as r:
                        names = {c["name"] for c in json.load(r)["content"]}
                    break
                except OSError as exc:
                    error = exc
            if names:
                break
            time.sleep(1)
        assert names, f"the lab server did not answer: {error}"
        assert {"00_quickstart.ipynb", "01_chat_templates.ipynb", "02_vision_analysis.ipynb"} <= names
    finally:
        stop_group(proc.pid, grace=30)
        proc.wait(timeout=30)
