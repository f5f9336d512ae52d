"""How much memory a model needs for the use it is loaded for, and which dtype and quantization fit.

:func:`estimate_memory` adds the **weights** to the **activations of the intended use**;
:func:`plan_memory` compares that with the memory the device has *available now* (not its total) and
picks the dtype and, when asked (``quantize="auto"``, ``"int8"``, ``"nf4"``), the weight
quantization, returning a :class:`MemoryPlan` that carries its reason like
:class:`~phi3lab.runtime.attention_backend.AttentionChoice` does.  An impossible request raises
:class:`NotEnoughMemoryError` before anything is loaded, with the numbers of every option.

What is counted (``b`` = bytes per element of the compute dtype, ``T`` = ``context`` tokens,
``B`` = ``batch``, the rest are the :class:`~phi3lab.runtime.registry.Architecture` numbers):

* **weights** — every parameter at ``b`` bytes; quantization shrinks only the decoder layers'
  projections (``qkv_proj``, ``o_proj``, ``gate_up_proj``, ``down_proj``): int8 to 1 byte plus one
  float32 scale per row, NF4 to 4 bits plus its block scales (0.516 bytes with double quantization).
  Embeddings, ``lm_head``, norms and the vision tower stay in the compute dtype, so the module tree
  keeps its names and ``lm_head`` stays exact.
* **KV cache** (``chat``, ``sweep``) — ``2 · layers · B · min(T, window) · kv_heads · head_dim · b``.
* **workspace** — the widest step of one forward over ``T`` tokens, one layer at a time:
  ``B · T · ((7·intermediate + 3·hidden + qkv) · b + 4·hidden)`` — the MLP's ``gate_up`` output and
  its halves' activations, the layer's input and residual, the attention projections, RMSNorm's
  float32 copy, with the allocator's slack as measured at Phi-3-mini width (the bare minimum is
  ``4·intermediate + 2·hidden``); plus the attention mask (``T²`` bytes; sdpa's CPU and CUDA kernels
  keep no ``T²`` scores).  Eager attention adds ``heads · T²`` scores in ``b`` and in float32; a
  quantized model adds one dequantized projection; a vision model's CLIP tower runs first, on
  ``(num_crops + 1)`` crops of 577 positions per image.
* **logits** — the last position's (``chat``: generation keeps only it, and its float32 scores), or
  every position's in ``b`` (``capture``: the forward returns them all).
* **kept by a capture** (``capture``) — the residual stream at every position before the first
  layer and after each one, in float32, as :func:`phi3lab.inspect.cache.run_with_cache` keeps it;
  with ``need_weights`` also every layer's eager attention maps (``layers · B · heads · T² · b``).
  Attention rows captured under sdpa are budgeted by the capture itself (a quarter of free memory).

A plan fits when the total is at most 90 % of the available memory (:data:`HEADROOM`): the rest is
for Python, the notebook and the allocator.  ``benchmarks/memory_estimate.py`` prints estimate against
measured peak on the embedded models and on Phi-3-mini-width stand-ins.

    >>> from phi3lab.runtime.hardware import DeviceMemory, Probes
    >>> from phi3lab.runtime.registry import lookup
    >>> laptop = DeviceMemory("cpu", available=14 * 2**30, total=16 * 2**30)
    >>> mini = lookup("microsoft/Phi-3-mini-4k-instruct").architecture
    >>> plan = plan_memory(mini, device="cpu", probes=Probes(), memory=laptop)
    >>> plan.dtype_name, plan.quantize
    ('bfloat16', None)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from phi3lab.errors import Phi3LabError
from phi3lab.runtime.hardware import DeviceMemory, Probes, probe, probe_memory
from phi3lab.runtime.registry import ORIGINAL_CONTEXT, Architecture

__all__ = [
    "USES",
    "QUANTIZATIONS",
    "HEADROOM",
    "NotEnoughMemoryError",
    "QuantizationError",
    "Usage",
    "Weights",
    "Estimate",
    "Option",
    "MemoryPlan",
    "estimate_memory",
    "plan_memory",
    "size_text",
]

USES = ("chat", "capture", "sweep")
QUANTIZATIONS = ("int8", "nf4")
HEADROOM = 0.9
"""The share of the available memory a plan may take."""
CLIP_POSITIONS = 577  # 24 × 24 patches + the class token, per 336×336 crop
_NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes, an 8-bit absmax per 64, a float32 per 256 blocks
_PROJECTION = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


class NotEnoughMemoryError(Phi3LabError, MemoryError):
    """The model cannot fit the device's available memory in any of the ways allowed; the message
    gives the numbers of each way and what to change, ``options`` the :class:`Option` records."""

    def __init__(self, message: str, options: Sequence[Option] = ()):
        super().__init__(message)
        self.options = tuple(options)


class QuantizationError(Phi3LabError, ValueError):
    """A weight quantization that cannot run here (no backend, a device it does not support)."""


def size_text(n: float | None) -> str:
    """Bytes in GiB, MiB or KiB with one decimal (``"?"`` when unknown).

    Examples:
        >>> size_text(7.6 * 2**30), size_text(3 * 2**20), size_text(2048), size_text(None)
        ('7.6 GiB', '3.0 MiB', '2.0 KiB', '?')
    """
    if n is None:
        return "?"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1024:.1f} KiB"


@dataclasses.dataclass(frozen=True)
class Usage:
    """What the model will be used for, which sets the activation memory.

    Attributes:
        use: ``"chat"`` (generation with a KV cache), ``"capture"`` (one forward over the whole
            context keeping the residual stream and every position's logits, as ``run_with_cache``
            does) or ``"sweep"`` (``batch`` conversations generated at once).
        context: tokens per sequence (prompt plus answer), the worst case the plan must hold.
        batch: sequences at once.
        images: images per sequence (vision models).
        num_crops: the crop budget of those images.
        need_weights: eager attention maps are requested (``output_attentions``).
    """

    use: str = "chat"
    context: int = ORIGINAL_CONTEXT
    batch: int = 1
    images: int = 0
    num_crops: int = 16
    need_weights: bool = False

    def __repr__(self) -> str:
        extra = f", {self.images} image(s) × {self.num_crops} crops" if self.images else ""
        weights = ", attention weights" if self.need_weights else ""
        return f"Usage({self.use}, {self.context:,} tokens, batch {self.batch}{extra}{weights})"

    def __post_init__(self):
        if self.use not in USES:
            raise ValueError(f"use must be one of {', '.join(map(repr, USES))}, got {self.use!r}")
        for name in ("context", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number ≥ 1, got {value!r}")
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 0:
            raise ValueError(f"images must be a whole number ≥ 0, got {self.images!r}")

    def describe(self) -> str:
        what = {"chat": "chat", "capture": "a capture", "sweep": f"a sweep of {self.batch}"}[self.use]
        text = f"{what} at {self.context:,} tokens"
        if self.use != "sweep" and self.batch > 1:
            text += f" × {self.batch}"
        if self.images:
            text += f" with {self.images} image(s) of {self.num_crops} crops"
        return text + (" with eager attention maps" if self.need_weights else "")


@dataclasses.dataclass(frozen=True)
class Weights:
    """A checkpoint's parameters, split into the projections quantization shrinks and the rest.

    Attributes:
        projections: ``(rows, cols)`` of every decoder-layer projection (``qkv_proj``, ``o_proj``,
            ``gate_up_proj``, ``down_proj``), all layers.
        other: every other parameter (embeddings, ``lm_head``, norms, vision tower).
    """

    projections: tuple[tuple[int, int], ...]
    other: int

    def __repr__(self) -> str:
        return f"Weights({len(self.projections)} projections, {self.other:,} other parameters)"

    @property
    def parameters(self) -> int:
        return self.other + sum(r * c for r, c in self.projections)

    @classmethod
    def from_architecture(cls, arch: Architecture) -> Weights:
        return cls(arch.linear_shapes * arch.layers, arch.parameters - arch.linear_parameters)

    @classmethod
    def from_shapes(cls, shapes: dict[str, Sequence[int]], tied: bool = False) -> Weights:
        """From the safetensors headers (tensor name → shape); a tied ``lm_head`` is counted once."""
        projections, other = [], 0
        for key, shape in shapes.items():
            parts = key.split(".")
            if len(shape) == 2 and "layers" in parts and parts[-2] in _PROJECTION and "vision" not in key:
                projections.append((int(shape[0]), int(shape[1])))
            else:
                other += math.prod(shape)
        return cls(tuple(projections), other)

    def nbytes(self, dtype: torch.dtype, quantize: str | None = None) -> int:
        """Bytes these weights take in ``dtype``, with the projections quantized or not."""
        element = _element(dtype)
        values = sum(r * c for r, c in self.projections)
        rows = sum(r for r, _ in self.projections)
        if quantize is None:
            shrunk = values * element
        elif quantize == "int8":
            shrunk = values + 4 * rows
        elif quantize == "nf4":
            shrunk = math.ceil(values * _NF4_BYTES)
        else:
            raise ValueError(f"quantize must be None, {QUANTIZATIONS}, got {quantize!r}")
        return int(shrunk + self.other * element)

    @property
    def largest_projection(self) -> int:
        return max((r * c for r, c in self.projections), default=0)


def _element(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes a model needs: weights plus the activations of one :class:`Usage`."""

    weights: int
    kv_cache: int
    workspace: int
    logits: int
    kept: int

    def __repr__(self) -> str:
        parts = ", ".join(f"{k} {size_text(v)}" for k, v in self.rows() if k != "total")
        return f"Estimate({size_text(self.total)}: {parts})"

    @property
    def activations(self) -> int:
        return self.kv_cache + self.workspace + self.logits + self.kept

    @property
    def total(self) -> int:
        return self.weights + self.activations

    def rows(self) -> list[tuple[str, int]]:
        return [
            ("weights", self.weights),
            ("KV cache", self.kv_cache),
            ("workspace", self.workspace),
            ("logits", self.logits),
            ("kept by capture", self.kept),
            ("total", self.total),
        ]


def estimate_memory(
    arch: Architecture,
    dtype: torch.dtype,
    usage: Usage = Usage(),
    *,
    weights: Weights | None = None,
    quantize: str | None = None,
) -> Estimate:
    """Bytes ``arch`` needs in ``dtype`` (weights quantized or not) for ``usage``; see the module docstring.

    Args:
        arch: the model's numbers (``spec.architecture`` or ``Architecture.from_config(config)``).
        dtype: the compute dtype (float32, bfloat16, float16).
        usage: what it will run.
        weights: the checkpoint's own parameter shapes (default: derived from ``arch``).
        quantize: ``None``, ``"int8"`` or ``"nf4"``.

    Examples:
        >>> from phi3lab.runtime.registry import lookup
        >>> mini = lookup("microsoft/Phi-3-mini-4k-instruct").architecture
        >>> size_text(estimate_memory(mini, torch.float32).weights), size_text(estimate_memory(mini, torch.bfloat16).weights)
        ('14.2 GiB', '7.1 GiB')
    """
    weights = weights or Weights.from_architecture(arch)
    b = _element(dtype)
    B, T = usage.batch, usage.context
    window = min(T, arch.sliding_window) if arch.sliding_window else T
    kv = 0
    if usage.use in ("chat", "sweep"):
        kv = 2 * arch.layers * B * window * arch.kv_heads * arch.head_dim * b
    qkv = (arch.heads + 2 * arch.kv_heads) * arch.head_dim
    # the widest step of a layer, per token: gate_up (2I), silu(gate) and up·silu(gate) (I each), the
    # layer's input and residual, the attention projections, RMSNorm's float32 copy; 7I + 3H + qkv is
    # what generation measures at Phi-3-mini width (benchmarks/memory_estimate.py, the allocator's slack
    # included), not the 4I + 2H minimum
    workspace = B * T * ((7 * arch.intermediate + 3 * arch.hidden + qkv) * b + 4 * arch.hidden)
    workspace += B * T * T  # the boolean attention mask
    if usage.need_weights:
        workspace += B * arch.heads * T * T * (2 * b + 4)  # scores, float32 softmax, cast back
    if quantize is not None:
        workspace += weights.largest_projection * b  # one projection dequantized at a time
    if arch.vision_parameters or arch.vision_hidden:
        crops = B * usage.images * (usage.num_crops + 1)
        clip = crops * CLIP_POSITIONS * (arch.vision_intermediate + 4 * arch.vision_hidden) * b
        workspace = max(workspace, clip)
    if usage.use == "capture":
        logits = B * T * arch.vocab * b
        kept = 4 * (arch.layers + 1) * B * T * arch.hidden
        if usage.need_weights:
            kept += arch.layers * B * arch.heads * T * T * b
    else:
        logits = 2 * 4 * B * arch.vocab
        kept = arch.layers * B * arch.heads * T * T * b if usage.need_weights else 0
    return Estimate(weights.nbytes(dtype, quantize), kv, workspace, logits, kept)


@dataclasses.dataclass(frozen=True)
class Option:
    """One way to load considered by :func:`plan_memory`.

    Attributes:
        dtype, quantize, backend: the way (``quantize`` ``None`` for full weights).
        estimate: its :class:`Estimate`.
        fits: its total is within the budget (90% of the available memory; ``True`` when unknown).
        why_not: why it cannot run on this machine at all (no backend), ``None`` when it can.
        allowed: the request permits it (quantized options are listed, not taken, unless
            ``quantize`` is ``"auto"`` or names them).
    """

    dtype: torch.dtype
    quantize: str | None
    backend: str | None
    estimate: Estimate
    fits: bool
    why_not: str | None = None
    allowed: bool = True

    def __repr__(self) -> str:
        how = str(self.dtype).removeprefix("torch.") + (f" + {self.quantize}" if self.quantize else "")
        verdict = "fits" if self.fits else f"does not fit: {self.why_not}" if self.why_not else "does not fit"
        return f"Option({how}, {size_text(self.estimate.total)}, {verdict})"

    @property
    def usable(self) -> bool:
        return self.allowed and self.why_not is None and self.fits

    @property
    def label(self) -> str:
        name = str(self.dtype).removeprefix("torch.")
        return name if self.quantize is None else f"{self.quantize} ({self.backend or 'no backend'}) + {name}"

    @property
    def argument(self) -> str:
        name = str(self.dtype).removeprefix("torch.")
        return f"dtype={name!r}" + (f", quantize={self.quantize!r}" if self.quantize else "")

    def verdict(self) -> str:
        if self.why_not:
            return f"cannot run here: {self.why_not}"
        if not self.fits:
            return "too big"
        return "fits" if self.allowed else f"fits if asked for: {self.argument}"


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """The dtype and weight quantization a model is loaded with, and why.

    Attributes:
        device: where the model goes.
        dtype: the compute dtype (and the weights' dtype where they are not quantized).
        quantize: ``None``, ``"int8"`` or ``"nf4"``.
        backend: ``None``, ``"torchao"`` or ``"bitsandbytes"``.
        estimate: the chosen option's :class:`Estimate`.
        memory: the device's :class:`~phi3lab.runtime.hardware.DeviceMemory` when planned.
        usage: the :class:`Usage` planned for.
        reason: one human sentence saying why.
        options: every option considered, in order of preference.
    """

    device: str
    dtype: torch.dtype
    quantize: str | None
    backend: str | None
    estimate: Estimate
    memory: DeviceMemory
    usage: Usage
    reason: str
    options: tuple[Option, ...] = ()

    def __repr__(self) -> str:
        return f"MemoryPlan({self.reason})"

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def weights_name(self) -> str:
        """What the weights are stored as: the dtype, or the quantization with its backend."""
        return self.dtype_name if self.quantize is None else f"{self.quantize} ({self.backend})"

    def summary(self) -> str:
        if self.quantize is None:
            return f"{self.dtype_name} · {self.device} — {self.reason}"
        return f"{self.weights_name} weights · {self.dtype_name} activations · {self.device} — {self.reason}"

    __str__ = summary

    def to_text(self) -> str:
        """The options considered, one per line, with the bytes and the verdict."""
        lines = [f"memory plan for {self.usage.describe()} on {self.memory.to_text()}:"]
        for option in self.options:
            chosen = option.dtype == self.dtype and option.quantize == self.quantize
            lines.append(
                f"  {'→' if chosen else ' '} {option.label:<34} {size_text(option.estimate.total):>10}  "
                f"(weights {size_text(option.estimate.weights)})  {option.verdict()}"
            )
        lines.append(f"  {self.reason}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):
        printer.text(self.to_text())


def _backend(quantize: str, device: str, probes: Probes) -> tuple[str | None, str | None]:
    """``(backend, None)`` that runs ``quantize`` on ``device``, or ``(None, why not)``."""
    kind = device.split(":")[0]
    if kind == "mps":
        return None, "no weight-quantization backend runs on Apple MPS (bitsandbytes and torchao need CUDA or a CPU)"
    if kind == "cpu" and quantize == "int8":
        if probes.torchao:
            return "torchao", None
        return None, f"int8 on the CPU uses torchao's int8 weight-only, and {probes.torchao_error}"
    if probes.bitsandbytes:
        return "bitsandbytes", None
    return None, f"{quantize} on {kind} uses bitsandbytes, and {probes.bitsandbytes_error}"


def _dtypes(device: str, requested: torch.dtype | None, default: torch.dtype) -> list[torch.dtype]:
    if requested is not None:
        return [requested]
    if device.split(":")[0] == "cpu" and default == torch.float32:
        return [torch.float32, torch.bfloat16]  # halve the memory when float32 does not fit
    return [default]


def plan_memory(
    arch: Architecture,
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    default_dtype: torch.dtype | None = None,
    quantize: str | None = None,
    usage: Usage = Usage(),
    weights: Weights | None = None,
    probes: Probes | None = None,
    memory: DeviceMemory | None = None,
    name: str = "the model",
) -> MemoryPlan:
    """Choose dtype and weight quantization for ``arch`` on ``device`` from its available memory.

    The options are tried in order of preference and the first that fits is taken: the device's
    default dtype (float32 on a CPU: exact), then — on a CPU, with ``dtype`` left to choose —
    bfloat16 (half the memory); then, only with ``quantize="auto"``, int8 and NF4 weights.  An explicit
    ``dtype`` or ``quantize`` is the only option of its kind.

    Args:
        arch: the model's numbers.
        device: a device string (already checked, e.g. by :func:`~phi3lab.runtime.attention_backend.select_attention`).
        dtype: an explicit compute dtype, or ``None`` to choose.
        default_dtype: the device's default dtype (``select_attention``'s choice; float32 on a CPU).
        quantize: ``None`` (never), ``"auto"`` (when nothing else fits), ``"int8"`` or ``"nf4"``.
        usage: what the model will run (:class:`Usage`).
        weights: the checkpoint's own parameter shapes (default from ``arch``).
        probes: the machine's capabilities (default :func:`~phi3lab.runtime.hardware.probe`).
        memory: the device's memory (default measured now by :func:`~phi3lab.runtime.hardware.probe_memory`).
        name: the model's name, for messages.

    Raises:
        NotEnoughMemoryError: no allowed option fits; the message lists each with its bytes.
        QuantizationError: an explicit ``quantize`` with no backend for this device.
    """
    if quantize not in (None, "auto", *QUANTIZATIONS):
        raise QuantizationError(
            f"quantize must be None (no quantization), 'auto' (only when nothing else fits), 'int8' or 'nf4'; "
            f"got {quantize!r}"
        )
    probes = probes or probe()
    memory = memory or probe_memory(device)
    default = default_dtype or (torch.float32 if device == "cpu" else torch.bfloat16)
    dtypes = _dtypes(device, dtype, default)
    options: list[Option] = []
    budget = None if memory.available is None else HEADROOM * memory.available

    def add(dt, q, allowed=True):
        backend, why_not = (None, None) if q is None else _backend(q, device, probes)
        est = estimate_memory(arch, dt, usage, weights=weights, quantize=q)
        options.append(Option(dt, q, backend, est, budget is None or est.total <= budget, why_not, allowed))

    if quantize in QUANTIZATIONS:
        for dt in dtypes:
            add(dt, quantize)
        if all(o.why_not for o in options):
            raise QuantizationError(
                f"quantize={quantize!r} cannot run on {device}: {options[0].why_not}; install it, or use "
                "quantize=None (full weights) or 'auto'"
            )
    else:
        for dt in dtypes:
            add(dt, None)
        if dtype is not None:  # an explicit dtype: the other half-memory dtype is listed, not taken
            half = torch.bfloat16 if device.split(":")[0] == "cpu" or probes.cuda_bf16 else torch.float16
            if dtype != half:
                add(half, None, allowed=False)
        for q in QUANTIZATIONS:  # listed either way, so a refusal can say what quantization would need
            add(dtypes[-1], q, allowed=quantize == "auto")
    chosen = next((o for o in options if o.usable), None)
    described = usage.describe()
    if chosen is None:
        raise NotEnoughMemoryError(_refusal(name, device, memory, options, described, quantize), options)
    reason = _reason(chosen, options, memory, described, probes, device)
    return MemoryPlan(
        device, chosen.dtype, chosen.quantize, chosen.backend, chosen.estimate, memory, usage, reason, tuple(options)
    )


def _reason(chosen: Option, options: list[Option], memory: DeviceMemory, described: str, probes, device) -> str:
    needs = f"{size_text(chosen.estimate.weights)} for the weights + {size_text(chosen.estimate.activations)} for {described}"
    if memory.available is None:
        return f"{chosen.label}: {needs}; the available memory of {device} is unknown, so it was not checked"
    where = f"{size_text(memory.available)} available on {device}"
    earlier = [o for o in options[: options.index(chosen)] if o.allowed and o.why_not is None]
    if not earlier:
        return f"{chosen.label} fits: {needs}, of {where}"
    refused = "; ".join(f"{o.label} needs {size_text(o.estimate.total)}" for o in earlier)
    text = (
        f"{refused}, more than {size_text(HEADROOM * memory.available)} (90% of {where}); {chosen.label} fits: {needs}"
    )
    if chosen.dtype == torch.bfloat16 and device == "cpu" and not probes.cpu_bf16:
        text += " (this CPU has no native bfloat16: it runs emulated, slower than float32)"
    return text


def _refusal(name, device, memory, options: list[Option], described: str, quantize) -> str:
    lines = [
        f"{name} does not fit {device} for {described}: {size_text(memory.available)} available "
        f"(of {size_text(memory.total)}; a plan may take 90%). What each way would need:"
    ]
    lines += [
        f"  {o.label}: {size_text(o.estimate.total)} (weights {size_text(o.estimate.weights)}) — {o.verdict()}"
        for o in options
    ]
    lines.append(
        "Free memory (close other notebooks), ask for less (a shorter context=, batch=1, use='chat'), "
        + ("allow weight quantization (quantize='auto'), " if quantize is None else "")
        + "spread the model with device_map='auto' (GPUs, then the CPU), or use the embedded model "
        "phi3lab.load('tiny')"
    )
    return "\n".join(lines)
