"""An OpenAI-compatible chat server as a sweep target: vLLM, ``transformers serve``, a hosted endpoint.

:class:`Endpoint` has the three members of :class:`phi3lab.safety.targets.Target` — ``name``,
``settings`` and ``answer(conversations)`` — so ``safety.sweep(Endpoint(...), ...)`` runs a sweep
there unchanged, resumable as any other::

    from phi3lab.safety.endpoint import Endpoint
    target = Endpoint("http://127.0.0.1:8011/v1", model="data/models/phi3lab-tiny")   # python3 tasks.py serve
    keyed = Endpoint("http://127.0.0.1:8011/v1", model="data/models/phi3lab-tiny",
                     api_key_env="PHI3LAB_API_KEY")       # python3 tasks.py serve --api-key … (or the variable)
    hosted = Endpoint("https://<name>.models.ai.azure.com/v1", model="Phi-3-mini-4k-instruct",
                      api_key_env="AZURE_AI_KEY")
    fleet = Endpoint(["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"], model="microsoft/Phi-3-mini-4k-instruct")

Each ``answer`` call sends its conversations as ``POST {base_url}/chat/completions`` requests,
``concurrency`` of them in flight, spread round-robin over the base URLs, over HTTP/1.1 connections
kept alive between requests (one TCP — and for ``https`` one TLS — set-up per worker, not per
request; :meth:`Endpoint.close` closes them).

**Every request is bounded.**  ``timeout`` is the longest wait for the next byte (or for the
connection); ``deadline`` is the most one try may take from connecting to the last byte of the answer,
however the server trickles it (the connection is cut when it passes); ``max_response_bytes`` is the
largest answer read (a longer one is refused after that many bytes, not read to the end).  A try that
gets a 429 or 5xx, times out, breaks off or cannot connect is retried ``retries`` times with
exponential back-off (``Retry-After`` honoured when it is a sane number of seconds or an HTTP date,
capped at 30 s), on the next base URL; so one conversation takes at most
``(retries + 1) × deadline`` plus the waits between tries.  When the retries run out the call raises
:class:`EndpointUnavailableError` (the server is down, or never answered in time) or
:class:`EndpointError` (it kept failing), and an answer that is not a chat completion — not JSON,
not HTTP at all, an empty 204, too large — raises :class:`EndpointResponseError` at once, naming what
was wrong.  Answers already received are kept in memory, so running the same sweep again with the same
target after a failure re-asks only what was in flight.

**The API key stays where it belongs.**  It is read from the environment variable ``api_key_env``
names and sent as ``Authorization: Bearer …`` only to the base URLs given: redirects are never
followed (a 3xx is an error that names where it pointed), credentials written into a base URL
(``http://user:pass@…``) are refused, and every message built from a server's answer has the key
masked (``***``), so it appears in no error, ``repr`` or log line.

Message ``content`` is a string, or a list of parts: ``{"type": "text", "text": ...}``, a PIL image
(or ``{"type": "image", "image": <PIL image>}``), or an OpenAI ``image_url`` part as it is; images are
converted to 8-bit RGB as the Phi-3-vision processor does (:func:`phi3lab.prompts.images.to_rgb`:
CMYK, palette, 16-bit and float pictures included) and sent as base64 PNG ``data:`` URLs.

Greedy decoding (``temperature=0``, the default) sends ``temperature: 0``; sampling sends a seed
per conversation, derived from ``seed`` and the conversation, so one conversation always gets the
same request.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import http.client
import io
import itertools
import json
import math
import os
import random
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from phi3lab.errors import Phi3LabError
from phi3lab.validation import check_bool, check_encodable, check_float, check_int, check_seed

__all__ = [
    "Endpoint",
    "EndpointError",
    "EndpointUnavailableError",
    "EndpointResponseError",
    "image_part",
    "wire_messages",
    "MAX_RESPONSE_BYTES",
]

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30.0
MAX_RESPONSE_BYTES = 8 * 2**20  # a 64-token answer is ~1 kB; 8 MiB leaves room for long answers and logprobs
RESERVED_FIELDS = ("model", "messages", "stream", "n")  # what extra_body may not replace
ROLES = ("system", "user", "assistant", "developer", "tool")


class EndpointError(Phi3LabError, RuntimeError):
    """A request to the endpoint failed for good; the message says which URL, what and how often."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None):
        super().__init__(message)
        self.url, self.status = url, status


class EndpointUnavailableError(EndpointError, ConnectionError):
    """No base URL could be reached (refused or unresolvable), or none answered in time, after every retry."""


class EndpointResponseError(EndpointError, ValueError):
    """The server answered, but not with a chat completion (not HTTP, not JSON, empty, too large, no text)."""


def image_part(image, fmt: str = "PNG") -> dict:
    """An OpenAI ``image_url`` part holding ``image`` as a base64 ``data:`` URL.

    The picture is first made 8-bit RGB the way the Phi-3-vision processor makes it
    (:func:`phi3lab.prompts.images.to_rgb`), so CMYK, palette, 16-bit and float images go as the model
    would see them in-process.
    """
    from phi3lab.prompts.images import to_rgb

    fmt = str(fmt).upper()
    if fmt not in ("PNG", "JPEG"):
        raise ValueError(f"fmt must be 'PNG' (lossless, the default) or 'JPEG', got {fmt!r}")
    buffer = io.BytesIO()
    to_rgb(image).save(buffer, format=fmt)
    mime = f"image/{fmt.lower()}"
    return {
        "type": "image_url",
        "image_url": {"url": f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"},
    }


def _is_image(value) -> bool:
    return hasattr(value, "save") and hasattr(value, "size") and hasattr(value, "mode")


def _text(where: str, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a string, got {type(value).__name__} {value!r:.60}")
    check_encodable(where, value)
    return value


def _wire_content(content, where: str):
    if isinstance(content, str):
        return _text(f"{where} content", content)
    if _is_image(content):
        return [image_part(content)]
    if isinstance(content, (bytes, bytearray, dict)) or not isinstance(content, Sequence):
        raise TypeError(
            f"{where} content must be a string or a list of parts (text, PIL images, image_url parts), "
            f"got {type(content).__name__}"
        )
    parts = []
    for k, part in enumerate(content):
        if isinstance(part, str):
            parts.append({"type": "text", "text": _text(f"{where} part {k}", part)})
        elif _is_image(part):
            parts.append(image_part(part))
        elif isinstance(part, dict) and part.get("type") == "image" and _is_image(part.get("image")):
            parts.append(image_part(part["image"]))
        elif isinstance(part, dict) and part.get("type") == "text":
            parts.append({**part, "text": _text(f"{where} part {k} text", part.get("text"))})
        elif isinstance(part, dict) and part.get("type") == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url.startswith(("data:", "http://", "https://")):
                raise TypeError(
                    f"{where} part {k} is an image_url part without a usable URL ({url!r:.60}); "
                    "give {'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,…'}} or a PIL image"
                )
            parts.append(dict(part))
        else:
            raise TypeError(
                f"{where} part {k} must be text, a PIL image or an image_url part, got {part!r:.80}; "
                "e.g. [picture, 'What is in the picture?']"
            )
    return parts


def wire_messages(conversation) -> list[dict]:
    """A conversation as the JSON ``messages`` of a chat-completions request (images base64-encoded).

    A string is one user turn.  Raises ``TypeError`` / ``ValueError`` naming the message that is wrong.
    """
    if isinstance(conversation, str):
        conversation = [{"role": "user", "content": conversation}]
    if isinstance(conversation, (bytes, bytearray, dict)) or not isinstance(conversation, Sequence):
        raise TypeError(
            f"a conversation must be a string or a list of message dicts, got {type(conversation).__name__}; "
            "e.g. [{'role': 'user', 'content': 'Hi'}]"
        )
    if not conversation:
        raise ValueError("a conversation is empty; give at least one {'role': 'user', 'content': ...} message")
    out = []
    for n, message in enumerate(conversation):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise TypeError(f"message {n} must be a dict with 'role' and 'content', got {message!r:.80}")
        role = message["role"]
        if role not in ROLES:
            raise ValueError(f"message {n} has role {role!r:.40}; the roles are {', '.join(ROLES)}")
        out.append({"role": role, "content": _wire_content(message["content"], f"message {n}")})
    return out


def _canonical(messages: list[dict]) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def mask(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret — and every piece of one 8 characters or longer — replaced by ``***``.

    Examples:
        >>> mask("bad key sk-abcdefghijkl (prefix sk-abcdefgh)", ["sk-abcdefghijkl"])
        'bad key *** (prefix ***)'
    """
    for secret in secrets:
        if not secret:
            continue
        if len(secret) < 8:
            text = text.replace(secret, "***")
            continue
        for size in range(len(secret), 7, -1):  # longest pieces first
            for start in range(len(secret) - size + 1):
                piece = secret[start : start + size]
                if piece in text:
                    text = text.replace(piece, "***")
    return text


def _retry_after(value) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or ``None`` if unusable."""
    if value is None:
        return None
    try:
        wait = float(value)
    except (TypeError, ValueError):
        try:
            when = email.utils.parsedate_to_datetime(str(value))
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        wait = max(0.0, when.timestamp() - time.time())
    if not math.isfinite(wait) or wait < 0:
        return None
    return min(wait, MAX_RETRY_AFTER)


class _Deadline:
    """Cuts a connection that is still busy ``seconds`` after it started (a trickling or endless answer)."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float):
        self.conn, self.expired, self.done = conn, False, False
        self.lock = threading.Lock()
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.expired = True
        sock = self.conn.sock
        if sock is not None:
            try:  # the plain socket's shutdown, so a TLS object is not torn down under a reading thread
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def finish(self) -> bool:
        """Stop the clock; whether it had already run out."""
        with self.lock:
            self.done = True
            self.timer.cancel()
            return self.expired


class _Failure(Phi3LabError, ConnectionError):
    """One try that failed in a way worth retrying: ``kind`` is unreachable, timed out or broke off."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


class _TooLarge(Phi3LabError, ValueError):
    pass


def _check_base_url(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"base_url must be a string such as 'http://127.0.0.1:8011/v1', got {type(value).__name__}")
    parts = urllib.parse.urlsplit(value.strip())
    if parts.username is not None or parts.password is not None:
        shown = urllib.parse.urlunsplit(parts._replace(netloc=f"***@{parts.hostname or ''}"))
        raise ValueError(
            f"base_url {shown!r} carries credentials; they would be sent in the clear and shown in messages. "
            "Put the key in an environment variable and pass api_key_env='VAR' (sent as a Bearer token)"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"base_url must be an http(s) URL such as 'http://127.0.0.1:8011/v1' (or a list), got {value!r:.80}"
        )
    try:
        parts.port  # noqa: B018  (raises for a port out of range)
    except ValueError:
        raise ValueError(f"base_url {value!r:.80} has an invalid port; ports run from 1 to 65535") from None
    if parts.query or parts.fragment:
        raise ValueError(
            f"base_url must be the API root without '?…' or '#…' (e.g. 'http://127.0.0.1:8011/v1'), got {value!r:.80}; "
            "keys go in api_key_env, other request fields in extra_body"
        )
    return urllib.parse.urlunsplit(parts).rstrip("/")


def _origin(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


class Endpoint:
    """An OpenAI-compatible chat-completions server (or a fleet of them) as a sweep target.

    Args:
        base_url: the API root, ``http://host:port/v1``, or a list of them (round-robin); no
            credentials, query or fragment in it.
        model: the model name the server knows (vLLM: the ``--model`` it was started with).
        api_key_env: the environment variable holding the API key (sent as a Bearer token to the base
            URLs only, never shown); ``None`` sends none.  ``python3 tasks.py serve --api-key`` (or
            ``PHI3LAB_API_KEY``) starts a server that wants one: pass ``api_key_env="PHI3LAB_API_KEY"``.
        max_new_tokens, temperature, top_p, seed: decoding, as :class:`~phi3lab.safety.targets.LabTarget`
            (``temperature`` ≥ 0, ``top_p`` in (0, 1], both finite).
        concurrency: requests in flight at once.
        batch_size: conversations per ``answer`` call of a sweep (what is written at a time; default
            ``4 × concurrency``).
        timeout: seconds without a byte from the server (or to connect) before a try counts as timed out.
        deadline: the most seconds one try may take in all, from connecting to the answer's last byte;
            a server that trickles its answer or streams for ever is cut off there (default 600).
        max_response_bytes: the largest answer read (default :data:`MAX_RESPONSE_BYTES`, 8 MiB).
        retries: further tries of a failing request; back-off ``backoff * 2**k`` seconds, jittered.
        backoff: the first back-off in seconds.
        name: the model id stored in results rows (default ``model``).
        can_answer: whether the model could produce real harmful content (default ``True``).
        extra_body: more JSON fields for every request (e.g. ``{"repetition_penalty": 1.0}``); it may
            not replace ``model``, ``messages``, ``stream`` or ``n``.
        strip_leading_space: drop one leading space from each answer.  Phi-3's tokenizer removes the
            word-start space of the first token when it decodes a whole answer (its decoder's ``Strip``
            step, as phi3lab does); vLLM's incremental detokenizer keeps it (``" I'm sorry…"``).
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str,
        *,
        api_key_env: str | None = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = 0,
        concurrency: int = 8,
        batch_size: int | None = None,
        timeout: float = 120.0,
        deadline: float = 600.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        retries: int = 3,
        backoff: float = 0.5,
        name: str | None = None,
        can_answer: bool = True,
        extra_body: dict | None = None,
        strip_leading_space: bool = True,
    ):
        if isinstance(base_url, (str, bytes)):
            urls = [base_url]
        elif isinstance(base_url, Sequence):
            urls = list(base_url)
        else:
            raise TypeError(
                f"base_url must be a URL string or a list of them, got {type(base_url).__name__}; "
                "e.g. 'http://127.0.0.1:8011/v1'"
            )
        if not urls:
            raise ValueError("base_url is an empty list; give at least one URL such as 'http://127.0.0.1:8011/v1'")
        self.base_urls = [_check_base_url(u) for u in urls]
        if not isinstance(model, str) or not model.strip():
            raise ValueError(
                f"model must be the model name the server serves, e.g. 'microsoft/Phi-3-mini-4k-instruct', got {model!r:.60}"
            )
        self.model = model
        if api_key_env is not None:
            if not isinstance(api_key_env, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env):
                raise ValueError(
                    f"api_key_env is the NAME of an environment variable holding the key (e.g. 'PHI3LAB_API_KEY'), "
                    f"got {'a value that is not a variable name' if isinstance(api_key_env, str) else type(api_key_env).__name__}; "
                    "never pass the key itself"
                )
            if not os.environ.get(api_key_env):
                raise ValueError(
                    f"the API key variable {api_key_env} is not set; export {api_key_env}=<key> "
                    "(or pass api_key_env=None for a server without keys)"
                )
        self.api_key_env = api_key_env
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
        temperature = check_float("temperature", temperature, minimum=0.0)
        top_p = check_float("top_p", top_p, above=0.0, maximum=1.0)
        seed = check_seed(seed)
        self.concurrency = check_int("concurrency", concurrency, minimum=1, maximum=1024)
        self.batch_size = 4 * self.concurrency if batch_size is None else check_int("batch_size", batch_size, minimum=1)
        self.timeout = check_float("timeout", timeout, above=0.0)
        self.deadline = check_float("deadline", deadline, above=0.0)
        self.max_response_bytes = check_int("max_response_bytes", max_response_bytes, minimum=1024)
        self.retries = check_int("retries", retries, minimum=0, maximum=100)
        self.backoff = check_float("backoff", backoff, minimum=0.0, maximum=MAX_RETRY_AFTER)
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"name must be a non-empty string (the model id stored in rows) or None, got {name!r:.60}")
        self.name = name or model
        self.can_answer = check_bool("can_answer", can_answer)
        self.strip_leading_space = check_bool("strip_leading_space", strip_leading_space)
        sampling = temperature > 0
        self.settings: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed if sampling else None,
            "endpoint": "openai-chat",
        }
        if extra_body is not None:
            if not isinstance(extra_body, dict) or not all(isinstance(k, str) for k in extra_body):
                raise TypeError(
                    f"extra_body must be a dict of JSON fields, got {type(extra_body).__name__}; "
                    "e.g. {'repetition_penalty': 1.0}"
                )
            clash = [k for k in RESERVED_FIELDS if k in extra_body]
            if clash:
                raise ValueError(
                    f"extra_body may not set {', '.join(clash)}: the endpoint sets those itself "
                    "(model= names the model; answers are read whole, one per request)"
                )
            try:
                json.dumps(extra_body, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"extra_body must be plain JSON (finite numbers, strings, lists, dicts): {exc}"
                ) from None
            if extra_body:
                self.settings["extra_body"] = dict(extra_body)
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._answers: dict[str, str] = {}
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}  # kept-alive connections per base URL
        self.stats = {"requests": 0, "retries": 0, "failures": 0, "connections": 0}

    # --- secrets ----------------------------------------------------------------------------------

    def _secrets(self) -> list[str]:
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        return [key] if key else []

    def _clean(self, text: str) -> str:
        return mask(text, self._secrets())

    def _headers(self, url: str) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env and url in self.base_urls:  # only ever to a base URL's own origin
            headers["Authorization"] = f"Bearer {os.environ.get(self.api_key_env, '')}"
        return headers

    # --- one request ----------------------------------------------------------------------------

    def _body(self, messages: list[dict]) -> dict:
        s = self.settings
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": s["max_new_tokens"],
            "temperature": s["temperature"],
            "top_p": s["top_p"],
            "n": 1,
            "stream": False,
        }
        if s["seed"] is not None:
            digest = hashlib.sha256(_canonical(messages).encode()).digest()
            body["seed"] = (s["seed"] * 1_000_003 + int.from_bytes(digest[:4], "big")) % 2**31
        body.update(s.get("extra_body", {}))
        return body

    def _url(self) -> str:
        with self._lock:
            return self.base_urls[next(self._next) % len(self.base_urls)]

    def _connect(self, url: str) -> tuple[http.client.HTTPConnection, bool]:
        """An idle kept-alive connection to ``url`` (``reused=True``), or a new one."""
        with self._lock:
            idle = self._idle.get(url)
            if idle:
                return idle.pop(), True
            self.stats["connections"] += 1
        parts = urllib.parse.urlsplit(url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        return kind(parts.hostname, parts.port, timeout=min(self.timeout, self.deadline)), False

    def _read(self, reply: http.client.HTTPResponse) -> bytes:
        declared = reply.getheader("Content-Length")
        if declared and declared.strip().isdigit() and int(declared) > self.max_response_bytes:
            raise _TooLarge(f"announced {int(declared):,} bytes")
        chunks, total = [], 0
        while True:
            chunk = reply.read(65536)
            if not chunk:
                if reply.length:  # read(amt) stops quietly at a connection closed before Content-Length
                    raise http.client.IncompleteRead(b"".join(chunks), reply.length)
                return b"".join(chunks)
            total += len(chunk)
            if total > self.max_response_bytes:
                raise _TooLarge(f"sent more than {self.max_response_bytes:,} bytes")
            chunks.append(chunk)

    def _exchange(self, url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes, dict]:
        """One HTTP exchange with ``url`` + ``path`` over a kept-alive connection, bounded by ``timeout``
        (per byte), ``deadline`` (in all) and ``max_response_bytes``.  A reused connection that the server
        had closed while idle is replaced at once, without counting as a try.  Redirects are returned,
        never followed.  Raises :class:`_Failure` (worth retrying) or :class:`EndpointResponseError`."""
        full = urllib.parse.urlsplit(url).path + path
        while True:
            conn, reused = self._connect(url)
            clock = _Deadline(conn, self.deadline)
            phase = "connect"
            try:
                if conn.sock is None:
                    conn.connect()
                phase = "send"
                conn.request(method, full, body=body, headers=self._headers(url))
                phase = "wait"
                reply = conn.getresponse()
                phase = "read"
                raw = self._read(reply)
            except BaseException as exc:  # noqa: BLE001  sorted below; everything else re-raised
                expired = clock.finish()
                conn.close()
                if expired:
                    raise _Failure(
                        "timed out",
                        f"no complete answer within deadline={self.deadline:g} s (cut off while {phase}ing)",
                    ) from None
                if isinstance(exc, _TooLarge):
                    raise EndpointResponseError(
                        f"{url}{path}: the answer is too large ({exc}; max_response_bytes={self.max_response_bytes:,}); "
                        "a chat completion is a few kB — is base_url the API root of an OpenAI-compatible server? "
                        "If answers this long are expected, raise max_response_bytes=",
                        url=url,
                    ) from None
                if isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)):
                    if reused and phase in ("send", "wait"):
                        continue  # the server closed it while it sat idle: open a fresh one
                    raise _Failure("broke off", f"the server closed the connection while we were {phase}ing") from None
                if isinstance(exc, http.client.IncompleteRead):
                    raise _Failure(
                        "broke off",
                        f"the answer broke off after {len(exc.partial):,} bytes"
                        + (f" of {len(exc.partial) + exc.expected:,} announced" if exc.expected else ""),
                    ) from None
                if isinstance(exc, (http.client.BadStatusLine, http.client.LineTooLong, http.client.UnknownProtocol)):
                    line = self._clean(str(exc)[:80])
                    raise EndpointResponseError(
                        f"{url} does not answer in HTTP (first line {line!r}); is base_url the address and port "
                        "of an OpenAI-compatible server, e.g. 'http://127.0.0.1:8011/v1'?",
                        url=url,
                    ) from None
                if isinstance(exc, http.client.HTTPException):
                    raise _Failure("broke off", f"the HTTP exchange broke off ({type(exc).__name__})") from None
                if isinstance(exc, (socket.timeout, TimeoutError)):
                    raise _Failure("timed out", f"no byte for timeout={self.timeout:g} s while {phase}ing") from None
                if isinstance(exc, OSError):
                    if phase == "connect":
                        reason = exc.strerror or type(exc).__name__
                        raise _Failure("unreachable", f"cannot connect ({type(exc).__name__}: {reason})") from None
                    raise _Failure(
                        "broke off", f"the connection failed while {phase}ing ({type(exc).__name__})"
                    ) from None
                raise
            clock.finish()
            if reply.will_close:
                conn.close()
            else:
                with self._lock:
                    self._idle.setdefault(url, []).append(conn)
            return reply.status, raw, dict(reply.headers)

    def close(self) -> None:
        """Close the kept-alive connections (also done when the endpoint is garbage-collected, or at the end
        of a ``with Endpoint(...) as target:`` block)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001  interpreter shutdown: nothing left to close with
            pass

    def _parse(self, url: str, status: int, raw: bytes) -> str:
        shown = self._clean(raw[:200].decode("utf-8", "replace"))
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise EndpointResponseError(
                f"{url}/chat/completions answered {status} with something that is not JSON "
                f"({len(raw)} bytes: {shown!r}); is base_url the API root of an "
                "OpenAI-compatible server (…/v1)?",
                url=url,
                status=status,
            ) from None
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise EndpointResponseError(
                f"{url}/chat/completions answered JSON without choices[0].message.content "
                f"({shown!r}); not a chat completion",
                url=url,
                status=status,
            ) from None
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise EndpointResponseError(
                f"{url}/chat/completions answered a {type(text).__name__} as the message "
                f"content ({shown!r}); expected text",
                url=url,
                status=status,
            )
        return text[1:] if self.strip_leading_space and text.startswith(" ") else text

    def _wait(self, attempt: int, headers: dict) -> float:
        after = _retry_after(headers.get("Retry-After", headers.get("retry-after")))
        if after is not None:
            return after
        return min(self.backoff * 2**attempt * (0.5 + random.random()), MAX_RETRY_AFTER)

    def _status_error(self, url: str, path: str, status: int, raw: bytes, headers: dict) -> EndpointError:
        """The error for an answer that is not 200 and not worth retrying."""
        detail = self._clean(raw[:300].decode("utf-8", "replace").strip())
        where = f"{url}{path}"
        if 300 <= status < 400:
            location = self._clean(str(headers.get("Location", headers.get("location", "nowhere")))[:120])
            return EndpointError(
                f"{where} redirects (HTTP {status}) to {location}; redirects are not followed, so requests and the "
                "API key stay at base_url's origin — if that address is the server you mean, pass it as base_url",
                url=url,
                status=status,
            )
        if 200 <= status < 300:
            return EndpointResponseError(
                f"{where} answered HTTP {status} {http.client.responses.get(status, '')} without a chat completion "
                f"({len(raw)} bytes); an OpenAI-compatible server answers 200 with JSON — is base_url its API root?",
                url=url,
                status=status,
            )
        hint = ""
        if status in (401, 403):
            hint = (
                f" (check the API key in {self.api_key_env})"
                if self.api_key_env
                else " (the server wants an API key: export VAR=<key> and pass api_key_env='VAR')"
            )
        elif status == 404:
            hint = f" (is base_url the API root, …/v1, and does the server serve model {self.model!r}?)"
        return EndpointError(f"{where} refused the request with HTTP {status}: {detail}{hint}", url=url, status=status)

    def _ask(self, messages: list[dict]) -> str:
        body = json.dumps(self._body(messages), allow_nan=False).encode()
        problems: list[tuple[str, str]] = []  # (kind, text)
        url = self.base_urls[0]
        for attempt in range(self.retries + 1):
            url = self._url()
            headers: dict = {}
            with self._lock:
                self.stats["requests"] += 1
            try:
                status, raw, headers = self._exchange(url, "POST", "/chat/completions", body)
            except _Failure as failure:
                problems.append((failure.kind, f"{url}: {failure.kind} — {self._clean(failure.detail)}"))
            else:
                if status == 200:
                    return self._parse(url, status, raw)
                if status not in RETRY_STATUS:
                    raise self._status_error(url, "/chat/completions", status, raw, headers)
                detail = self._clean(raw[:120].decode("utf-8", "replace").strip())
                problems.append(("status", f"{url}: HTTP {status} {detail}"))
            if attempt < self.retries:
                with self._lock:
                    self.stats["retries"] += 1
                time.sleep(self._wait(attempt, headers))
        with self._lock:
            self.stats["failures"] += 1
        tries = f"{self.retries + 1} {'try' if self.retries == 0 else 'tries'}"
        shown = "; ".join(text for _, text in problems[-3:])
        kinds = {kind for kind, _ in problems}
        last = problems[-1][0]
        if last == "unreachable" or (last == "broke off" and not self._accepts(url)):
            raise EndpointUnavailableError(
                f"the endpoint is down or unreachable: {tries} failed ({shown}"
                + ("" if last == "unreachable" else "; it no longer accepts connections")
                + "). Is the server running? "
                "(`python3 tasks.py serve` starts vLLM on 127.0.0.1:8011) — run the sweep again once it is up: "
                "finished rows are kept and it resumes",
                url=url,
            )
        if kinds == {"timed out"}:
            raise EndpointUnavailableError(
                f"the endpoint did not answer in time: {tries} timed out ({shown}). If the server is busy, "
                "lower concurrency= or raise timeout= / deadline=; finished rows are kept and a rerun resumes",
                url=url,
            )
        raise EndpointError(
            f"the endpoint kept failing: {tries} ({shown}); its log should say why — finished rows are kept "
            "and a rerun resumes",
            url=url,
        )

    def _accepts(self, url: str) -> bool:
        """Whether ``url``'s server still accepts a TCP connection (after an exchange broke off)."""
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname, port), timeout=min(self.timeout, 5.0)):
                return True
        except OSError:
            return False

    # --- the Target protocol ---------------------------------------------------------------------

    def answer(self, conversations: Sequence) -> list[str]:
        """The answers' texts, in order; ``concurrency`` requests in flight.  Raises on the first failure
        (after its retries), once the requests already in flight have finished (their answers are kept)."""
        if isinstance(conversations, (str, bytes, dict)) or not isinstance(conversations, Sequence):
            raise TypeError(
                f"answer takes a list of conversations, got {type(conversations).__name__}; "
                "e.g. [[{'role': 'user', 'content': 'Hi'}]] (or ['Hi'])"
            )
        wired = [wire_messages(c) for c in conversations]
        keys = [_canonical(m) for m in wired]
        todo = list(dict.fromkeys(k for k in keys if k not in self._answers))
        if todo:
            by_key = dict(zip(keys, wired))
            failure: list[BaseException] = []

            def one(key: str) -> None:
                if failure:
                    return  # stop sending once something failed for good
                try:
                    text = self._ask(by_key[key])
                except BaseException as exc:  # noqa: BLE001  re-raised below, in the caller's thread
                    failure.append(exc)
                    return
                with self._lock:
                    self._answers[key] = text

            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(todo))) as pool:
                list(pool.map(one, todo))
            if failure:
                raise failure[0]
        return [self._answers[k] for k in keys]

    def check(self) -> list[str]:
        """The model ids each base URL serves (``GET /models``, one try, bounded like a chat request,
        redirects not followed); raises when ``model`` is not among them."""
        served: list[str] = []
        for url in self.base_urls:
            try:
                status, raw, headers = self._exchange(url, "GET", "/models")
            except _Failure as failure:
                cls = EndpointUnavailableError if failure.kind in ("unreachable", "timed out") else EndpointError
                raise cls(
                    f"{url}/models: {failure.kind} — {self._clean(failure.detail)}; is the server running? "
                    "(`python3 tasks.py serve` starts vLLM on 127.0.0.1:8011)",
                    url=url,
                ) from None
            if status != 200:
                raise self._status_error(url, "/models", status, raw, headers)
            try:
                ids = [m["id"] for m in json.loads(raw)["data"]]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise EndpointResponseError(
                    f"{url}/models did not answer a model list ({self._clean(repr(raw[:200]))}); "
                    "is base_url the API root (…/v1)?",
                    url=url,
                ) from None
            if self.model not in ids:
                raise EndpointError(f"{url} serves {ids}, not {self.model!r}; pass model= one of those", url=url)
            served.extend(ids)
        return served

    def __repr__(self) -> str:
        urls = self.base_urls[0] if len(self.base_urls) == 1 else self.base_urls
        key = f", api_key_env={self.api_key_env!r}" if self.api_key_env else ""
        return f"Endpoint({urls!r}, model={self.model!r}{key}, concurrency={self.concurrency})"
