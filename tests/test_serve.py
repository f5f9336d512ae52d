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
