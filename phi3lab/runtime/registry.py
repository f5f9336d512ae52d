"""What phi3lab knows about each Phi-3-family checkpoint before loading it.

The facts come from the model cards and configs (see PHI3_SPEC.md in the reference material):
context lengths, the ids that really end a turn (``config.json`` says eos 2 or 32000, but the
models finish with ``<|end|>`` 32007), the dtype the weights were published in, which chat
template revision the tokenizer is expected to carry, and the :class:`Architecture` numbers that
size the weights and activations (so :func:`phi3lab.runtime.memory.plan_memory` can say what fits
before anything is downloaded).  Any other Phi-3 checkpoint (a fine-tune, a local folder) still
loads: its :class:`ModelSpec` is read from its own config files.

The family, as registered:

===============================  =======  ======  ==========  =====================================
model                            context  params  stop ids    notes
===============================  =======  ======  ==========  =====================================
Phi-3-mini-4k / -128k-instruct   4K/128K  3.82 B  32000/1/7   July 2024 template (system role)
Phi-3.5-mini-instruct            128K     3.82 B  32000/1/7   LongRoPE
Phi-3-medium-4k / -128k          4K/128K  13.96 B 32000/1/7   grouped kv (40 heads, 10 kv heads)
Phi-3-vision-128k-instruct       128K     4.15 B  32007/32000 16 crops
Phi-3.5-vision-instruct          128K     4.15 B  32007/32000 4 crops (several images / frames)
Phi-4-mini-instruct              128K     3.84 B  200020/199999  partial rotary 0.75, tied
                                                             embeddings, another tokenizer
===============================  =======  ======  ==========  =====================================

Phi-4-mini's tokenizer (200,064 ids) and chat template (no newline after the role tags) are not
among the official files phi3lab could check offline; its spec says so (:attr:`ModelSpec.unverified`)
and :func:`phi3lab.load` repeats it as an :class:`UnverifiedModelWarning` instead of guessing.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path

from phi3lab.errors import Phi3LabWarning
from phi3lab.models.phi3_v.hd import DEFAULT_NUM_CROPS

__all__ = [
    "Architecture",
    "ModelSpec",
    "UnverifiedModelWarning",
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
    "phi3lab-tiny-vision-control": "phi3lab-tiny-vision-control",
    "tiny-vision-control": "phi3lab-tiny-vision-control",
}
"""The embedded tiny models (``data/models``): every accepted name → its folder."""


class UnverifiedModelWarning(Phi3LabWarning):
    """A checkpoint whose tokenizer or chat template phi3lab could not check against the official files."""


@dataclasses.dataclass(frozen=True)
class Architecture:
    """The numbers that size a Phi-3-family model: its weights, KV cache and activations.

    Attributes:
        layers, hidden, heads, kv_heads, intermediate, vocab: ``config.json``'s
            ``num_hidden_layers``, ``hidden_size``, ``num_attention_heads``, ``num_key_value_heads``,
            ``intermediate_size`` and ``vocab_size``.
        head_dim: per-head width (``hidden // heads`` unless the config says otherwise).
        tied_embeddings: ``lm_head`` shares the embedding matrix (Phi-4-mini).
        partial_rotary_factor: the share of each head RoPE rotates (Phi-4-mini: 0.75).
        sliding_window: the attention window (``None``: none); the KV cache keeps at most this many tokens.
        vision_parameters: parameters outside the language model (CLIP tower, projector, separators).
        vision_hidden, vision_layers, vision_intermediate: the CLIP tower's numbers (0 for text models).

    Examples:
        >>> KNOWN_MODELS["microsoft/phi-3-mini-4k-instruct"].architecture.parameters
        3821079552
    """

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int = 0
    tied_embeddings: bool = False
    partial_rotary_factor: float = 1.0
    sliding_window: int | None = None
    vision_parameters: int = 0
    vision_hidden: int = 0
    vision_layers: int = 0
    vision_intermediate: int = 0

    def __repr__(self) -> str:
        return f"Architecture({self.layers} layers, hidden {self.hidden}, {self.heads} heads, {self.kv_heads} kv heads)"

    def __post_init__(self):
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    @property
    def linear_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(out, in)`` of one decoder layer's projections: qkv, o, gate_up, down (the quantizable weights)."""
        qkv = (self.heads + 2 * self.kv_heads) * self.head_dim
        return (
            (qkv, self.hidden),
            (self.hidden, self.heads * self.head_dim),
            (2 * self.intermediate, self.hidden),
            (self.hidden, self.intermediate),
        )

    @property
    def linear_parameters(self) -> int:
        """Parameters in the decoder layers' projections, all layers (what weight quantization shrinks)."""
        return self.layers * sum(rows * cols for rows, cols in self.linear_shapes)

    @property
    def parameters(self) -> int:
        """Every parameter: embeddings, ``lm_head`` (unless tied), layers, norms, vision parts."""
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        norms = (2 * self.layers + 1) * self.hidden
        return embeddings + self.linear_parameters + norms + self.vision_parameters

    @classmethod
    def from_config(cls, config) -> Architecture:
        """The numbers of a transformers config (``Phi3Config`` or phi3lab's ``Phi3VConfig``)."""
        get = getattr(config, "get", None) if isinstance(config, dict) else None
        value = (
            (lambda key, default=None: config.get(key, default))
            if get
            else (lambda key, default=None: getattr(config, key, default))
        )
        heads = int(value("num_attention_heads"))
        vision = value("vision_config")
        vision = vision.to_dict() if hasattr(vision, "to_dict") else (vision or {})
        rope = value("rope_parameters") or {}
        partial = value("partial_rotary_factor", None) or rope.get("partial_rotary_factor") or 1.0
        return cls(
            layers=int(value("num_hidden_layers")),
            hidden=int(value("hidden_size")),
            heads=heads,
            kv_heads=int(value("num_key_value_heads") or heads),
            intermediate=int(value("intermediate_size")),
            vocab=int(value("vocab_size")),
            head_dim=int(value("head_dim", None) or 0),
            tied_embeddings=bool(value("tie_word_embeddings", False)),
            partial_rotary_factor=float(partial),
            sliding_window=value("sliding_window", None),
            vision_hidden=int(vision.get("hidden_size", 0)),
            vision_layers=int(vision.get("num_hidden_layers", 0)),
            vision_intermediate=int(vision.get("intermediate_size", 0)),
        )


PHI3_MINI = Architecture(32, 3072, 32, 32, 8192, 32064, sliding_window=2047)
PHI3_MINI_128K = dataclasses.replace(PHI3_MINI, sliding_window=None)  # no window that bites within 128K
# CLIP ViT-L/14-336 303,507,456 + projector 22,026,240 + separators 8,192 (PHI3_SPEC.md §2.1)
PHI3_VISION = dataclasses.replace(
    PHI3_MINI,
    sliding_window=131072,
    vision_parameters=325_541_888,
    vision_hidden=1024,
    vision_layers=24,
    vision_intermediate=4096,
)
PHI3_MEDIUM = Architecture(40, 5120, 40, 10, 17920, 32064, sliding_window=2047)
PHI3_MEDIUM_128K = dataclasses.replace(PHI3_MEDIUM, sliding_window=None)
PHI4_MINI = Architecture(
    32, 3072, 24, 8, 8192, 200064, head_dim=128, tied_embeddings=True, partial_rotary_factor=0.75, sliding_window=262144
)


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
        parameters: parameter count (the published checkpoint's, derived from its shapes).
        num_crops: the crop budget the checkpoint's ``preprocessor_config.json`` states (``None`` for
            text).  The processor's value is the truth at run time (``lab.num_crops``, which every
            counter reads); :func:`spec_from_folder` copies the folder's value here, so the two agree
            for a loaded model.  ``phi3lab.models.phi3_v.hd.DEFAULT_NUM_CROPS`` (16) is only the
            default of functions that count from an image size without a processor.
        embedded: shipped in ``data/models`` rather than downloaded.
        note: one line shown by ``info()``.
        architecture: the :class:`Architecture` numbers (``None`` when unknown).
        template: the chat-template revision the checkpoint is expected to carry
            (:data:`phi3lab.prompts.chat.REVISIONS`, or another name where phi3lab has no builder);
            the loaded tokenizer's own template is what is used (``lab.template_revision`` names it).
        unverified: what phi3lab could not check offline about this model (its tokenizer or
            template), said at load time; empty for checked models.
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
    architecture: Architecture | None = None
    template: str | None = None
    unverified: str = ""

    def __repr__(self) -> str:
        where = "embedded" if self.embedded else "hub"
        return f"ModelSpec({self.name!r}, {self.modality}, {self.context_length:,} tokens, {where})"

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
PHI4_STOPS = (200020, 199999)  # <|end|>, <|endoftext|> (Phi-4-mini's generation_config.json)
STOP_TOKENS = {
    32000: "<|endoftext|>",
    32001: "<|assistant|>",
    32007: "<|end|>",
    199999: "<|endoftext|>",
    200020: "<|end|>",
}
"""What each registered stop id is in the published tokenizer (checked against a folder's own)."""
PHI4_UNVERIFIED = (
    "Phi-4-mini uses another tokenizer (200,064 ids, <|end|> = 200020, <|endoftext|> = 199999) and a chat "
    "template without a newline after the role tags, which could not be checked offline against the official "
    "files; phi3lab uses this checkpoint's own tokenizer.json and chat_template as they are, takes the stop ids "
    "from its own generation_config.json and tokenizer, and has no Python builder for its template "
    "(lab.template_revision says 'unknown'); compare a rendered prompt with the model card before trusting it"
)

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
            architecture=PHI3_MINI,
            template="phi3-mini-2024-07",
        ),
        ModelSpec(
            "microsoft/Phi-3-mini-128k-instruct",
            "phi3",
            "text",
            131072,
            MINI_STOPS,
            parameters=3_821_079_552,
            note="LongRoPE: long factors past 4,096 tokens",
            architecture=PHI3_MINI_128K,
            template="phi3-mini-2024-07",
        ),
        ModelSpec(
            "microsoft/Phi-3.5-mini-instruct",
            "phi3.5",
            "text",
            131072,
            MINI_STOPS,
            parameters=3_821_079_552,
            note="LongRoPE: long factors past 4,096 tokens",
            architecture=PHI3_MINI_128K,
            template="phi3-mini-2024-07",
        ),
        ModelSpec(
            "microsoft/Phi-3-medium-4k-instruct",
            "phi3",
            "text",
            ORIGINAL_CONTEXT,
            MINI_STOPS,
            parameters=13_960_238_080,
            note="14B: 40 layers, 40 query heads sharing 10 key/value heads; bfloat16 needs 26 GiB",
            architecture=PHI3_MEDIUM,
            template="phi3-mini-2024-04",
        ),
        ModelSpec(
            "microsoft/Phi-3-medium-128k-instruct",
            "phi3",
            "text",
            131072,
            MINI_STOPS,
            parameters=13_960_238_080,
            note="14B with LongRoPE: long factors past 4,096 tokens",
            architecture=PHI3_MEDIUM_128K,
            template="phi3-mini-2024-04",
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
            architecture=PHI3_VISION,
            template="phi3-vision",
        ),
        ModelSpec(
            "microsoft/Phi-3.5-vision-instruct",
            "phi3.5",
            "vision",
            131072,
            VISION_STOPS,
            parameters=4_146_621_440,
            num_crops=4,
            note="several images and video frames per prompt; num_crops 4 (the model card: 16 for one image)",
            architecture=PHI3_VISION,
            template="phi3-vision",
        ),
        ModelSpec(
            "microsoft/Phi-4-mini-instruct",
            "phi4",
            "text",
            131072,
            PHI4_STOPS,
            parameters=3_836_021_760,
            note="partial rotary (75% of each head), tied embeddings, 24 query heads sharing 8 key/value heads",
            architecture=PHI4_MINI,
            template="phi4-mini",
            unverified=PHI4_UNVERIFIED,
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

    A known hub id keeps its registry facts, except ``num_crops``, which always comes from the
    folder's ``preprocessor_config.json`` (the processor's value is the one source of truth).  Anything
    else takes the context length from ``config.json`` and the stop ids from ``generation_config.json``
    (falling back to the tokenizer's ``<|end|>`` and ``eos_token``).  A model whose tokenizer phi3lab
    could not check (Phi-4-mini, or any Phi-3-architecture checkpoint with a vocabulary larger than
    Phi-3's 32,064 ids) gets its stop ids from its own files too, and :attr:`ModelSpec.unverified` says so.
    """
    config = _read_json(folder / "config.json")
    known = lookup(name) or _lookup_by_tail(str(config.get("_name_or_path", "")))
    modality = "vision" if config.get("model_type") == "phi3_v" else "text"
    num_crops = _read_json(folder / "preprocessor_config.json").get("num_crops") if modality == "vision" else None
    try:
        architecture = Architecture.from_config(config)
    except (TypeError, ValueError, KeyError, ZeroDivisionError):
        architecture = None  # the loader's own checks name what is wrong with config.json
    own = _own_spec(folder, name, config, modality, num_crops, embedded, architecture)
    if known is not None:
        spec = dataclasses.replace(known, num_crops=num_crops, architecture=architecture or known.architecture)
        added = {entry.get("id"): entry.get("content") for entry in _added_tokens(folder)}
        if known.unverified:  # its tokenizer could not be checked: the folder's own stop ids, not a guess
            return dataclasses.replace(spec, stop_ids=own.stop_ids)
        if any(added.get(i) != STOP_TOKENS.get(i) for i in known.stop_ids):
            return dataclasses.replace(
                spec,
                stop_ids=own.stop_ids,
                note=f"{known.note}; its tokenizer is not the published one, so the stop ids are its own",
            )
        return spec
    vocab = config.get("vocab_size")
    if not embedded and isinstance(vocab, int) and vocab > PHI3_MINI.vocab:
        return dataclasses.replace(
            own,
            unverified=(
                f"this checkpoint's vocabulary has {vocab:,} ids, not Phi-3's 32,064: its tokenizer and chat "
                "template are not Phi-3's and could not be checked offline; phi3lab uses its own tokenizer.json, "
                "chat_template and stop ids as they are"
            ),
        )
    return own


def _own_spec(folder, name, config, modality, num_crops, embedded, architecture) -> ModelSpec:
    gen = _read_json(folder / "generation_config.json")
    model_type = config.get("model_type", "")
    stops = gen.get("eos_token_id", config.get("eos_token_id"))
    stops = [stops] if isinstance(stops, int) else list(stops or [])
    # The models end turns with <|end|>; config.json's eos can be </s> (2), which they never emit.
    eos = _read_json(folder / "tokenizer_config.json").get("eos_token")
    for token in ("<|end|>", eos if isinstance(eos, str) else None):
        token_id = _token_id(folder, token) if token else None
        if token_id is not None and token_id not in stops:
            stops.append(token_id)
    family = "phi3lab-tiny" if embedded else ("phi3" if model_type.startswith("phi3") else model_type or "unknown")
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
        architecture=architecture,
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


def _added_tokens(folder: Path) -> list[dict]:
    try:
        entries = _read_json(folder / "tokenizer.json").get("added_tokens", [])
    except (OSError, ValueError):  # a damaged tokenizer.json: the loader's checks name it
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _token_id(folder: Path, token: str) -> int | None:
    for entry in _added_tokens(folder):
        if entry.get("content") == token:
            return int(entry["id"])
    return None
