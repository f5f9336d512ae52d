"""Endpoint against hostile servers on 127.0.0.1: every request is bounded, every message is true, the key stays home.

Each server here is a raw TCP socket that misbehaves on purpose — trickles its answer a byte at a
time, streams for ever, sends 64 MB, speaks something other than HTTP, breaks off mid-body,
answers 204, redirects to another port, echoes the API key — so the client's limits are tested
against real sockets, not mocks.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time

import pytest

from phi3lab.safety.endpoint import (
    Endpoint,
    EndpointError,
    EndpointResponseError,
    EndpointUnavailableError,
    _retry_after,
    mask,
)

KEY = "sk-phi3lab-test-0123456789abcdef"
CONV = [[{"role": "user", "content": "Hi"}]]


def completion(text: str = "Hello.") -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


def http(status: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawServer:
    """A TCP server on 127.0.0.1 whose ``behave(conn, request_bytes)`` writes whatever it likes."""

    def __init__(self, behave):
        self.behave = behave
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(rest) < length:
                rest += conn.recv(65536)
            self.requests.append(head)
            self.behave(conn, head)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        self.stopped.set()
        self.sock.close()


@pytest.fixture
def raw():
    servers = []

    def make(behave):
        s = RawServer(behave)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


@contextlib.contextmanager
def bounded(seconds: float):
    """Fail (TimeoutError) if the block runs longer than ``seconds``: the call must not hang."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: the request is not bounded")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def endpoint(url, **kwargs):
    kwargs.setdefault("retries", 0)
    kwargs.setdefault("timeout", 2)
    return Endpoint(url, "m", **kwargs)


def trickle(conn, head):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(200):
        conn.sendall(b" ")
        time.sleep(0.5)


def endless(conn, head):
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    while True:
        conn.sendall(b'4\r\n{"a"\r\n')
        time.sleep(0.01)


def trickle_headers(conn, head):
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200:
        conn.sendall(bytes([byte]))
        time.sleep(0.5)


@pytest.mark.parametrize(
    "behave", [trickle, endless, trickle_headers], ids=["trickled-body", "endless", "trickled-head"]
)
def test_a_trickling_or_endless_answer_is_cut_at_the_deadline(raw, behave):
    s = raw(behave)
    target = endpoint(s.url, timeout=2, deadline=1.5)
    began = time.perf_counter()
    with bounded(20), pytest.raises(EndpointUnavailableError) as info:
        target.answer(CONV)
    took = time.perf_counter() - began
    assert took < 5, f"took {took:.1f} s"
    message = str(info.value)
    assert "did not answer in time" in message and "deadline=1.5 s" in message
    assert "raise timeout= / deadline=" in message  # the fix


def test_the_deadline_is_per_try_and_retries_are_bounded(raw):
    s = raw(trickle)
    target = endpoint(s.url, timeout=2, deadline=0.6, retries=2, backoff=0.01)
    began = time.perf_counter()
    with bounded(20), pytest.raises(EndpointUnavailableError, match="3 tries timed out"):
        target.answer(CONV)
    assert time.perf_counter() - began < 6
    assert len(s.requests) == 3


def huge_declared(conn, head):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n")
    conn.sendall(b"x" * 65536)


def huge_chunked(conn, head):
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    block = b"x" * 1048576
    for _ in range(64):
        conn.sendall(b"%x\r\n" % len(block) + block + b"\r\n")
    conn.sendall(b"0\r\n\r\n")


@pytest.mark.parametrize("behave", [huge_declared, huge_chunked], ids=["declared", "chunked"])
def test_a_64_mb_answer_is_refused_at_the_size_cap(raw, behave):
    s = raw(behave)
    with bounded(30), pytest.raises(EndpointResponseError) as info:
        endpoint(s.url, deadline=30).answer(CONV)
    message = str(info.value)
    assert (
        "too large" in message and "max_response_bytes=8,388,608" in message and "raise max_response_bytes=" in message
    )
    assert len(s.requests) == 1  # not retried


def test_a_smaller_cap_is_honoured(raw):
    s = raw(lambda conn, head: conn.sendall(http("200 OK", completion("x" * 5000))))
    with pytest.raises(EndpointResponseError, match="announced 5,0"):
        endpoint(s.url, max_response_bytes=2048).answer(CONV)
    assert endpoint(s.url).answer(CONV) == ["x" * 5000]


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "soon", "", "1e400"])
def test_an_unusable_retry_after_falls_back_to_back_off(raw, value):
    calls = []

    def behave(conn, head):
        calls.append(1)
        if len(calls) == 1:
            conn.sendall(http("429 Too Many Requests", b'{"error": "slow down"}', {"Retry-After": value}))
        else:
            conn.sendall(http("200 OK", completion()))

    s = raw(behave)
    began = time.perf_counter()
    assert endpoint(s.url, retries=1, backoff=0.01).answer(CONV) == ["Hello."]
    assert time.perf_counter() - began < 2


def test_retry_after_forms():
    assert _retry_after("2") == 2.0
    assert _retry_after("1000") == 30.0  # capped
    assert _retry_after("-5") is None and _retry_after("nan") is None and _retry_after("inf") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
    assert _retry_after("tomorrow") is None


def test_a_non_http_answer_is_named_not_called_down(raw):
    s = raw(lambda conn, head: conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n"))
    with pytest.raises(EndpointResponseError) as info:
        endpoint(s.url, retries=3).answer(CONV)
    message = str(info.value)
    assert "does not answer in HTTP" in message and "SSH-2.0" in message and "address and port" in message
    assert "down or unreachable" not in message
    assert len(s.requests) == 1  # not retried: it will not start speaking HTTP


def test_a_truncated_body_is_named_not_called_down(raw):
    s = raw(lambda conn, head: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + completion()[:20]))
    with pytest.raises(EndpointError) as info:
        endpoint(s.url, retries=1, backoff=0.01).answer(CONV)
    message = str(info.value)
    assert not isinstance(info.value, EndpointUnavailableError)
    assert "broke off after 20 bytes of 500 announced" in message and "kept failing" in message
    assert "down or unreachable" not in message and "Is the server running" not in message


def test_a_204_is_not_called_a_refusal(raw):
    s = raw(lambda conn, head: conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n"))
    with pytest.raises(EndpointResponseError) as info:
        endpoint(s.url).answer(CONV)
    message = str(info.value)
    assert "HTTP 204 No Content without a chat completion" in message and "refused" not in message


def keyed(monkeypatch, url, **kwargs):
    monkeypatch.setenv("PHI3LAB_TEST_KEY", KEY)
    return endpoint(url, api_key_env="PHI3LAB_TEST_KEY", **kwargs)


@pytest.mark.parametrize("call", ["check", "answer"])
def test_a_redirect_is_not_followed_and_the_key_stays_home(raw, monkeypatch, call):
    elsewhere = raw(lambda conn, head: conn.sendall(http("200 OK", b'{"data": [{"id": "m"}]}')))
    s = raw(
        lambda conn, head: conn.sendall(
            http("302 Found", b"", {"Location": f"http://127.0.0.1:{elsewhere.port}/v1/models"})
        )
    )
    target = keyed(monkeypatch, s.url)
    with pytest.raises(EndpointError) as info:
        getattr(target, call)(*([CONV] if call == "answer" else []))
    assert b"authorization: bearer" in s.requests[0].lower()  # sent to the base URL itself
    assert elsewhere.requests == []  # and nowhere else
    message = str(info.value)
    assert "redirects (HTTP 302)" in message and str(elsewhere.port) in message and "pass it as base_url" in message


def test_a_key_echoed_by_the_server_is_masked(raw, monkeypatch):
    echo = f'{{"error": "invalid key {KEY}; prefix {KEY[:12]}"}}'.encode()
    s = raw(lambda conn, head: conn.sendall(http("400 Bad Request", echo)))
    target = keyed(monkeypatch, s.url)
    with pytest.raises(EndpointError) as info:
        target.answer(CONV)
    assert KEY not in str(info.value) and KEY[:12] not in str(info.value) and "invalid key ***" in str(info.value)
    s401 = raw(lambda conn, head: conn.sendall(http("401 Unauthorized", echo)))
    with pytest.raises(EndpointError) as info:
        keyed(monkeypatch, s401.url).check()
    assert KEY[:12] not in str(info.value) and "check the API key in PHI3LAB_TEST_KEY" in str(info.value)
    assert KEY not in repr(target) and "PHI3LAB_TEST_KEY" in repr(target)


def test_a_key_echoed_in_a_retried_failure_is_masked(raw, monkeypatch):
    s = raw(lambda conn, head: conn.sendall(http("503 Service Unavailable", f"bad {KEY}".encode())))
    with pytest.raises(EndpointError) as info:
        keyed(monkeypatch, s.url, retries=1, backoff=0.01).answer(CONV)
    assert KEY not in str(info.value) and "HTTP 503 bad ***" in str(info.value)


def test_credentials_in_the_base_url_are_refused_without_showing_them():
    with pytest.raises(ValueError) as info:
        Endpoint("http://user:hunter2secret@127.0.0.1:8011/v1", "m")
    message = str(info.value)
    assert "hunter2secret" not in message and "user" not in message.split("carries")[0]
    assert "carries credentials" in message and "api_key_env=" in message


def test_mask_covers_whole_keys_and_long_pieces():
    assert mask(f"a {KEY} b", [KEY]) == "a *** b"
    assert mask(f"prefix {KEY[:10]}…", [KEY]) == "prefix ***…"
    assert mask("no secret here", [KEY]) == "no secret here"
    assert mask("short abc", ["abc"]) == "short ***"


def test_the_key_goes_as_a_bearer_header_only(raw, monkeypatch):
    s = raw(lambda conn, head: conn.sendall(http("200 OK", completion())))
    assert keyed(monkeypatch, s.url).answer(CONV) == ["Hello."]
    assert f"authorization: bearer {KEY}".encode() in s.requests[0].lower()
    plain = raw(lambda conn, head: conn.sendall(http("200 OK", completion())))
    endpoint(plain.url).answer(CONV)
    assert b"authorization" not in plain.requests[0].lower()


@pytest.mark.parametrize(
    "kwargs, error, says",
    [
        ({"temperature": float("nan")}, ValueError, ("temperature must be a finite number",)),
        ({"temperature": -1.0}, ValueError, ("temperature must be at least 0",)),
        ({"temperature": "hot"}, TypeError, ("temperature must be a number, got str",)),
        ({"top_p": 5.0}, ValueError, ("top_p must be at most 1",)),
        ({"top_p": 0.0}, ValueError, ("top_p must be greater than 0",)),
        ({"seed": "abc"}, TypeError, ("seed must be an integer, got str",)),
        ({"seed": 1.5}, TypeError, ("seed must be an integer", "seed=1")),
        ({"timeout": float("inf")}, ValueError, ("timeout must be a finite number",)),
        ({"timeout": 0}, ValueError, ("timeout must be greater than 0",)),
        ({"deadline": float("nan")}, ValueError, ("deadline must be a finite number",)),
        ({"max_response_bytes": 10}, ValueError, ("max_response_bytes must be at least 1024",)),
        ({"batch_size": 0}, ValueError, ("batch_size must be at least 1",)),
        ({"batch_size": -3}, ValueError, ("batch_size must be at least 1",)),
        ({"concurrency": True}, TypeError, ("concurrency must be an integer, got bool",)),
        ({"retries": 2.0}, TypeError, ("retries must be an integer", "retries=2")),
        ({"backoff": float("inf")}, ValueError, ("backoff must be a finite number",)),
        ({"extra_body": {"x": float("nan")}}, ValueError, ("extra_body must be plain JSON",)),
        ({"extra_body": {"stream": True}}, ValueError, ("extra_body may not set stream",)),
        ({"extra_body": "x"}, TypeError, ("extra_body must be a dict",)),
        ({"api_key_env": "sk-abc def"}, ValueError, ("NAME of an environment variable", "never pass the key")),
        ({"name": ""}, ValueError, ("name must be a non-empty string",)),
        ({"can_answer": "no"}, TypeError, ("can_answer must be True or False",)),
    ],
)
def test_bad_settings_are_refused_with_the_fix(kwargs, error, says):
    with pytest.raises(error) as info:
        Endpoint("http://127.0.0.1:9/v1", "m", **kwargs)
    for fragment in says:
        assert fragment in str(info.value)
    assert "sk-abc" not in str(info.value)


@pytest.mark.parametrize(
    "base_url, says",
    [
        ("127.0.0.1:8000", "http(s) URL"),
        ("ftp://127.0.0.1/v1", "http(s) URL"),
        ("http://127.0.0.1:99999/v1", "invalid port"),
        ("http://127.0.0.1:8011/v1?api-key=abc", "without '?…'"),
        ([], "empty list"),
    ],
)
def test_bad_base_urls_are_refused(base_url, says):
    with pytest.raises(ValueError, match=None) as info:
        Endpoint(base_url, "m")
    assert says in str(info.value)


@pytest.mark.parametrize("mode", ["CMYK", "F", "I;16", "P", "LA", "1"])
def test_any_pil_mode_goes_as_rgb_like_the_processor(raw, mode):
    from PIL import Image

    from phi3lab.prompts.images import to_rgb

    s = raw(lambda conn, head: conn.sendall(http("200 OK", completion())))
    picture = Image.new(mode, (6, 4))
    target = endpoint(s.url)
    assert target.answer([[{"role": "user", "content": [picture, "What is it?"]}]]) == ["Hello."]
    from phi3lab.safety.endpoint import wire_messages

    url = wire_messages([{"role": "user", "content": [picture]}])[0]["content"][0]["image_url"]["url"]
    import base64
    import io

    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.mode == "RGB" and sent.tobytes() == to_rgb(picture).tobytes()


@pytest.mark.parametrize(
    "conversations, error, says",
    [
        ("Hi", TypeError, "a list of conversations"),
        ([[{"role": "robot", "content": "Hi"}]], ValueError, "role 'robot'"),
        ([[{"role": "user", "content": None}]], TypeError, "message 0 content must be a string or a list"),
        ([[{"role": "user", "content": [42]}]], TypeError, "part 0 must be text, a PIL image"),
        ([[{"role": "user", "content": "a\ud800"}]], ValueError, "unpaired surrogate"),
        ([[]], ValueError, "conversation is empty"),
        ([[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]], TypeError, "without a usable URL"),
    ],
)
def test_bad_conversations_are_refused_before_sending(raw, conversations, error, says):
    s = raw(lambda conn, head: conn.sendall(http("200 OK", completion())))
    with pytest.raises(error) as info:
        endpoint(s.url).answer(conversations)
    assert says in str(info.value)
    assert s.requests == []
