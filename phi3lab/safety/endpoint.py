"""An OpenAI-compatible chat server as a sweep target: vLLM, ``transformers serve``, a hosted endpoint.

:class:`Endpoint` has the three members of :class:`phi3lab.safety.targets.Target` — ``name``,
``settings`` and ``answer(conversations)`` — so ``safety.sweep(Endpoint(...), ...)`` runs a sweep
there unchanged, resumable as any other::

    from phi3lab.safety.endpoint import Endpoint
    target = Endpoint("http://127.0.0.1:8011/v1", model="data/models/phi3lab-tiny")   # python3 tasks.py serve
    hosted = Endpoint("https://<name>.models.ai.azure.com/v1", model="Phi-3-mini-4k-instruct",
                      api_key_env="AZURE_AI_KEY")
    fleet = Endpoint(["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"], model="microsoft/Phi-3-mini-4k-instruct")

Each ``answer`` call sends its conversations as ``POST {base_url}/chat/completions`` requests,
``concurrency`` of them in flight, spread round-robin over the base URLs, over HTTP/1.1 connections
kept alive between requests (one TCP — and for ``https`` one TLS — set-up per worker, not per
request; :meth:`Endpoint.close` closes them).  A request that gets a
429 or 5xx, times out (no byte for ``timeout`` seconds) or cannot connect is retried with
exponential back-off (``Retry-After`` honoured, capped), on the next base URL; when the retries run
out the call raises :class:`EndpointUnavailableError` (the server is down) or
:class:`EndpointError` (it keeps failing), and an answer that is not a chat completion raises
:class:`EndpointResponseError` at once, naming what was wrong.  Answers already received are kept
in memory, so running the same sweep again with the same target after a failure re-asks only what
was in flight.

Message ``content`` is a string, or a list of parts: ``{"type": "text", "text": ...}``, a PIL image
(or ``{"type": "image", "image": <PIL image>}``), or an OpenAI ``image_url`` part as it is; images are
sent as base64 PNG ``data:`` URLs.

Greedy decoding (``temperature=0``, the default) sends ``temperature: 0``; sampling sends a seed
per conversation, derived from ``seed`` and the conversation, so one conversation always gets the
same request.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import itertools
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from phi3lab.errors import Phi3LabError

__all__ = ["Endpoint", "EndpointError", "EndpointUnavailableError", "EndpointResponseError", "image_part"]

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30.0


class EndpointError(Phi3LabError, RuntimeError):
    """A request to the endpoint failed for good; the message says which URL, what and how often."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None):
        super().__init__(message)
        self.url, self.status = url, status


class EndpointUnavailableError(EndpointError, ConnectionError):
    """No base URL could be reached (refused, reset or timed out) after every retry."""


class EndpointResponseError(EndpointError, ValueError):
    """The server answered, but not with a chat completion (not JSON, or without a text answer)."""


def image_part(image, fmt: str = "PNG") -> dict:
    """An OpenAI ``image_url`` part holding ``image`` (a PIL image) as a base64 ``data:`` URL."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    mime = f"image/{fmt.lower()}"
    return {
        "type": "image_url",
        "image_url": {"url": f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"},
    }


def _is_image(value) -> bool:
    return hasattr(value, "save") and hasattr(value, "size") and hasattr(value, "mode")


def _wire_content(content):
    if isinstance(content, str):
        return content
    if _is_image(content):
        return [image_part(content)]
    if not isinstance(content, Sequence):
        raise TypeError(f"message content must be a string or a list of parts, got {type(content).__name__}")
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
        elif _is_image(part):
            parts.append(image_part(part))
        elif isinstance(part, dict) and part.get("type") == "image" and _is_image(part.get("image")):
            parts.append(image_part(part["image"]))
        elif isinstance(part, dict) and part.get("type") in ("text", "image_url"):
            parts.append(dict(part))
        else:
            raise TypeError(f"a content part must be text, a PIL image or an image_url part, got {part!r:.80}")
    return parts


def wire_messages(conversation: Sequence[dict]) -> list[dict]:
    """A conversation as the JSON ``messages`` of a chat-completions request (images base64-encoded)."""
    if isinstance(conversation, str):
        conversation = [{"role": "user", "content": conversation}]
    out = []
    for message in conversation:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise TypeError(f"each message must be a dict with 'role' and 'content', got {message!r:.80}")
        out.append({"role": message["role"], "content": _wire_content(message["content"])})
    return out


def _canonical(messages: list[dict]) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


class Endpoint:
    """An OpenAI-compatible chat-completions server (or a fleet of them) as a sweep target.

    Args:
        base_url: the API root, ``http://host:port/v1``, or a list of them (round-robin).
        model: the model name the server knows (vLLM: the ``--model`` it was started with).
        api_key_env: the environment variable holding the API key (sent as a Bearer token);
            ``None`` sends none (local servers).
        max_new_tokens, temperature, top_p, seed: decoding, as :class:`~phi3lab.safety.targets.LabTarget`.
        concurrency: requests in flight at once.
        batch_size: conversations per ``answer`` call of a sweep (what is written at a time).
        timeout: seconds without a byte from the server before a request counts as timed out.
        retries: further tries of a failing request; back-off ``backoff * 2**k`` seconds, jittered.
        name: the model id stored in results rows (default ``model``).
        can_answer: whether the model could produce real harmful content (default ``True``).
        extra_body: more JSON fields for every request (e.g. ``{"repetition_penalty": 1.0}``).
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
        retries: int = 3,
        backoff: float = 0.5,
        name: str | None = None,
        can_answer: bool = True,
        extra_body: dict | None = None,
        strip_leading_space: bool = True,
    ):
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls):
            raise ValueError(
                f"base_url must be an http(s) URL such as 'http://127.0.0.1:8011/v1' (or a list), got {base_url!r}"
            )
        if not isinstance(model, str) or not model:
            raise ValueError("model must be the model name the server serves, e.g. 'microsoft/Phi-3-mini-4k-instruct'")
        for label, value, low in (
            ("concurrency", concurrency, 1),
            ("retries", retries, 0),
            ("max_new_tokens", max_new_tokens, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{label} must be a whole number >= {low}, got {value!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.model = model
        self.api_key_env = api_key_env
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise ValueError(
                f"the API key variable {api_key_env} is not set; export {api_key_env}=<key> "
                "(or pass api_key_env=None for a server without keys)"
            )
        sampling = float(temperature) > 0
        self.settings: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "temperature": float(temperature),
            "top_p": float(top_p),
            "seed": int(seed) if sampling and seed is not None else None,
            "endpoint": "openai-chat",
        }
        if extra_body:
            self.settings["extra_body"] = dict(extra_body)
        self.strip_leading_space = bool(strip_leading_space)
        self.name = name or model
        self.can_answer = can_answer
        self.concurrency = concurrency
        self.batch_size = batch_size or 4 * concurrency
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._answers: dict[str, str] = {}
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}  # kept-alive connections per base URL
        self.stats = {"requests": 0, "retries": 0, "failures": 0, "connections": 0}

    # --- one request ----------------------------------------------------------------------------

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ.get(self.api_key_env, '')}"
        return headers

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
        return kind(parts.hostname, parts.port, timeout=self.timeout), False

    def _post(self, url: str, body: bytes) -> tuple[int, bytes, dict]:
        """POST ``body`` to ``url``/chat/completions over a kept-alive connection (one TCP and TLS set-up
        per worker, not per request).  A reused connection that the server had closed while idle is
        replaced at once, without counting as a retry; any other failure closes the connection and
        propagates to :meth:`_ask`."""
        path = urllib.parse.urlsplit(url).path + "/chat/completions"
        while True:
            conn, reused = self._connect(url)
            try:
                conn.request("POST", path, body=body, headers=self._headers())
                reply = conn.getresponse()
                raw = reply.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                if reused:
                    continue  # the server closed it while it sat idle: open a fresh one
                raise ConnectionError(f"the server closed the connection ({exc or type(exc).__name__})") from None
            except http.client.HTTPException as exc:
                conn.close()
                raise ConnectionError(f"the server broke off the HTTP exchange ({type(exc).__name__}: {exc})") from None
            except BaseException:
                conn.close()
                raise
            if reply.will_close:
                conn.close()
            else:
                with self._lock:
                    self._idle.setdefault(url, []).append(conn)
            return reply.status, raw, dict(reply.headers)

    def close(self) -> None:
        """Close the kept-alive connections (they are also closed when the endpoint is garbage-collected)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _parse(self, url: str, status: int, raw: bytes) -> str:
        shown = raw[:200].decode("utf-8", "replace")
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
        after = headers.get("Retry-After") or headers.get("retry-after")
        try:
            wait = min(float(after), MAX_RETRY_AFTER) if after is not None else None
        except ValueError:
            wait = None
        if wait is None:
            wait = self.backoff * 2**attempt * (0.5 + random.random())
        return wait

    def _ask(self, messages: list[dict]) -> str:
        body = json.dumps(self._body(messages)).encode()
        problems: list[str] = []
        unreachable = True
        for attempt in range(self.retries + 1):
            url = self._url()
            headers: dict = {}
            try:
                with self._lock:
                    self.stats["requests"] += 1
                status, raw, headers = self._post(url, body)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                kind = "timed out" if isinstance(reason, (socket.timeout, TimeoutError)) else "unreachable"
                problems.append(f"{url}: {kind} ({type(reason).__name__}: {reason})")
            else:
                unreachable = False
                if status == 200:
                    return self._parse(url, status, raw)
                detail = raw[:300].decode("utf-8", "replace").strip()
                if status not in RETRY_STATUS:
                    raise EndpointError(
                        f"{url}/chat/completions refused the request with HTTP {status}: {detail}"
                        + (
                            " (check the API key in " + self.api_key_env + ")"
                            if status in (401, 403) and self.api_key_env
                            else ""
                        )
                        + (f" (does the server serve model {self.model!r}?)" if status == 404 else ""),
                        url=url,
                        status=status,
                    )
                problems.append(f"{url}: HTTP {status} {detail[:120]}")
            if attempt < self.retries:
                with self._lock:
                    self.stats["retries"] += 1
                time.sleep(self._wait(attempt, headers))
        with self._lock:
            self.stats["failures"] += 1
        tries = self.retries + 1
        if unreachable:
            raise EndpointUnavailableError(
                f"the endpoint is down or unreachable: {tries} tries failed ({'; '.join(problems[-3:])}). Is the "
                f"server running? (`python3 tasks.py serve` starts vLLM on 127.0.0.1:8011) — run the sweep again "
                "once it is up: finished rows are kept and it resumes",
                url=url,
            )
        raise EndpointError(f"the endpoint kept failing: {tries} tries ({'; '.join(problems[-3:])})", url=url)

    # --- the Target protocol ---------------------------------------------------------------------

    def answer(self, conversations: list[list[dict]]) -> list[str]:
        """The answers' texts, in order; ``concurrency`` requests in flight.  Raises on the first failure
        (after its retries), once the requests already in flight have finished (their answers are kept)."""
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
        """The model ids each base URL serves (``GET /models``); raises when ``model`` is not among them."""
        served: list[str] = []
        for url in self.base_urls:
            request = urllib.request.Request(url + "/models", headers=self._headers())
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    raw = reply.read()
            except (urllib.error.URLError, OSError) as exc:
                raise EndpointUnavailableError(
                    f"{url}/models is unreachable ({exc}); is the server running?", url=url
                ) from None
            try:
                ids = [m["id"] for m in json.loads(raw)["data"]]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise EndpointResponseError(
                    f"{url}/models did not answer a model list ({raw[:200]!r})", url=url
                ) from None
            if self.model not in ids:
                raise EndpointError(f"{url} serves {ids}, not {self.model!r}", url=url)
            served.extend(ids)
        return served

    def __repr__(self) -> str:
        urls = self.base_urls[0] if len(self.base_urls) == 1 else self.base_urls
        return f"Endpoint({urls!r}, model={self.model!r}, concurrency={self.concurrency})"
