"""The object :func:`phi3lab.load` returns: a model, its tokenizer or processor, and context."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from phi3lab.attention_backend import AttentionChoice
from phi3lab.registry import ModelSpec

__all__ = ["Lab"]


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "B"):
        if abs(n) < 1000:
            return f"{n:.1f}{suffix}{unit}" if suffix else f"{n:.0f}{unit}"
        n /= 1000
    return f"{n:.1f}T{unit}"


@dataclasses.dataclass
class Lab:
    """A loaded model with everything needed to run and inspect it.

    Attributes:
        model: the transformers model (``Phi3ForCausalLM`` or phi3lab's ``Phi3VForCausalLM``).
        processor: the tokenizer (text models) or the processor (vision models).
        attention: the :class:`~phi3lab.attention_backend.AttentionChoice` it was loaded with.
        spec: the :class:`~phi3lab.registry.ModelSpec` (context length, stop ids, ...).
        path: the folder the files were read from.
        kind: ``"embedded"``, ``"local"`` or ``"hub"``.
        load_seconds: wall time of the load.
    """

    model: Any
    processor: Any
    attention: AttentionChoice
    spec: ModelSpec
    path: Path
    kind: str
    load_seconds: float = 0.0

    @property
    def tokenizer(self):
        """The tokenizer, also for vision models (whose processor wraps one)."""
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def info(self) -> str:
        """A plain-text table: model, size, parameters, dtype, device, attention, context."""
        n = self.num_parameters
        nbytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        tok = self.tokenizer
        stops = ", ".join(f"{i} {tok.convert_ids_to_tokens(i)}" for i in self.spec.stop_ids)
        context = f"{self.spec.context_length:,} tokens"
        if self.spec.long_context:
            context += " (LongRoPE: short factors up to 4,096 tokens, long factors beyond)"
        rows = [
            ("model", f"{self.spec.name} ({self.kind}: {self.path})"),
            ("family", f"{self.spec.family} · {self.spec.modality}"),
            ("parameters", f"{_human(n)} ({n:,})"),
            ("size", f"{nbytes / 2**20:.1f} MiB in {self.attention.dtype_name}"),
            ("dtype", self.attention.dtype_name),
            ("device", self.attention.device),
            ("attention", f"{self.attention.impl} — {self.attention.reason}"),
            ("context", context),
            ("stop ids", stops),
        ]
        if self.spec.num_crops:
            rows.append(("num_crops", str(self.spec.num_crops)))
        if self.spec.note:
            rows.append(("note", self.spec.note))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def __repr__(self) -> str:
        return f"Lab({self.spec.name!r}, {self.attention.impl}, {self.attention.dtype_name}, {self.attention.device})"
