"""The engine's command line and environment, chosen from the hardware (no engine needed).

The real server runs in tests/test_endpoint_vllm.py; here the choices are checked with simulated
core counts and GPUs, as the attention selection is.
"""

import pytest

from phi3lab.serving import vllm as serve


@pytest.mark.parametrize(
    "cores, nvidia, layout",
    [
        (1, False, "one"),
        (2, False, "one"),
        (4, False, "one"),
        (5, False, "vllm"),
        (64, False, "vllm"),
        (2, True, "vllm"),
    ],
)
def test_auto_layout_follows_the_hardware(cores, nvidia, layout):
    chosen, reason = serve.process_layout("auto", cores=cores, nvidia=nvidia)
    assert chosen == layout
    assert (f"{cores} CPU core" in reason) != nvidia  # the reason names what it was chosen from


@pytest.mark.parametrize("asked", ["one", "vllm"])
def test_an_explicit_layout_wins(asked):
    assert serve.process_layout(asked, cores=2, nvidia=True)[0] == asked
    assert serve.process_layout(asked, cores=64, nvidia=False)[0] == asked


def test_an_unknown_layout_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="auto, one, vllm.*'two'"):
        serve.process_layout("two")
    with pytest.raises(ValueError, match="processes must be one of"):
        serve.Server("tiny", processes="two")  # before it looks for the engine


def test_one_process_layout_sets_the_executor_and_its_environment(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    one = serve.server_command("tiny", 8123, layout="one", python="py")
    assert one[one.index("--distributed-executor-backend") + 1] == "uni"
    assert "--distributed-executor-backend" not in serve.server_command("tiny", 8123, layout="vllm", python="py")
    env = serve.server_env("one", cores=2)
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and env["OMP_NUM_THREADS"] == "1"
    assert serve.server_env("one", cores=8)["OMP_NUM_THREADS"] == "7"  # one core left to the API server
    plain = serve.server_env("vllm", cores=2)
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in plain and "OMP_NUM_THREADS" not in plain


def test_the_callers_own_settings_win(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    env = serve.server_env("one", cores=2)
    assert env["OMP_NUM_THREADS"] == "3" and env["VLLM_CPU_KVCACHE_SPACE"] == "4"


def test_serve_prints_the_layout_and_its_reason(monkeypatch, capsys):
    ran = {}
    monkeypatch.setattr(serve, "setup_engine", lambda: "enginepy")
    monkeypatch.setattr(serve, "_cores", lambda: 2)
    monkeypatch.setattr(serve, "_has_nvidia", lambda: False)
    monkeypatch.setattr(serve.os, "execve", lambda path, cmd, env: ran.update(cmd=cmd, env=env))
    assert serve.main(["--port", "8123"]) == 0
    out = capsys.readouterr().out
    assert "http://127.0.0.1:8123/v1" in out and "processes: one (2 CPU cores" in out
    assert "uni" in ran["cmd"] and ran["env"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert serve.main(["--port", "8123", "--processes", "vllm"]) == 0
    assert "uni" not in ran["cmd"] and "processes: vllm (--processes vllm)" in capsys.readouterr().out


# --- the API key ---------------------------------------------------------------------------------


@pytest.fixture
def fake_engine(monkeypatch):
    ran = {}
    monkeypatch.setattr(serve, "setup_engine", lambda: "enginepy")
    monkeypatch.setattr(serve, "_cores", lambda: 2)
    monkeypatch.setattr(serve, "_has_nvidia", lambda: False)
    monkeypatch.setattr(serve.os, "execve", lambda path, cmd, env: ran.update(cmd=cmd, env=env))
    monkeypatch.delenv("PHI3LAB_API_KEY", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    return ran


KEY = "phi3lab-test-key-0123456789"


@pytest.mark.parametrize("how", ["option", "environment"])
def test_serve_requires_an_api_key_without_showing_it(fake_engine, monkeypatch, capsys, how):
    if how == "option":
        assert serve.main(["--port", "8123", "--api-key", KEY]) == 0
    else:
        monkeypatch.setenv("PHI3LAB_API_KEY", KEY)
        assert serve.main(["--port", "8123"]) == 0
    out = capsys.readouterr().out
    assert fake_engine["env"]["VLLM_API_KEY"] == KEY  # vLLM's own check, given the key in its environment
    assert "PHI3LAB_API_KEY" not in fake_engine["env"]
    assert not any(KEY in part for part in fake_engine["cmd"])  # never on the engine's command line
    assert KEY not in out and "API key: required" in out and "api_key_env='PHI3LAB_API_KEY'" in out


def test_serve_without_a_key_says_so(fake_engine, capsys):
    assert serve.main(["--port", "8123"]) == 0
    assert "VLLM_API_KEY" not in fake_engine["env"]
    assert "API key: none: any local process may use it" in capsys.readouterr().out


def test_an_empty_key_is_refused(fake_engine, monkeypatch):
    monkeypatch.setenv("PHI3LAB_API_KEY", " ")
    with pytest.raises(SystemExit, match="the API key is empty"):
        serve.main(["--port", "8123"])
    with pytest.raises(ValueError, match="api_key must be a non-empty string"):
        serve.Server("tiny", api_key="")


# --- servers die with their parent ----------------------------------------------------------------

STAND_IN = r"""
import http.server, json, os, subprocess, sys, time
# a grandchild, as vLLM's engine core is: it must die too
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[2], "w").write(f"{os.getpid()} {child.pid}")

class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"data": [{"id": "stand-in"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""

PARENT = r"""
import sys, time
sys.path.insert(0, {root!r})
from phi3lab.serving import vllm as serve

class StandIn(serve.Server):
    def command(self):
        return [sys.executable, {script!r}, str(self.port), {pids!r}]

serve.engine_installed = lambda: True
server = StandIn("tiny", log={log!r}, timeout=60).start()
print("started", flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    from phi3lab.serving.guard import process_alive

    return process_alive(pid)


def _wait_gone(pids, seconds=15.0) -> list[int]:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_a_server_dies_with_its_parent_killed_by_sigkill(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    script, pids, log = tmp_path / "stand_in.py", tmp_path / "pids", tmp_path / "server.log"
    script.write_text(STAND_IN)
    code = PARENT.format(root=str(serve.ROOT), script=str(script), pids=str(pids), log=str(log))
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "started", log.read_text() if log.exists() else ""
        server_pid, engine_pid = map(int, pids.read_text().split())
        assert _alive(server_pid) and _alive(engine_pid)
        os.kill(parent.pid, signal.SIGKILL)  # as a time-out would: no cleanup code runs in the parent
        left = _wait_gone([server_pid, engine_pid])
        assert not left, f"still running after the parent was killed: {left}"
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait()


def test_spawn_watchdog_ends_with_a_normal_stop(tmp_path):
    import subprocess
    import sys

    from phi3lab.serving.guard import spawn, stop_group

    process = spawn([sys.executable, "-c", "import time; time.sleep(600)"], stdout=subprocess.DEVNULL)
    assert _alive(process.pid) and process.watchdog.poll() is None
    stop_group(process.pid, grace=5)
    process.wait(timeout=10)
    assert process.watchdog.wait(timeout=10) == 0  # it saw the group end and left
