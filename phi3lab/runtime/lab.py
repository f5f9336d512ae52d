"""The object :func:`phi3lab.load` returns: a model, its tokenizer or processor, and context."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from phi3lab.prompts import budget as _budget
from phi3lab.prompts import chat as _chat
from phi3lab.prompts import inputs as _inputs
from phi3lab.prompts.patches import num_image_tokens
from phi3lab.prompts.token_view import token_table
from phi3lab.runtime import generation as _generation
from phi3lab.runtime.attention_backend import AttentionChoice
from phi3lab.runtime.memory import MemoryPlan
from phi3lab.runtime.registry import ModelSpec
from phi3lab.validation import check_sequence

__all__ = ["Lab"]


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "B"):
        if abs(n) < 1000:
            return f"{n:.1f}{suffix}{unit}" if suffix else f"{n:.0f}{unit}"
        n /= 1000
    return f"{n:.1f}T{unit}"


def _numel(p) -> int:
    """Parameters a weight stands for (a bitsandbytes 4-bit weight packs two per byte)."""
    state = getattr(p, "quant_state", None)
    shape = getattr(state, "shape", None)
    return math.prod(shape) if shape is not None else p.numel()


def _nbytes(p) -> int:
    """Bytes a weight takes, counting the inner tensors of a quantized tensor subclass (torchao)."""
    flatten = getattr(p, "__tensor_flatten__", None)
    if flatten is not None and type(p).__name__ not in ("Parameter", "Tensor"):
        names, _ = flatten()
        return sum(_nbytes(getattr(p, n)) for n in names)
    return p.numel() * p.element_size()


def shown_path(path: Path, kind: str = "local") -> str:
    """A model folder as a person reads it: embedded models by their place in phi3lab's data
    (``data/models/phi3lab-tiny``), folders under the home directory with ``~``; never a machine's own prefix
    where a shorter true name exists (stored notebook outputs must not carry it)."""
    path = Path(path)
    if kind == "embedded":
        return f"data/models/{path.name}"
    home = Path.home()
    try:
        return "~/" + path.resolve().relative_to(home).as_posix()
    except ValueError:
        return str(path)


@dataclasses.dataclass
class Lab:
    """A loaded model with everything needed to run and inspect it.

    Attributes:
        model: the transformers model (``Phi3ForCausalLM`` or phi3lab's ``Phi3VForCausalLM``).
        processor: the tokenizer (text models) or the processor (vision models).
        attention: the :class:`~phi3lab.runtime.attention_backend.AttentionChoice` it was loaded with.
        spec: the :class:`~phi3lab.runtime.registry.ModelSpec` (context length, stop ids, ...).
        path: the folder the files were read from.
        kind: ``"embedded"``, ``"local"`` or ``"hub"``.
        load_seconds: wall time of the load.
        memory: the :class:`~phi3lab.runtime.memory.MemoryPlan` it was loaded with: dtype, weight
            quantization, the estimate and the reason (``None`` for a Lab built by hand).
    """

    model: Any
    processor: Any
    attention: AttentionChoice
    spec: ModelSpec
    path: Path
    kind: str
    load_seconds: float = 0.0
    memory: MemoryPlan | None = None

    _guard: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def guard_output_attentions(self, budget: int | None = None) -> None:
        """Check every ``output_attentions=True`` call on :attr:`model` against free memory before it runs
        (:func:`phi3lab.load` does this).  The hook's handle is kept on the Lab; calling again replaces it."""
        from phi3lab.inspect.capture import guard_output_attentions

        if self._guard is not None:
            self._guard.remove()
        self._guard = guard_output_attentions(self.model, budget)

    @property
    def tokenizer(self):
        """The tokenizer, also for vision models (whose processor wraps one)."""
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def num_parameters(self) -> int:
        """Parameters of the model as published (a quantized weight counts what it stands for)."""
        return sum(_numel(p) for p in self.model.parameters())

    @property
    def quantization(self) -> str | None:
        """``None``, ``"int8"`` or ``"nf4"``: how the decoder's projections are stored."""
        return self.memory.quantize if self.memory is not None else None

    def quantized_modules(self) -> dict[str, str]:
        """Module name → storage of every quantized module (empty for a full-precision model)."""
        from phi3lab.runtime.quantization import quantized_modules

        return quantized_modules(self.model)

    def unquantized(self, **kwargs) -> Lab:
        """The same checkpoint loaded again without quantization (same device, dtype and kernel), to
        state what quantization changes; keyword arguments go to :func:`phi3lab.load`.

        Raises:
            NotEnoughMemoryError: the full-precision model does not fit (the message has the numbers).
        """
        from phi3lab import load  # the package's lazy name: phi3lab.runtime.loading builds Labs, so no cycle here

        source = self.path.name if self.kind == "embedded" else self.path  # a hub snapshot's folder pins it
        options = dict(
            device=self.attention.device,
            dtype=self.attention.dtype,
            attn=self.attention.impl,
            verbose=False,
            quantize=None,
        )
        if self.memory is not None:
            usage = self.memory.usage
            options.update(use=usage.use, context=usage.context, batch=usage.batch)
        options.update(kwargs)
        return load(source, **options)

    def _info_rows(self) -> list[tuple[str, str]]:
        n = self.num_parameters
        nbytes = sum(_nbytes(p) for p in self.model.parameters())
        tok = self.tokenizer
        stops = ", ".join(f"{i} {tok.convert_ids_to_tokens(i)}" for i in self.spec.stop_ids)
        context = f"{self.spec.context_length:,} tokens"
        if self.spec.long_context:
            context += " (LongRoPE: short factors up to 4,096 tokens, long factors beyond)"
        rows = [
            ("model", f"{self.spec.name} ({self.kind}: {shown_path(self.path, self.kind)})"),
            ("family", f"{self.spec.family} · {self.spec.modality}"),
            ("parameters", f"{_human(n)} ({n:,})"),
            (
                "size",
                f"{nbytes / 2**20:.1f} MiB as {self.memory.weights_name if self.memory else self.attention.dtype_name}",
            ),
            ("dtype", self.attention.dtype_name),
            ("device", self.attention.device),
            ("attention", f"{self.attention.impl} — {self.attention.reason}"),
        ]
        if self.memory is not None:
            rows.append(("memory", self.memory.reason))
        rows += [("context", context), ("stop ids", stops)]
        if self.num_crops:
            rows.append(("num_crops", f"{self.num_crops} (the processor's; lab.processor.image_processor.num_crops)"))
        if self.spec.note:
            rows.append(("note", self.spec.note))
        if self.spec.unverified:
            rows.append(("unverified", self.spec.unverified))
        return rows

    def info(self) -> str:
        """A plain-text table: model, size, parameters, dtype, device, attention, memory, context."""
        from phi3lab.reprs import rows_text

        return rows_text(self._info_rows())

    # --- chat ---------------------------------------------------------------------------------

    @property
    def template_revision(self) -> str:
        """Which Phi-3 chat template the tokenizer carries (see :func:`phi3lab.prompts.chat.template_revision`)."""

        return _chat.template_revision(self.tokenizer)

    def render(self, conversation, images: Sequence = (), *, add_generation_prompt: bool = True, **kwargs) -> str:
        """The prompt string the model's own template makes of a conversation (validated)."""

        return _chat.render(
            self.tokenizer,
            conversation,
            add_generation_prompt=add_generation_prompt,
            num_images=len(images),
            vision=self.spec.modality == "vision",
            **kwargs,
        )

    @property
    def num_crops(self) -> int | None:
        """The crop budget images get by default: the processor's own value (``None`` for text models).

        This is the one source of truth: the checkpoint's ``preprocessor_config.json`` sets it (16 for
        Phi-3-vision, 4 for Phi-3.5-vision), ``spec.num_crops`` repeats the folder's value, and
        ``hd.DEFAULT_NUM_CROPS`` is only the default of size-only helpers.  Every counter reads it —
        :meth:`encode`, :meth:`chat`, :meth:`tokens`, :meth:`budget` — so
        ``lab.processor.image_processor.num_crops = 16`` changes them all alike.
        """
        image_processor = getattr(self.processor, "image_processor", None)
        return None if image_processor is None else int(image_processor.num_crops)

    def encode(self, conversation, images: Sequence | None = None, *, num_crops: int | None = None, **kwargs):
        """Validate, render and tokenize a conversation once: an :class:`~phi3lab.prompts.inputs.Inputs`.

        ``conversation`` is a string, HF messages, or token ids (a list of ints or a tensor); an ``Inputs``
        is returned as it is.  ``model(**inputs)`` and ``model.generate(**inputs)`` take the result as it
        is; it also carries the token table, each image's HD layout and token span, and
        :meth:`~phi3lab.prompts.inputs.Inputs.positions` by meaning (see :mod:`phi3lab.prompts.inputs`).
        """

        return _inputs.encode(self, conversation, images, num_crops=num_crops, **kwargs)

    def encode_batch(self, conversations: Sequence, images: Sequence | None = None, **kwargs):
        """Several conversations as one left-padded :class:`~phi3lab.prompts.inputs.Inputs` (``images``:
        one list of pictures per conversation)."""

        return _inputs.encode_batch(self, conversations, images, **kwargs)

    def hooks(self, *, max_bytes: int | None = None):
        """A :class:`~phi3lab.inspect.hooks.Hooks` block on this model: read or edit any named site."""
        from phi3lab.inspect.hooks import Hooks

        return Hooks(self.model, max_bytes=max_bytes)

    def run_with_cache(self, conversation, images: Sequence | None = None, **kwargs):
        """One forward with the asked sites kept: ``(logits, Cache)`` — see :func:`phi3lab.inspect.cache.run_with_cache`.

        Keyword arguments: ``sites`` (default attention rows and the residual stream), ``layers``, ``heads``,
        ``positions`` (default ``"all"``), ``rollout``, ``max_bytes``, ``num_crops``.
        """
        from phi3lab.inspect.cache import run_with_cache

        return run_with_cache(self, conversation, images, **kwargs)

    def generate_with_cache(self, conversation, images: Sequence | None = None, **kwargs):
        """Greedy generation with the asked sites kept: ``(ChatResult, Cache)`` — see
        :func:`phi3lab.inspect.cache.generate_with_cache` (``max_new_tokens`` and the keywords of
        :meth:`run_with_cache`)."""
        from phi3lab.inspect.cache import generate_with_cache

        return generate_with_cache(self, conversation, images, **kwargs)

    def patch(self, clean, corrupted, **kwargs):
        """Activation patching clean → corrupted over sites × layers × positions — see
        :func:`phi3lab.inspect.patching.patch`."""
        from phi3lab.inspect.patching import patch

        return patch(self, clean, corrupted, **kwargs)

    def verify(self, conversation="What is 2 plus 3?", images: Sequence | None = None, **kwargs):
        """Run a short prompt plainly and through the hook core and compare every site with transformers'
        own outputs — see :func:`phi3lab.inspect.verify.verify`."""
        from phi3lab.inspect.verify import verify

        return verify(self, conversation, images, **kwargs)

    def attribute(self, conversation, images: Sequence | None = None, **kwargs):
        """Which words, turns or image regions the answer came from — see :func:`phi3lab.attribution.attribute`."""
        from phi3lab.attribution import attribute

        return attribute(self, conversation, images, **kwargs)

    def _crops(self, num_crops: int | None) -> int:
        return self.num_crops if num_crops is None else num_crops

    def tokens(self, conversation, images: Sequence = (), *, num_crops: int | None = None, **kwargs):
        """A :class:`~phi3lab.prompts.token_view.TokenTable` of what the model sees, role by role."""

        images = check_sequence(
            "images",
            images,
            item="pictures or (width, height) sizes",
            example="images=[picture] or images=[(1920, 1080)]",
        )
        counts = [num_image_tokens(*_budget.image_size(im), self._crops(num_crops)) for im in images] or None
        return token_table(
            self.tokenizer, conversation, image_token_counts=counts, vision=self.spec.modality == "vision", **kwargs
        )

    def budget(
        self, conversation, images: Sequence = (), *, num_crops: int | None = None, max_new_tokens: int = 0, **kwargs
    ):
        """Token counts (images from their sizes alone) against the context; flags LongRoPE.

        Extra keyword arguments go to :func:`phi3lab.prompts.chat.render` (``fold_system_prompt``, ``special_tokens``).
        """

        images = check_sequence(
            "images",
            images,
            item="pictures or (width, height) sizes",
            example="images=[picture] or images=[(1920, 1080)]",
        )
        return _budget.token_budget(
            self.tokenizer,
            conversation,
            self.spec,
            images=images,
            num_crops=self._crops(num_crops) if images else None,
            max_new_tokens=max_new_tokens,
            vision=self.spec.modality == "vision",
            **kwargs,
        )

    def chat(
        self,
        conversation,
        images: Sequence | None = None,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stream: bool = True,
        seed: int | None = None,
        special_tokens: str = "refuse",
        on_text=None,
        stop=None,
    ):
        """Answer a conversation, streaming the text as it is produced.

        Args:
            conversation: a string (one user turn) or HF messages.
            images: images for the ``<|image_N|>`` tags (vision models).
            max_new_tokens: upper bound on the answer's length.
            temperature: 0 (the default) decodes greedily and deterministically.
            top_p: nucleus sampling mass when ``temperature > 0``.
            stream: print the answer while it is generated.
            seed: seed for sampling.
            special_tokens: control-token strings typed in the content (``<|end|>``, ``<|user|>``...):
                ``"refuse"`` (default, a clear error), ``"allow"`` (the official behaviour: they become
                control tokens, e.g. to probe forged turns) or ``"escape"`` (they reach the model as text).
            on_text: called with each new piece of the answer's text as it is produced.
            stop: a :class:`threading.Event`; setting it (from another thread) ends the answer after
                the current token (``finish_reason="stopped"``).

        Returns:
            A :class:`~phi3lab.runtime.generation.ChatResult` (text, ids, counts, timings).
        """

        return _generation.chat(
            self,
            conversation,
            images,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stream=stream,
            seed=seed,
            special_tokens=special_tokens,
            on_text=on_text,
            stop=stop,
        )

    def chat_batch(self, conversations: Sequence, **kwargs):
        """Answer several text conversations at once (left padding); returns a list of results."""

        return _generation.chat_batch(self, conversations, **kwargs)

    def session(self, system: str | None = None):
        """A :class:`~phi3lab.runtime.generation.ChatSession` that keeps multi-turn history."""

        return _generation.ChatSession(self, system=system)

    # --- display ------------------------------------------------------------------------------

    def to_text(self) -> str:
        """What ``print(lab)`` shows: the :meth:`info` table."""
        return self.info()

    __str__ = to_text

    def _repr_html_(self) -> str:
        from phi3lab.reprs import rows_html

        return rows_html(self._info_rows(), title=f"Lab: {self.spec.name}")

    def __repr__(self) -> str:
        return f"Lab({self.spec.name!r}, {self.attention.impl}, {self.attention.dtype_name}, {self.attention.device})"
