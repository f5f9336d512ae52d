"""What phi3lab knows about each Phi-3 checkpoint before loading it.

The facts come from the model cards and configs (see PHI3_SPEC.md in the reference material):
context lengths, the ids that really end a turn (``config.json`` says eos 2 or 32000, but the
models finish with ``<|end|>`` 32007), the dtype the weights were trained in, and which chat
template revision the tokenizer carries.  Any other Phi-3 checkpoint (a fine-tune, a local
folder) still loads: its :class:`ModelSpec` is read from its own config files.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path

from phi3lab.models.phi3_v.hd import DEFAULT_NUM_CROPS

__all__ = [
    "ModelSpec",
    "KNOWN_MODELS",
    "EMBEDDED",
    "ORIGINAL_CONTEXT",
    "LONGROPE_SWITCH",
    "lookup",
    "spec_from_folder",
    "suggest",
]

ORIGINAL_CONTEXT = 4096
"""Phi-3's pre-training context: the 4K models' length, and every 128K model's
``original_max_position_embeddings`` (PHI3_SPEC.md §1.1, §2.2)."""
LONGROPE_SWITCH = ORIGINAL_CONTEXT
"""Past this many tokens a 128K model's LongRoPE uses its long factors for the whole sequence."""

EMBEDDED = {
    "phi3lab-tiny": "phi3lab-tiny",
    "tiny": "phi3lab-tiny",
    "phi3lab-tiny-vision": "phi3lab-tiny-vision",
    "tiny-vision": "phi3lab-tiny-vision",
    "phi3lab-tiny-vision-reader": "phi3lab-tiny-vision-reader",
    "tiny-vision-reader": "phi3lab-tiny-vision-reader",
}
"""The embedded tiny models (``data/models``): every accepted name → its folder."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Facts about one model.

    Attributes:
        name: hub id (``microsoft/Phi-3-mini-4k-instruct``) or embedded name (``phi3lab-tiny``).
        family: ``"phi3"`` or ``"phi3.5"`` (or ``"phi3lab-tiny"`` for the embedded models).
        modality: ``"text"`` or ``"vision"``.
        context_length: tokens the model was trained to attend over.
        stop_ids: ids that end generation by default.
        recommended_dtype: the dtype the weights are published in.
        parameters: approximate parameter count, for the info table.
        num_crops: default HD crops for vision models (``None`` for text).
        embedded: shipped in ``data/models`` rather than downloaded.
        note: one line shown by ``info()``.
    """

    name: str
    family: str
    modality: str
    context_length: int
    stop_ids: tuple[int, ...]
    recommended_dtype: str = "bfloat16"
    parameters: int | None = None
    num_crops: int | None = None
    embedded: bool = False
    note: str = ""

    @property
    def long_context(self) -> bool:
        """True for 128K models, whose LongRoPE switches factors past 4,096 tokens."""
        return self.context_length > LONGROPE_SWITCH

    @property
    def longrope_switch(self) -> int | None:
        """Past this many tokens LongRoPE uses its long factors (``None`` for models without LongRoPE)."""
        return LONGROPE_SWITCH if self.long_context else None


MINI_STOPS = (32000, 32001, 32007)  # <|endoftext|>, <|assistant|>, <|end|>
VISION_STOPS = (32007, 32000)  # <|end|>, <|endoftext|>

KNOWN_MODELS: dict[str, ModelSpec] = {
    spec.name.lower(): spec
    for spec in (
        ModelSpec(
            "microsoft/Phi-3-mini-4k-instruct",
            "phi3",
            "text",
            ORIGINAL_CONTEXT,
            MINI_STOPS,
            parameters=3_821_079_552,
            note="April 2024 release, updated July 2024 (system role)",
        ),
        ModelSpec(
            "microsoft/Phi-3-mini-128k-instruct",
            "phi3",
            "text",
            131072,
            MINI_STOPS,
            parameters=3_821_079_552,
            note="LongRoPE: long factors past 4,096 tokens",
        ),
        ModelSpec(
            "microsoft/Phi-3.5-mini-instruct",
            "phi3.5",
            "text",
            131072,
            MINI_STOPS,
            parameters=3_821_079_552,
            note="LongRoPE: long factors past 4,096 tokens",
        ),
        ModelSpec(
            "microsoft/Phi-3-vision-128k-instruct",
            "phi3",
            "vision",
            131072,
            VISION_STOPS,
            parameters=4_146_621_440,
            num_crops=DEFAULT_NUM_CROPS,
            note="HD transform, 16 crops by default",
        ),
        ModelSpec(
            "microsoft/Phi-3.5-vision-instruct",
            "phi3.5",
            "vision",
            131072,
            VISION_STOPS,
            parameters=4_146_621_440,
            num_crops=4,
            note="num_crops 4 for several images, 16 for one (model card)",
        ),
    )
}


def lookup(name: str) -> ModelSpec | None:
    """The registry entry for a hub id, case-insensitively; ``None`` when unknown."""
    return KNOWN_MODELS.get(name.lower())


def suggest(name: str, candidates: list[str]) -> str:
    """A ``did you mean`` fragment for an unknown name, or an empty string."""
    lowered = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f" Did you mean {lowered[close[0]]!r}?" if close else ""


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def spec_from_folder(folder: Path, name: str, *, embedded: bool = False) -> ModelSpec:
    """Build a :class:`ModelSpec` for a checkpoint folder from its own config files.

    A known hub id keeps its registry facts; anything else takes the context length from
    ``config.json`` and the stop ids from ``generation_config.json`` (falling back to the
    tokenizer's ``<|end|>`` and ``eos_token``).
    """
    config = _read_json(folder / "config.json")
    known = lookup(name) or _lookup_by_tail(str(config.get("_name_or_path", "")))
    if known is not None:
        return known
    gen = _read_json(folder / "generation_config.json")
    model_type = config.get("model_type", "")
    modality = "vision" if model_type == "phi3_v" else "text"
    stops = gen.get("eos_token_id", config.get("eos_token_id"))
    stops = [stops] if isinstance(stops, int) else list(stops or [])
    # The models end turns with <|end|>; config.json's eos can be </s> (2), which they never emit.
    eos = _read_json(folder / "tokenizer_config.json").get("eos_token")
    for token in ("<|end|>", eos if isinstance(eos, str) else None):
        token_id = _token_id(folder, token) if token else None
        if token_id is not None and token_id not in stops:
            stops.append(token_id)
    family = "phi3lab-tiny" if embedded else ("phi3" if model_type.startswith("phi3") else model_type or "unknown")
    num_crops = _read_json(folder / "preprocessor_config.json").get("num_crops") if modality == "vision" else None
    return ModelSpec(
        name=name,
        family=family,
        modality=modality,
        context_length=int(config.get("max_position_embeddings", ORIGINAL_CONTEXT)),
        stop_ids=tuple(stops),
        recommended_dtype=str(config.get("dtype") or config.get("torch_dtype") or "float32"),
        num_crops=num_crops,
        embedded=embedded,
        note="embedded tiny model: for teaching and tests, not a real assistant" if embedded else "",
    )


def _lookup_by_tail(name_or_path: str) -> ModelSpec | None:
    """A registry entry whose repository name is the last part of ``name_or_path`` (a local copy
    of an official checkpoint keeps ``_name_or_path`` such as ``Phi-3-vision-128k-instruct``)."""
    tail = name_or_path.rstrip("/").split("/")[-1].lower()
    if not tail:
        return None
    for key, spec in KNOWN_MODELS.items():
        if key.split("/")[-1] == tail:
            return spec
    return None


def _token_id(folder: Path, token: str) -> int | None:
    for entry in _read_json(folder / "tokenizer.json").get("added_tokens", []):
        if entry.get("content") == token:
            return int(entry["id"])
    return None
