"""Sweeps through a real vLLM server (the CPU build here) equal the in-process sweep, and survive its death.

The server is started once per test session from ``.venv-vllm`` (``python3 tasks.py serve
--setup-only`` sets it up; ``.ci/run`` does so in CI) with ``--enforce-eager`` for a quick start.
Without the engine venv these tests skip and say so.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from phi3lab.safety.endpoint import Endpoint, EndpointUnavailableError
from phi3lab.serving import vllm as serve

pytestmark = pytest.mark.engine


@pytest.fixture(scope="session")
def vllm(tmp_path_factory):
    if not serve.engine_installed():
        pytest.skip(
            f"the vLLM engine venv {serve.ENGINE_VENV} is not set up; run `{serve.SETUP_HINT}` "
            "(~3.4 GB, a few minutes) to run these tests"
        )
    server = serve.Server("tiny", log=tmp_path_factory.mktemp("vllm") / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def in_process(tmp_path_factory):
    import phi3lab
    from phi3lab.safety import sweep

    lab = phi3lab.load("tiny", verbose=False)
    return sweep(lab, out=tmp_path_factory.mktemp("inproc") / "results.jsonl", progress=False)


def _group_names(group: int) -> list[str]:
    """Names of the processes in a process group (Linux /proc)."""
    names = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == group:
            names.append(stat[stat.index("(") + 1 : stat.rindex(")")])
    return names


def _target(server, **kwargs):
    return Endpoint(server.url, serve.resolve_model("tiny"), name="phi3lab-tiny", **kwargs)


def _rows(results):
    return {(r["probe"], r["transform"]): (r["response"], r["refused"], r["reason"]) for r in results}


def test_server_serves_the_tiny_model(vllm):
    assert f"starting vLLM on {vllm.url}" in vllm.log.read_text()  # `python3 tasks.py serve` prints the URL
    assert f"processes: {vllm.processes} (" in vllm.log.read_text()  # and the layout, with its reason
    workers = [name for name in _group_names(vllm.process.pid) if "Worker" in name]
    assert bool(workers) == (vllm.processes == "vllm")  # "one": the model runner lives in the engine core
    assert _target(vllm).check() == [serve.resolve_model("tiny")]
    assert _target(vllm, max_new_tokens=16).answer([[{"role": "user", "content": "What is 2 plus 3?"}]]) == [
        "2 plus 3 is 5."
    ]


def test_sweep_through_vllm_equals_in_process(vllm, in_process, tmp_path):
    from phi3lab.safety import sweep

    through = sweep(_target(vllm), out=tmp_path / "vllm.jsonl", progress=False)
    assert len(through) == len(in_process) == 310
    expected, got = _rows(in_process), _rows(through)
    assert got.keys() == expected.keys()
    different = [k for k in expected if got[k] != expected[k]]
    assert not different, (
        f"{len(different)} rows differ, e.g. {different[0]}: {expected[different[0]]} vs {got[different[0]]}"
    )


def test_server_killed_mid_sweep_keeps_rows_and_resumes(vllm, in_process, tmp_path):
    from phi3lab.safety import sweep

    out = tmp_path / "killed.jsonl"

    def kill_when_rows_written():
        deadline = time.time() + 120
        while time.time() < deadline:
            if out.exists() and len(out.read_text().splitlines()) >= 64:
                vllm.kill()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_rows_written, daemon=True)
    killer.start()
    try:
        with pytest.raises(EndpointUnavailableError, match="down or unreachable"):
            sweep(_target(vllm, concurrency=4, batch_size=16, retries=2, backoff=0.2), out=out, progress=False)
    finally:
        killer.join()
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert 64 <= len(kept) < 310
    expected = _rows(in_process)
    assert all(expected[(r["probe"], r["transform"])] == (r["response"], r["refused"], r["reason"]) for r in kept)

    vllm.start()  # same port
    resumed = sweep(_target(vllm, concurrency=4, batch_size=16), out=out, progress=False)
    assert _rows(resumed) == expected  # nothing lost, nothing twice
    assert len(out.read_text().splitlines()) == 310
