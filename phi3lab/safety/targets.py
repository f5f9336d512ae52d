"""What a sweep talks to: the small :class:`Target` protocol, and the in-process :class:`LabTarget`.

A target is anything that answers a batch of conversations and can say what it is::

    class Target(Protocol):
        name: str                       # model id, stored in every results row
        settings: dict                  # everything that changes the answers (JSON-serialisable)
        def answer(self, conversations: list[list[dict]]) -> list[str]: ...

Optional attributes a sweep uses when present: ``batch_size`` (most conversations per ``answer``
call, default 32), ``batch_tokens`` (most padded prompt tokens per call, estimated from the text),
``first_token_scores(conversations) -> list[float]`` (refusal log-odds without
generation, in-process only), and ``can_answer`` (``False`` for models that cannot produce real
harmful content — the embedded model, test stubs; real-behaviour probe sets are refused under CI
otherwise).  ``name`` and ``settings`` go into every row's content key, so a results file never
mixes two models or two settings.  An OpenAI-compatible endpoint (vLLM) is one more implementation
of the same three members.

    >>> import phi3lab
    >>> target = LabTarget(phi3lab.load("tiny", verbose=False), max_new_tokens=16)
    >>> target.name, target.settings["temperature"]
    ('phi3lab-tiny', 0.0)
    >>> target.answer([[{"role": "user", "content": "What is 2 plus 3?"}]])
    ['2 plus 3 is 5.']
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from phi3lab.validation import check_float, check_int, check_seed

__all__ = ["Target", "LabTarget"]


@runtime_checkable
class Target(Protocol):
    """Anything a sweep can probe: see the module docstring."""

    name: str
    settings: dict[str, Any]

    def answer(self, conversations: list[list[dict]]) -> list[str]: ...


class LabTarget:
    """A loaded :class:`~phi3lab.Lab` as a sweep target: batched, left-padded generation in-process.

    Args:
        lab: the loaded model.
        max_new_tokens: answer length bound (64 is enough to tell a refusal from compliance).
        temperature, top_p: 0 (the default) decodes greedily; above 0 samples, seeded by ``seed``.
        seed: sampling seed; each batch is seeded from it and the batch's own conversations, so the
            same batch always gets the same samples.
        batch_size: most conversations per generation batch.
        batch_tokens: most padded prompt tokens per batch (rows × the longest, estimated as characters
            / 4): short prompts go 64 at a time, long many-shot ones a few at a time.
        special_tokens: how control-token strings typed in messages are rendered; ``"allow"`` (the
            default) lets the forged-turn transform's tokens act as the official tokenizer makes them act.
    """

    def __init__(
        self,
        lab,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = 0,
        batch_size: int = 64,
        batch_tokens: int | None = 4096,
        special_tokens: str = "allow",
    ):
        from phi3lab.prompts.chat import SPECIAL_TOKEN_MODES

        if lab.spec.modality == "vision":
            raise ValueError(
                f"{lab.spec.name} is a vision model; sweeps answer text conversations in batches — "
                "load a text Phi-3 (e.g. 'tiny' or 'microsoft/Phi-3-mini-4k-instruct')"
            )
        if special_tokens not in SPECIAL_TOKEN_MODES:
            raise ValueError(f"special_tokens must be one of {SPECIAL_TOKEN_MODES}, got {special_tokens!r}")
        self.lab = lab
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.batch_tokens = None if batch_tokens is None else check_int("batch_tokens", batch_tokens, minimum=1)
        sampling = check_float("temperature", temperature) > 0
        self.settings = {
            "max_new_tokens": check_int("max_new_tokens", max_new_tokens, minimum=1),
            "temperature": float(temperature),
            "top_p": float(check_float("top_p", top_p)),
            "seed": check_seed(seed) if sampling else None,
            "special_tokens": special_tokens,
            "dtype": lab.attention.dtype_name,
        }
        self.name = lab.spec.name
        self.can_answer = lab.kind != "embedded"

    def _seed_for(self, conversations: Sequence) -> int:
        digest = hashlib.sha256(json.dumps(list(conversations), sort_keys=True).encode()).digest()
        return (int(self.settings["seed"]) * 1_000_003 + int.from_bytes(digest[:6], "big")) % 2**63

    def answer(self, conversations: list[list[dict]]) -> list[str]:
        """The answers' texts, in order (one left-padded batch)."""
        import torch

        s = self.settings
        if s["temperature"] > 0:
            torch.manual_seed(self._seed_for(conversations))
        results = self.lab.chat_batch(
            list(conversations),
            max_new_tokens=s["max_new_tokens"],
            temperature=s["temperature"],
            top_p=s["top_p"],
            special_tokens=s["special_tokens"],
        )
        return [r.text for r in results]

    def first_token_scores(self, conversations: list[list[dict]]) -> list[float]:
        """Refusal log-odds at the first answer position (see :func:`phi3lab.safety.first_token_scores`)."""
        from phi3lab.safety.refusal import first_token_scores

        return first_token_scores(
            self.lab, conversations, batch_size=self.batch_size, special_tokens=self.settings["special_tokens"]
        )

    def __repr__(self) -> str:
        return f"LabTarget({self.name!r}, {self.settings})"
