"""A battery of bad, odd and hostile inputs against the safety layer, endpoints and serving.

Every case asserts the exception type, that the message names the problem and the fix, that the call
came back within a time bound (no input hangs: trickling, endless and 64 MB answers from real sockets
on 127.0.0.1 included), that no API key appears in the message, and that no file given as ``out`` was
changed.  The cases are the second table of ``tests/BAD_INPUTS.md``; after adding one here, rewrite the
table with ``.venv/bin/python tests/test_bad_inputs.py`` (a test checks they agree).

A case's ``make(env)`` returns ``(function, args, kwargs)``; ``env`` holds the embedded text model,
hostile servers (:class:`RawServer`, from ``tests/test_endpoint_hostile.py``), files and a key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from phi3lab.safety import (
    ProbeSetError,
    ResultsFileError,
    first_token_scores,
    load_probes,
    read_results,
    redact,
    refusal,
    report,
    sweep,
    wilson,
)
from phi3lab.safety.direction import evaluate_direction, find_direction, plot_projection
from phi3lab.safety.endpoint import Endpoint, EndpointError, EndpointResponseError, EndpointUnavailableError
from phi3lab.safety.image_probes import image_borne, render_request
from phi3lab.safety.results import Results
from phi3lab.serving import vllm as serve

SECTION = "Safety, endpoints and serving"
SOURCE = "tests/test_bad_inputs_safety.py"
LIMIT_S = 30  # per case; the bounded endpoint cases take ~2 s
KEY = "sk-phi3lab-battery-7f3a9c2e51d04b8a"
ALSO = (
    "Also tested: `tests/test_endpoint_hostile.py` (the deadline per try and the bounded retries, the size cap",
    "announced and streamed, every unusable `Retry-After`, redirects not followed by `check()` or `answer()` with",
    "no request reaching the other port, keys masked whole and in pieces, CMYK/F/16-bit/palette pictures sent as",
    "the processor's RGB); `tests/test_safety_sweep.py` (notes, UTF-16, JSON arrays and objects, CSV and binary",
    "files refused and left byte for byte; a torn last row after `kill -9` still cut and resumed);",
    "`tests/test_safety_report.py` (bad rows named, old two-way files reported with a note); `tests/test_serve.py`",
    "(the key reaches vLLM only through its environment and is never printed; a stand-in server and its child die",
    "within seconds of their parent's `SIGKILL`); `tests/test_cli.py` (`probe --report` on bad rows and non-results",
    "files; help on every option; the vision warning).",
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: what is called, the error it must raise, and what the message must say."""

    id: str
    area: str
    shown: str
    make: Callable
    error: type[BaseException]
    says: tuple[str, ...]


# --- what the cases need ---------------------------------------------------------------------------


def _hostile():
    from test_endpoint_hostile import RawServer, completion, endless, http, huge_chunked, trickle

    return RawServer, completion, endless, http, huge_chunked, trickle


class Env:
    """The embedded model, hostile servers, files; everything made once per session and cleaned up."""

    def __init__(self, tiny, tmp: Path):
        self.tiny, self.tmp = tiny, tmp
        self.servers: list = []
        self.files: dict[Path, bytes] = {}  # out= files that must be left exactly as they were
        os.environ["PHI3LAB_BATTERY_KEY"] = KEY

    def server(self, behave):
        raw_server = _hostile()[0](behave)
        self.servers.append(raw_server)
        return raw_server

    def url(self, name: str) -> str:
        RawServer, completion, endless, http, huge_chunked, trickle = _hostile()
        behaviours = {
            "trickle": trickle,
            "endless": endless,
            "huge": huge_chunked,
            "ssh": lambda conn, head: conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n"),
            "truncated": lambda conn, head: conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + completion()[:20]
            ),
            "204": lambda conn, head: conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n"),
            "302": lambda conn, head: conn.sendall(
                http("302 Found", b"", {"Location": "http://127.0.0.1:9/v1/models"})
            ),
            "echo-400": lambda conn, head: conn.sendall(
                http("400 Bad Request", f'{{"error": "bad key {KEY}"}}'.encode())
            ),
            "401": lambda conn, head: conn.sendall(http("401 Unauthorized", b'{"error": "no"}')),
            "429-nan": lambda conn, head: conn.sendall(http("429 Too Many Requests", b"{}", {"Retry-After": "nan"})),
            "not-json": lambda conn, head: conn.sendall(http("200 OK", b"<html>hello</html>")),
            "no-models": lambda conn, head: conn.sendall(http("200 OK", b'{"data": [{"id": "other"}]}')),
        }
        if not hasattr(self, "_urls"):
            self._urls = {}
        if name not in self._urls:
            self._urls[name] = self.server(behaviours[name]).url
        return self._urls[name]

    def endpoint(self, name: str, **kwargs) -> Endpoint:
        kwargs.setdefault("retries", 0)
        kwargs.setdefault("timeout", 2)
        kwargs.setdefault("deadline", 1.5)
        return Endpoint(self.url(name), "m", **kwargs)

    def keyed(self, name: str, **kwargs) -> Endpoint:
        return self.endpoint(name, api_key_env="PHI3LAB_BATTERY_KEY", **kwargs)

    def down(self) -> str:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return f"http://127.0.0.1:{s.getsockname()[1]}/v1"

    def out(self, name: str, content: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content)
        self.files[path] = content
        return path

    def results_with(self, **change) -> Results:
        row = {
            "key": "k1",
            "probe": "p",
            "probe_set": "tiny",
            "category": "weapons",
            "kind": "harmful",
            "transform": "none",
            "model": "m",
            "settings": {},
            "response": "I'm sorry.",
            "refused": True,
            "verdict": "declined",
        }
        return Results([row, {**row, "key": "k2", **change}])

    def results_file(self) -> Path:
        rows = self.results_with().rows
        path = self.tmp / "good.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        lines = path.read_text().splitlines(keepends=True)
        return self.out("foreign-line.jsonl", (lines[0] + "a note typed here\n" + lines[1]).encode())

    @property
    def harmful(self):
        return [p.prompt for p in load_probes("tiny-train").select(kind="harmful")][:8]

    @property
    def harmless(self):
        return [p.prompt for p in load_probes("tiny-train").select(kind="benign")][:8]

    def damaged_manifest(self) -> Callable:
        def load():
            from phi3lab.paths import data_dir

            copy = self.tmp / "data-torn"
            if not copy.exists():
                shutil.copytree(data_dir() / "probes", copy / "probes")
                manifest = copy / "probes" / "manifest.json"
                manifest.write_text(manifest.read_text()[:300])
            before = os.environ.get("PHI3LAB_DATA")
            os.environ["PHI3LAB_DATA"] = str(copy)
            try:
                return load_probes("tiny")
            finally:
                if before is None:
                    os.environ.pop("PHI3LAB_DATA")
                else:
                    os.environ["PHI3LAB_DATA"] = before

        return load

    def close(self):
        for s in self.servers:
            s.stop()
        os.environ.pop("PHI3LAB_BATTERY_KEY", None)


def ep(**kwargs):
    return lambda env: (Endpoint, ("http://127.0.0.1:9/v1", "m"), kwargs)


def call(method: str, name: str, *args, keyed: bool = False, **kwargs):
    def make(env):
        target = (env.keyed if keyed else env.endpoint)(name, **kwargs)
        return getattr(target, method), args, {}

    return make


CONV = [[{"role": "user", "content": "Hi"}]]


def conv_case(id, shown, conversations, error, says):
    def make(env):
        return env.endpoint("not-json").answer, (conversations,), {}

    return Case(id, "endpoint", shown, make, error, says)


def sweep_into(name: str, content: bytes):
    def make(env):
        return sweep, (env.tiny, "tiny", []), {"out": env.out(name, content), "progress": False}

    return make


CASES: list[Case] = [
    # --- Endpoint settings --------------------------------------------------------------------
    Case(
        "ep-temperature-nan",
        "endpoint",
        "Endpoint(url, m, temperature=float('nan'))",
        ep(temperature=float("nan")),
        ValueError,
        ("temperature must be a finite number",),
    ),
    Case(
        "ep-temperature-str",
        "endpoint",
        "Endpoint(url, m, temperature='hot')",
        ep(temperature="hot"),
        TypeError,
        ("temperature must be a number, got str",),
    ),
    Case(
        "ep-temperature-negative",
        "endpoint",
        "Endpoint(url, m, temperature=-1)",
        ep(temperature=-1),
        ValueError,
        ("temperature must be at least 0",),
    ),
    Case(
        "ep-top-p-5", "endpoint", "Endpoint(url, m, top_p=5.0)", ep(top_p=5.0), ValueError, ("top_p must be at most 1",)
    ),
    Case(
        "ep-top-p-0",
        "endpoint",
        "Endpoint(url, m, top_p=0)",
        ep(top_p=0),
        ValueError,
        ("top_p must be greater than 0",),
    ),
    Case(
        "ep-seed-str",
        "endpoint",
        "Endpoint(url, m, seed='abc')",
        ep(seed="abc"),
        TypeError,
        ("seed must be an integer, got str",),
    ),
    Case(
        "ep-seed-float",
        "endpoint",
        "Endpoint(url, m, seed=1.5)",
        ep(seed=1.5),
        TypeError,
        ("seed must be an integer", "seed=1"),
    ),
    Case(
        "ep-timeout-inf",
        "endpoint",
        "Endpoint(url, m, timeout=float('inf'))",
        ep(timeout=float("inf")),
        ValueError,
        ("timeout must be a finite number",),
    ),
    Case(
        "ep-timeout-zero",
        "endpoint",
        "Endpoint(url, m, timeout=0)",
        ep(timeout=0),
        ValueError,
        ("timeout must be greater than 0",),
    ),
    Case(
        "ep-deadline-nan",
        "endpoint",
        "Endpoint(url, m, deadline=nan)",
        ep(deadline=float("nan")),
        ValueError,
        ("deadline must be a finite number",),
    ),
    Case(
        "ep-max-bytes-tiny",
        "endpoint",
        "Endpoint(url, m, max_response_bytes=10)",
        ep(max_response_bytes=10),
        ValueError,
        ("max_response_bytes must be at least 1024",),
    ),
    Case(
        "ep-batch-size-0",
        "endpoint",
        "Endpoint(url, m, batch_size=0)",
        ep(batch_size=0),
        ValueError,
        ("batch_size must be at least 1",),
    ),
    Case(
        "ep-concurrency-bool",
        "endpoint",
        "Endpoint(url, m, concurrency=True)",
        ep(concurrency=True),
        TypeError,
        ("concurrency must be an integer, got bool",),
    ),
    Case(
        "ep-retries-float",
        "endpoint",
        "Endpoint(url, m, retries=2.0)",
        ep(retries=2.0),
        TypeError,
        ("retries must be an integer", "retries=2"),
    ),
    Case(
        "ep-backoff-inf",
        "endpoint",
        "Endpoint(url, m, backoff=inf)",
        ep(backoff=float("inf")),
        ValueError,
        ("backoff must be a finite number",),
    ),
    Case(
        "ep-extra-body-nan",
        "endpoint",
        "Endpoint(url, m, extra_body={'x': nan})",
        ep(extra_body={"x": float("nan")}),
        ValueError,
        ("extra_body must be plain JSON",),
    ),
    Case(
        "ep-extra-body-stream",
        "endpoint",
        "Endpoint(url, m, extra_body={'stream': True})",
        ep(extra_body={"stream": True}),
        ValueError,
        ("extra_body may not set stream", "the endpoint sets those"),
    ),
    Case(
        "ep-key-as-env-name",
        "endpoint",
        "Endpoint(url, m, api_key_env='sk-… the key itself')",
        ep(api_key_env="sk-abc def"),
        ValueError,
        ("NAME of an environment variable", "never pass the key itself"),
    ),
    Case(
        "ep-key-env-unset",
        "endpoint",
        "Endpoint(url, m, api_key_env='PHI3LAB_NO_SUCH_KEY')",
        ep(api_key_env="PHI3LAB_NO_SUCH_KEY"),
        ValueError,
        ("PHI3LAB_NO_SUCH_KEY is not set", "export"),
    ),
    Case(
        "ep-url-credentials",
        "endpoint",
        "Endpoint('http://user:hunter2@127.0.0.1:8011/v1', m)",
        lambda env: (Endpoint, ("http://user:hunter2@127.0.0.1:8011/v1", "m"), {}),
        ValueError,
        ("carries credentials", "api_key_env="),
    ),
    Case(
        "ep-url-no-scheme",
        "endpoint",
        "Endpoint('127.0.0.1:8000', m)",
        lambda env: (Endpoint, ("127.0.0.1:8000", "m"), {}),
        ValueError,
        ("http(s) URL", "http://127.0.0.1:8011/v1"),
    ),
    Case(
        "ep-url-query",
        "endpoint",
        "Endpoint('http://…/v1?api-key=abc', m)",
        lambda env: (Endpoint, ("http://127.0.0.1:8011/v1?api-key=abc", "m"), {}),
        ValueError,
        ("without '?…'", "api_key_env"),
    ),
    Case(
        "ep-url-port",
        "endpoint",
        "Endpoint('http://127.0.0.1:99999/v1', m)",
        lambda env: (Endpoint, ("http://127.0.0.1:99999/v1", "m"), {}),
        ValueError,
        ("invalid port", "1 to 65535"),
    ),
    Case(
        "ep-url-empty-list",
        "endpoint",
        "Endpoint([], m)",
        lambda env: (Endpoint, ([], "m"), {}),
        ValueError,
        ("empty list",),
    ),
    Case(
        "ep-url-int",
        "endpoint",
        "Endpoint(8011, m)",
        lambda env: (Endpoint, (8011, "m"), {}),
        TypeError,
        ("base_url must be a URL string",),
    ),
    Case(
        "ep-model-empty",
        "endpoint",
        "Endpoint(url, '')",
        lambda env: (Endpoint, ("http://127.0.0.1:9/v1", ""), {}),
        ValueError,
        ("model must be the model name",),
    ),
    # --- Endpoint against hostile servers ------------------------------------------------------
    Case(
        "ep-trickle",
        "endpoint",
        "answer() from a server that sends a byte every 0.5 s (timeout=2, deadline=1.5)",
        call("answer", "trickle", CONV),
        EndpointUnavailableError,
        ("did not answer in time", "deadline=1.5 s", "raise timeout= / deadline="),
    ),
    Case(
        "ep-endless",
        "endpoint",
        "answer() from a server that streams chunks for ever",
        call("answer", "endless", CONV),
        EndpointUnavailableError,
        ("did not answer in time", "deadline="),
    ),
    Case(
        "ep-64mb",
        "endpoint",
        "answer() from a server that sends 64 MB",
        call("answer", "huge", CONV, deadline=30),
        EndpointResponseError,
        ("too large", "max_response_bytes=8,388,608", "raise max_response_bytes="),
    ),
    Case(
        "ep-not-http",
        "endpoint",
        "answer() from an SSH port",
        call("answer", "ssh", CONV),
        EndpointResponseError,
        ("does not answer in HTTP", "SSH-2.0", "address and port"),
    ),
    Case(
        "ep-truncated",
        "endpoint",
        "answer() from a server that breaks off its body",
        call("answer", "truncated", CONV),
        EndpointError,
        ("broke off after 20 bytes of 500 announced", "kept failing", "its log should say why"),
    ),
    Case(
        "ep-204",
        "endpoint",
        "answer() answered HTTP 204",
        call("answer", "204", CONV),
        EndpointResponseError,
        ("HTTP 204 No Content without a chat completion", "API root"),
    ),
    Case(
        "ep-not-json",
        "endpoint",
        "answer() answered HTML",
        call("answer", "not-json", CONV),
        EndpointResponseError,
        ("not JSON", "API root of an OpenAI-compatible server"),
    ),
    Case(
        "ep-429-retry-after-nan",
        "endpoint",
        "answer() always 429 with Retry-After: nan (retries=1)",
        call("answer", "429-nan", CONV, retries=1, backoff=0.01),
        EndpointError,
        ("kept failing: 2 tries", "HTTP 429"),
    ),
    Case(
        "ep-redirect-check",
        "endpoint",
        "check() redirected (302) to another port, with a key",
        call("check", "302", keyed=True),
        EndpointError,
        ("redirects (HTTP 302)", "127.0.0.1:9", "pass it as base_url"),
    ),
    Case(
        "ep-redirect-answer",
        "endpoint",
        "answer() redirected (302), with a key",
        call("answer", "302", CONV, keyed=True),
        EndpointError,
        ("redirects (HTTP 302)", "key stay at base_url's origin"),
    ),
    Case(
        "ep-key-echoed",
        "endpoint",
        "answer() to a server that echoes the key in its 400",
        call("answer", "echo-400", CONV, keyed=True),
        EndpointError,
        ("HTTP 400", "bad key ***"),
    ),
    Case(
        "ep-401",
        "endpoint",
        "check() answered 401 without a key",
        call("check", "401"),
        EndpointError,
        ("HTTP 401", "the server wants an API key", "api_key_env="),
    ),
    Case(
        "ep-model-not-served",
        "endpoint",
        "check() of a model the server does not serve",
        call("check", "no-models"),
        EndpointError,
        ("serves ['other'], not 'm'", "pass model="),
    ),
    Case(
        "ep-down",
        "endpoint",
        "answer() with nothing listening",
        lambda env: (Endpoint(env.down(), "m", retries=0).answer, (CONV,), {}),
        EndpointUnavailableError,
        ("down or unreachable", "Is the server running?", "tasks.py serve"),
    ),
    conv_case("ep-conv-str", "answer('Hi')", "Hi", TypeError, ("a list of conversations",)),
    conv_case(
        "ep-conv-role",
        "answer([[{'role': 'robot', …}]])",
        [[{"role": "robot", "content": "x"}]],
        ValueError,
        ("role 'robot'", "the roles are system, user, assistant"),
    ),
    conv_case(
        "ep-conv-content-none",
        "answer([[{'role': 'user', 'content': None}]])",
        [[{"role": "user", "content": None}]],
        TypeError,
        ("message 0 content must be a string or a list",),
    ),
    conv_case(
        "ep-conv-surrogate",
        "answer([[… 'a\\ud800']])",
        [[{"role": "user", "content": "a\ud800"}]],
        ValueError,
        ("unpaired surrogate",),
    ),
    conv_case("ep-conv-empty", "answer([[]])", [[]], ValueError, ("conversation is empty",)),
    conv_case(
        "ep-conv-bad-part",
        "answer([[… content=[42]]])",
        [[{"role": "user", "content": [42]}]],
        TypeError,
        ("part 0 must be text, a PIL image or an image_url part",),
    ),
    # --- results files and sweeps ----------------------------------------------------------------
    Case(
        "sweep-notes",
        "results",
        "sweep(lab, out='notes.txt') on notes with no final newline",
        sweep_into("notes.txt", b"my notes\nthe last line has no newline"),
        ResultsFileError,
        ("is not a phi3lab results file", "left as it is", "another out= path"),
    ),
    Case(
        "sweep-utf16",
        "results",
        "sweep(lab, out=a UTF-16 file)",
        sweep_into("u16.txt", "notes\n".encode("utf-16")),
        ResultsFileError,
        ("not UTF-8 text", "left as it is"),
    ),
    Case(
        "sweep-json-arrays",
        "results",
        "sweep(lab, out=a file of JSON arrays)",
        sweep_into("arrays.jsonl", b"[1, 2]\n[3, 4]\n"),
        ResultsFileError,
        ("a JSON list, not an object", "another out= path"),
    ),
    Case(
        "sweep-foreign-line",
        "results",
        "sweep(lab, out=results with a typed note in it)",
        lambda env: (sweep, (env.tiny, "tiny", []), {"out": env.results_file(), "progress": False}),
        ResultsFileError,
        ("has lines that are not results rows", "line 2", "remove those lines"),
    ),
    Case(
        "sweep-out-folder",
        "results",
        "sweep(lab, out=a folder)",
        lambda env: (sweep, (env.tiny, "tiny", []), {"out": env.tmp, "progress": False}),
        ResultsFileError,
        ("is a folder", "results.jsonl"),
    ),
    Case(
        "sweep-out-none",
        "results",
        "sweep(lab, out=None)",
        lambda env: (sweep, (env.tiny, "tiny", []), {"out": None}),
        TypeError,
        ("out must be the path",),
    ),
    Case(
        "sweep-progress-str",
        "results",
        "sweep(lab, out=…, progress='no')",
        lambda env: (sweep, (env.tiny, "tiny", []), {"out": env.tmp / "x.jsonl", "progress": "no"}),
        TypeError,
        ("progress must be True or False",),
    ),
    Case(
        "read-results-notes",
        "results",
        "read_results('notes.txt')",
        lambda env: (read_results, (env.out("read-notes.txt", b"my notes"),), {}),
        ResultsFileError,
        ("is not a phi3lab results file", "phi3lab probe --out"),
    ),
    Case(
        "read-results-missing",
        "results",
        "read_results('missing.jsonl')",
        lambda env: (read_results, (env.tmp / "missing.jsonl",), {}),
        ResultsFileError,
        ("no results file", "run a sweep first"),
    ),
    Case(
        "read-results-int",
        "results",
        "read_results(42)",
        lambda env: (read_results, (42,), {}),
        TypeError,
        ("takes a file path",),
    ),
    # --- reports ---------------------------------------------------------------------------------
    Case(
        "report-neutral",
        "report",
        "report(Results(rows with kind 'neutral'))",
        lambda env: (report, (env.results_with(kind="neutral"),), {}),
        ResultsFileError,
        ("row 1 is not a results row", "kind 'neutral' is not 'harmful' or 'benign'", "read_results(path)"),
    ),
    Case(
        "report-refused-no",
        "report",
        "report(Results(rows with refused 'no'))",
        lambda env: (report, (env.results_with(refused="no"),), {}),
        ResultsFileError,
        ("refused is 'no', not true or false",),
    ),
    Case(
        "report-verdict-unknown",
        "report",
        "report(Results(rows with verdict 'maybe'))",
        lambda env: (report, (env.results_with(verdict="maybe"),), {}),
        ResultsFileError,
        ("verdict 'maybe' is not one of declined, off-topic, complied",),
    ),
    Case(
        "report-list",
        "report",
        "report([{...}])",
        lambda env: (report, ([{"key": "x"}],), {}),
        TypeError,
        ("Results (what sweep returns) or the path",),
    ),
    Case(
        "report-failures-kind",
        "report",
        "report(r).failures(kind='neutral')",
        lambda env: (report(env.results_with()).failures, (), {"kind": "neutral"}),
        ValueError,
        ("kind must be 'harmful' or 'benign'",),
    ),
    Case(
        "report-failures-negative",
        "report",
        "report(r).failures(-1)",
        lambda env: (report(env.results_with()).failures, (-1,), {}),
        ValueError,
        ("n must be a whole number",),
    ),
    # --- the refusal direction ---------------------------------------------------------------------
    Case(
        "dir-same-sets",
        "direction",
        "find_direction(lab, X, X)",
        lambda env: (find_direction, (env.tiny, env.harmful, env.harmful), {}),
        ValueError,
        ("the same prompts", "pass harmful requests and harmless ones"),
    ),
    Case(
        "dir-max-layer-0",
        "direction",
        "find_direction(..., max_layer_fraction=0)",
        lambda env: (find_direction, (env.tiny, env.harmful, env.harmless), {"max_layer_fraction": 0}),
        ValueError,
        ("max_layer_fraction must be greater than 0",),
    ),
    Case(
        "dir-max-layer-small",
        "direction",
        "find_direction(..., max_layer_fraction=0.1) on 4 layers",
        lambda env: (find_direction, (env.tiny, env.harmful, env.harmless), {"max_layer_fraction": 0.1}),
        ValueError,
        ("leaves no layer", "at least 1/4 = 0.250"),
    ),
    Case(
        "dir-val-0",
        "direction",
        "find_direction(..., val_fraction=0)",
        lambda env: (find_direction, (env.tiny, env.harmful, env.harmless), {"val_fraction": 0}),
        ValueError,
        ("val_fraction must be greater than 0",),
    ),
    Case(
        "dir-kl-nan",
        "direction",
        "find_direction(..., kl_limit=nan)",
        lambda env: (find_direction, (env.tiny, env.harmful, env.harmless), {"kl_limit": float("nan")}),
        ValueError,
        ("kl_limit must be a finite number",),
    ),
    Case(
        "dir-string",
        "direction",
        "find_direction(lab, 'How do I …?', X)",
        lambda env: (find_direction, (env.tiny, "How do I make a bomb?", env.harmless), {}),
        TypeError,
        ("harmful must be a list of prompts",),
    ),
    Case(
        "dir-not-a-lab",
        "direction",
        "find_direction('tiny', X, Y)",
        lambda env: (find_direction, ("tiny", env.harmful, env.harmless), {}),
        TypeError,
        ("takes a loaded Lab", "phi3lab.load"),
    ),
    Case(
        "dir-eval-not-direction",
        "direction",
        "evaluate_direction(lab, 'direction', X, Y)",
        lambda env: (evaluate_direction, (env.tiny, "direction", env.harmful, env.harmless), {}),
        TypeError,
        ("must be a RefusalDirection", "what find_direction returns"),
    ),
    # --- image-borne probes ------------------------------------------------------------------------
    Case(
        "img-kinds-evil",
        "image probes",
        "image_borne(target, kinds=['evil'])",
        lambda env: (image_borne, (env.endpoint("not-json"), "tiny"), {"kinds": ["evil"]}),
        ValueError,
        ("kinds must name 'harmful' and/or 'benign'", "kinds=('harmful',)"),
    ),
    Case(
        "img-words",
        "image probes",
        "image_borne(target, words='all')",
        lambda env: (image_borne, (env.endpoint("not-json"), "tiny"), {"words": "all"}),
        ValueError,
        ("words must be 'request' or 'keywords'",),
    ),
    Case(
        "render-width-0",
        "image probes",
        "render_request('pick lock', width=0)",
        lambda env: (render_request, ("pick lock",), {"width": 0}),
        ValueError,
        ("width must be at least 64",),
    ),
    Case(
        "render-margin",
        "image probes",
        "render_request('pick lock', margin=300)",
        lambda env: (render_request, ("pick lock",), {"margin": 300}),
        ValueError,
        ("leaves no room", "wider picture"),
    ),
    Case(
        "render-empty",
        "image probes",
        "render_request('')",
        lambda env: (render_request, ("",), {}),
        ValueError,
        ("text is empty", "render_request('pick lock')"),
    ),
    # --- the detector, probe sets, serving ---------------------------------------------------------
    Case(
        "refusal-none",
        "refusal",
        "refusal(None)",
        lambda env: (refusal, (None,), {}),
        TypeError,
        ("response must be a string",),
    ),
    Case(
        "refusal-request-list",
        "refusal",
        "refusal('ok', request=['How?'])",
        lambda env: (refusal, ("ok",), {"request": ["How?"]}),
        TypeError,
        ("request must be a string or None",),
    ),
    Case(
        "probes-unknown",
        "probes",
        "load_probes('nope')",
        lambda env: (load_probes, ("nope",), {}),
        ProbeSetError,
        ("unknown probe set 'nope'", "known sets"),
    ),
    Case(
        "probes-torn-manifest",
        "probes",
        "load_probes('tiny') with a torn manifest.json",
        lambda env: (env.damaged_manifest(), (), {}),
        ProbeSetError,
        ("is damaged (not JSON", "git checkout -- data/probes/manifest.json"),
    ),
    Case(
        "serve-layout",
        "serving",
        "Server('tiny', processes='two')",
        lambda env: (serve.Server, ("tiny",), {"processes": "two"}),
        ValueError,
        ("processes must be one of",),
    ),
    Case(
        "serve-empty-key",
        "serving",
        "Server('tiny', api_key='')",
        lambda env: (serve.Server, ("tiny",), {"api_key": ""}),
        ValueError,
        ("api_key must be a non-empty string",),
    ),
    # --- more of the same kind: counts, lists and ports ---------------------------------------------
    Case(
        "wilson-k-over-n",
        "report",
        "wilson(5, 3)",
        lambda env: (wilson, (5, 3), {}),
        ValueError,
        ("k=5 successes cannot exceed n=3 trials",),
    ),
    Case(
        "wilson-negative",
        "report",
        "wilson(-1, 3)",
        lambda env: (wilson, (-1, 3), {}),
        ValueError,
        ("k must be a count",),
    ),
    Case(
        "redact-words",
        "report",
        "redact(text, words=-1)",
        lambda env: (redact, ("a b c",), {"words": -1}),
        ValueError,
        ("words must be how many words to keep",),
    ),
    Case(
        "first-token-string",
        "refusal",
        "first_token_scores(lab, 'How do I …?')",
        lambda env: (first_token_scores, (env.tiny, "How do I make a bomb?"), {}),
        TypeError,
        ("must be a list of conversations", "['How do I …?']"),
    ),
    Case(
        "dir-plot-lengths",
        "direction",
        "plot_projection([1, 2, 3], [True])",
        lambda env: (plot_projection, ([1.0, 2.0, 3.0], [True]), {}),
        ValueError,
        ("one per prompt", "got 3, 1 and 3"),
    ),
    Case(
        "serve-port",
        "serving",
        "Server('tiny', port=70000)",
        lambda env: (serve.Server, ("tiny",), {"port": 70000}),
        ValueError,
        ("port must be a TCP port from 1 to 65535",),
    ),
]


@pytest.fixture(scope="module")
def env(tiny, tmp_path_factory):
    made = Env(tiny, tmp_path_factory.mktemp("bad-safety"))
    yield made
    made.close()


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(env, case):
    from test_bad_inputs import bounded

    function, args, kwargs = case.make(env)
    with bounded(LIMIT_S), pytest.raises(case.error) as info:
        function(*args, **kwargs)
    message = str(info.value)
    for fragment in case.says:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert KEY not in message and KEY[:12] not in message, "the API key leaked into the message"
    assert "Traceback" not in message
    for path, content in env.files.items():
        assert path.read_bytes() == content, f"{path.name} was changed"
