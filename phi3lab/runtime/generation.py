"""Chatting with a loaded model: streamed, greedy by default, stopping where Phi-3 stops.

``lab.chat("What is 2 plus 3?")`` renders the conversation with the model's own template,
streams the answer into the notebook as it is produced, stops at the model's stop ids
(``<|end|>`` for every Phi-3, not the ``eos_token_id`` of ``config.json``) and returns a
:class:`ChatResult` with the text, ids, token counts, time to first token and speed.
:class:`ChatSession` keeps the history of a multi-turn conversation; :func:`chat_batch`
answers several prompts at once with left padding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from phi3lab.prompts.chat import ChatFormatError, as_messages
from phi3lab.validation import (
    check_bool,
    check_context,
    check_float,
    check_int,
    check_seed,
    check_sequence,
    check_text,
)

__all__ = ["ChatResult", "ChatSession", "chat", "chat_batch", "generate_kwargs", "chat_result", "MIN_TEMPERATURE"]

MIN_TEMPERATURE = 1e-3  # below this, logits / temperature can overflow to inf and sampling fails


@dataclasses.dataclass(frozen=True)
class ChatResult:
    """One answer.

    Attributes:
        text: the answer, special tokens removed.
        token_ids: the generated ids, the stop token included when there was one.
        prompt_tokens, new_tokens: token counts.
        time_to_first_token: seconds from the call to the first new token.
        tokens_per_second: new tokens per second of generation after the first.
        finish_reason: ``"stop"`` (a stop id was produced), ``"length"`` (max_new_tokens) or
            ``"stopped"`` (the caller's ``stop`` event was set first).
        messages: the conversation with this answer appended.
    """

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    new_tokens: int
    time_to_first_token: float
    tokens_per_second: float
    finish_reason: str
    messages: tuple[dict, ...]

    def stats(self) -> str:
        return (
            f"{self.prompt_tokens} prompt + {self.new_tokens} new tokens · first token after "
            f"{1000 * self.time_to_first_token:.0f} ms · {self.tokens_per_second:.1f} tokens/s · {self.finish_reason}"
        )

    def __str__(self) -> str:
        return self.text

    def to_text(self) -> str:
        """The answer and, under it, :meth:`stats`."""
        return f"{self.text}\n({self.stats()})"

    def __repr__(self) -> str:
        from phi3lab.reprs import shorten

        return f"ChatResult({shorten(self.text, 60)!r}, {self.new_tokens} new tokens, {self.finish_reason})"

    def _repr_html_(self) -> str:
        from phi3lab.reprs import rows_html

        return rows_html([("answer", self.text), ("stats", self.stats())])


class _Streamer(BaseStreamer):
    """Hands decoded text to ``on_text`` (and prints it with ``echo``) as tokens arrive, and notes when
    the first one came; pieces are whole characters, without the stop tokens."""

    def __init__(self, tokenizer, stop_ids: Sequence[int], echo: bool, on_text: Callable[[str], None] | None = None):
        self.tokenizer, self.stop_ids, self.echo, self.on_text = tokenizer, set(stop_ids), echo, on_text
        self.prompt_seen = False
        self.ids: list[int] = []
        self.shown = ""
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() hands over the prompt first
            self.prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.ids += [int(i) for i in value.reshape(-1)]
        if self.echo or self.on_text is not None:
            text = self.tokenizer.decode([i for i in self.ids if i not in self.stop_ids], skip_special_tokens=True)
            if not text.endswith("\ufffd") and len(text) > len(self.shown):  # wait for a whole multi-byte character
                piece, self.shown = text[len(self.shown) :], text
                if self.echo:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                if self.on_text is not None:
                    self.on_text(piece)

    def end(self) -> None:
        if self.echo:
            sys.stdout.write("\n")
            sys.stdout.flush()


class _StopWhenSet(StoppingCriteria):
    """Ends generation after the current token once ``event`` is set (e.g. from another thread)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@contextlib.contextmanager
def _seeded(seed: int | None, device):
    """Sample with ``seed`` inside the block and give the global random state back afterwards
    (``None``: the global state as it is)."""
    if seed is None:
        yield
        return
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def generate_kwargs(lab, max_new_tokens: int, temperature: float, top_p: float) -> dict:
    """Checked keyword arguments for ``lab.model.generate``: the length, greedy or sampling, and Phi-3's stop ids."""
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
    temperature = check_float("temperature", temperature)
    top_p = check_float("top_p", top_p)
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature ≥ 0 and 0 < top_p ≤ 1, got temperature={temperature}, top_p={top_p}")
    if 0 < temperature < MIN_TEMPERATURE:
        raise ValueError(
            f"temperature={temperature} is too small to sample with (logits / temperature overflow); "
            f"use temperature=0 for greedy decoding, or at least {MIN_TEMPERATURE}"
        )
    stops = list(lab.spec.stop_ids)
    pad = lab.tokenizer.pad_token_id if lab.tokenizer.pad_token_id is not None else stops[0]
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad, do_sample=temperature > 0)
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def encode(lab, messages: list[dict], images: Sequence = ()):
    """Model inputs for a conversation (see :meth:`phi3lab.Lab.encode`): an :class:`~phi3lab.prompts.inputs.Inputs`."""
    return lab.encode(messages, list(images))


def _images(images) -> list:
    if images is None:
        return []
    return check_sequence(
        "images",
        images,
        item="pictures, one per <|image_N|> tag",
        example="images=[picture] (a PIL image, a numpy array or a file path)",
    )


def _check_fits(lab, input_ids: torch.Tensor, max_new_tokens: int, what: str = "the prompt") -> None:
    check_context(
        int(input_ids.shape[-1]),
        max_new_tokens,
        lab.spec.context_length,
        what=what,
        image_tokens=int((input_ids < 0).sum()),
    )


def chat_result(
    lab,
    new_ids: list[int],
    messages: list[dict],
    prompt_tokens: int,
    started: float,
    first_at: float | None,
    ended: float,
    interrupted: bool = False,
) -> ChatResult:
    """A :class:`ChatResult` from generated ids: cut at the first stop id, right padding dropped, timed."""
    stops = set(lab.spec.stop_ids)
    pad = lab.tokenizer.pad_token_id
    # drop right padding that batched generation adds after a row has stopped
    cut = next((k + 1 for k, i in enumerate(new_ids) if i in stops), len(new_ids))
    new_ids = new_ids[:cut]
    stopped = bool(new_ids) and new_ids[-1] in stops
    if not stopped and pad is not None and pad in stops:
        new_ids = [i for i in new_ids if i != pad]
    text = lab.tokenizer.decode([i for i in new_ids if i not in stops], skip_special_tokens=True).strip()
    first_at = first_at or ended
    after_first = max(len(new_ids) - 1, 0)
    speed = after_first / (ended - first_at) if ended > first_at and after_first else 0.0
    return ChatResult(
        text=text,
        token_ids=tuple(new_ids),
        prompt_tokens=prompt_tokens,
        new_tokens=len(new_ids),
        time_to_first_token=first_at - started,
        tokens_per_second=speed,
        finish_reason="stop" if stopped else "stopped" if interrupted else "length",
        messages=tuple([*messages, {"role": "assistant", "content": text}]),
    )


@torch.inference_mode()
def chat(
    lab,
    conversation,
    images: Sequence | None = None,
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stream: bool = True,
    seed: int | None = None,
    special_tokens: str = "refuse",
    on_text: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> ChatResult:
    """Answer a conversation (a string or HF messages); see :meth:`phi3lab.Lab.chat`.

    ``on_text(piece)`` is called with each new piece of the answer's text as it is produced (a widget,
    a log); setting ``stop`` (a :class:`threading.Event`, from another thread) ends the answer after
    the current token, with ``finish_reason="stopped"``.

    ``special_tokens`` says what happens to control-token strings typed in the content
    (``"refuse"``, ``"allow"`` or ``"escape"``, see :func:`phi3lab.prompts.chat.render`).  A prompt that
    with ``max_new_tokens`` would not fit the context is refused before anything runs
    (:class:`~phi3lab.validation.ContextOverflowError`).
    """
    images = _images(images)
    if images and lab.spec.modality != "vision":  # before the pictures are read
        raise ChatFormatError(
            f"{len(images)} image(s) were given, but {lab.spec.name} is a text-only model; "
            "load a vision model such as 'tiny-vision'"
        )
    messages = as_messages(conversation)
    kwargs = generate_kwargs(lab, max_new_tokens, temperature, top_p)
    stream = check_bool("stream", stream)
    seed = check_seed(seed)
    if on_text is not None and not callable(on_text):
        raise TypeError(
            f"on_text must be a function of one string (each new piece of text), got {type(on_text).__name__}"
        )
    if stop is not None and not isinstance(stop, threading.Event):
        raise TypeError(f"stop must be a threading.Event (set it to end the answer), got {type(stop).__name__}")
    started = time.perf_counter()
    inputs = lab.encode(messages, images, special_tokens=special_tokens)
    _check_fits(lab, inputs["input_ids"], kwargs["max_new_tokens"])
    streamer = _Streamer(lab.tokenizer, lab.spec.stop_ids, echo=stream, on_text=on_text)
    if stop is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([_StopWhenSet(stop)])
    with _seeded(seed, lab.model.device):  # the caller's global RNG is left as it was
        out = lab.model.generate(**inputs, streamer=streamer, **kwargs)
    ended = time.perf_counter()
    prompt_len = inputs["input_ids"].shape[1]
    new_ids = [int(i) for i in out[0, prompt_len:]]
    return chat_result(
        lab,
        new_ids,
        messages,
        prompt_len,
        started,
        streamer.first_token_at,
        ended,
        interrupted=stop is not None and stop.is_set(),
    )


@torch.inference_mode()
def chat_batch(
    lab,
    conversations: Sequence,
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    special_tokens: str = "refuse",
) -> list[ChatResult]:
    """Answer several text conversations in one left-padded batch (no streaming).

    ``conversations`` is a list: ``chat_batch(["Hi", "What is 2 plus 3?"])``; each item is a
    string or HF messages.  The longest prompt plus ``max_new_tokens`` must fit the context.
    """
    if lab.spec.modality == "vision":
        raise NotImplementedError("batched chat takes text prompts; call lab.chat() per image prompt")
    conversations = check_sequence(
        "conversations",
        conversations,
        item="conversations",
        example="chat_batch(['What is 2 plus 3?', 'Hi']), or lab.chat() for one",
    )
    if not conversations:
        raise ValueError("chat_batch needs at least one conversation, e.g. chat_batch(['What is 2 plus 3?'])")
    kwargs = generate_kwargs(lab, max_new_tokens, temperature, top_p)
    started = time.perf_counter()
    all_messages = [as_messages(c) for c in conversations]
    batch = lab.encode_batch(all_messages, special_tokens=special_tokens)  # padded once (left_pad)
    rows = batch.rows()
    longest = max(range(len(rows)), key=lambda row: rows[row].num_tokens)
    _check_fits(
        lab,
        rows[longest].input_ids[0],
        kwargs["max_new_tokens"],
        what="the prompt" if len(rows) == 1 else f"prompt {longest} of the batch (the longest)",
    )
    width = batch.num_tokens
    out = lab.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs)
    ended = time.perf_counter()
    return [
        chat_result(
            lab, [int(i) for i in out[row, width:]], all_messages[row], rows[row].num_tokens, started, None, ended
        )
        for row in range(len(rows))
    ]


class ChatSession:
    """A multi-turn conversation that keeps its history (and images) between turns.

    Examples:
        >>> import phi3lab
        >>> session = phi3lab.load("tiny", verbose=False).session(system="Answer briefly.")
        >>> _ = session.chat("What is 2 plus 3?", stream=False, max_new_tokens=4)
        >>> [m["role"] for m in session.history]
        ['system', 'user', 'assistant']
    """

    def __init__(self, lab, system: str | None = None):
        if system is not None:
            check_text("system", system)
        self.lab = lab
        self.history: list[dict] = [{"role": "system", "content": system}] if system else []
        self.images: list = []
        self.results: list[ChatResult] = []

    def chat(self, text: str, images: Sequence | None = None, **kwargs) -> ChatResult:
        """Add a user turn (and its images), answer it, and keep both in the history.

        Nothing is kept when the turn fails (a refused prompt, a prompt over the context).
        """
        check_text("text", text)
        new_images = _images(images)
        result = chat(
            self.lab, [*self.history, {"role": "user", "content": text}], [*self.images, *new_images], **kwargs
        )
        self.images += new_images
        self.history = list(result.messages)
        self.results.append(result)
        return result

    def reset(self) -> None:
        """Forget everything but the system prompt."""
        self.history = [m for m in self.history[:1] if m["role"] == "system"]
        self.images, self.results = [], []

    def __repr__(self) -> str:
        return f"ChatSession({len(self.history)} messages, {len(self.images)} images)"
