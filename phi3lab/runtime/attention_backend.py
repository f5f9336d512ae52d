"""Which attention kernel, dtype and device to run a Phi-3 model with, and why.

The official Phi-3-vision ``config.json`` forces ``_attn_implementation: "flash_attention_2"``,
which is why the model card tells people without flash-attn to edit lines of a modeling file.
phi3lab decides from capability probes (:mod:`phi3lab.runtime.hardware`) instead:

* **flash_attention_2** only where ``flash_attn`` imports, the GPU has compute capability ≥ 8.0
  (Ampere or newer) and the dtype is float16 or bfloat16;
* **sdpa** otherwise on CUDA (bfloat16 where the GPU supports it, else float16), on Apple MPS
  (float16) and on the CPU (float32);
* **eager** only when attention weights are requested through ``output_attentions`` — the fused
  kernels never materialise them.  (:mod:`phi3lab` can capture chosen attention rows under sdpa
  instead, without switching the whole model to eager.)

An explicit request is honoured when the machine can run it; an impossible one raises
:class:`AttentionRequestError` saying what to do instead.  :func:`hardware_report` puts the
machine's probes, its available memory, the choice for each dtype and the memory plan for the main
checkpoints (:mod:`phi3lab.runtime.memory`) side by side.
"""

from __future__ import annotations

import dataclasses
import platform

import torch

from phi3lab.errors import Phi3LabError
from phi3lab.runtime.hardware import HardwareReport, Probes, probe

__all__ = ["AttentionChoice", "AttentionRequestError", "select_attention", "parse_dtype", "hardware_report"]

IMPLEMENTATIONS = ("flash_attention_2", "sdpa", "eager")
_HALF = (torch.float16, torch.bfloat16)
_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class AttentionRequestError(Phi3LabError, ValueError):
    """A device, dtype or attention kernel was asked for that this machine cannot run."""


@dataclasses.dataclass(frozen=True)
class AttentionChoice:
    """The attention kernel, dtype and device a model is loaded with, and the reason for them.

    Attributes:
        impl: ``"flash_attention_2"``, ``"sdpa"`` or ``"eager"`` (transformers' names).
        dtype: the torch dtype for weights and activations.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        reason: one human sentence saying why.
    """

    impl: str
    dtype: torch.dtype
    device: str
    reason: str

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def summary(self) -> str:
        return f"{self.impl} · {self.dtype_name} · {self.device} — {self.reason}"

    __str__ = summary
    to_text = summary

    def __repr__(self) -> str:
        return f"AttentionChoice({self.summary()})"

    def _repr_pretty_(self, printer, cycle):
        printer.text(repr(self))

    def _repr_html_(self) -> str:
        from phi3lab.reprs import rows_html

        rows = [("attention", self.impl), ("dtype", self.dtype_name), ("device", self.device), ("why", self.reason)]
        return rows_html(rows, title="Attention choice")


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype | None:
    """``"auto"`` → ``None``; a torch dtype or a common name → the torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, *_HALF):
            raise AttentionRequestError(
                f"dtype {dtype} is not supported for Phi-3; use float32, float16, bfloat16 or 'auto'"
            )
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key == "auto":
        return None
    if key not in _DTYPE_NAMES:
        raise AttentionRequestError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'float16' or 'bfloat16'")
    return _DTYPE_NAMES[key]


def _parse_device(device: str | torch.device, probes: Probes) -> str:
    text = str(device).lower()
    if text == "auto":
        return probes.default_device
    kind = text.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise AttentionRequestError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'mps'")
    if kind == "cuda" and not probes.cuda:
        raise AttentionRequestError(
            "device 'cuda' was requested but torch sees no CUDA GPU here "
            "(a CPU-only torch build, or no driver); use device='cpu' or device='auto'"
        )
    if kind == "mps" and not probes.mps:
        raise AttentionRequestError(
            "device 'mps' was requested but Apple's Metal backend is not available here; "
            "use device='cpu' or device='auto'"
        )
    return text


def _gpu(probes: Probes) -> str:
    cap = probes.capability
    cap_text = f"compute capability {cap[0]}.{cap[1]}" if cap else "unknown capability"
    return f"{probes.gpu_name or 'the GPU'} ({cap_text})"


def _pick_dtype(requested: torch.dtype | None, device: str, probes: Probes) -> torch.dtype:
    kind = device.split(":")[0]
    if requested is None:
        if kind == "cuda":
            return torch.bfloat16 if probes.cuda_bf16 else torch.float16
        if kind == "mps":
            return torch.float16
        return torch.float32
    if requested is torch.bfloat16 and kind == "cuda" and not probes.cuda_bf16:
        raise AttentionRequestError(
            f"dtype bfloat16 was requested but {_gpu(probes)} has no bfloat16 support; "
            "use dtype='float16' (or 'auto', which picks it)"
        )
    return requested


def _flash_blocker(device: str, dtype: torch.dtype, probes: Probes) -> str | None:
    """Why flash-attention 2 cannot run here, or ``None`` when it can."""
    if not device.startswith("cuda"):
        return f"flash-attention 2 runs only on NVIDIA GPUs and the device is {device}"
    if not probes.flash_attn:
        return probes.flash_attn_error or "the flash_attn package does not import"
    cap = probes.capability or (0, 0)
    if tuple(cap) < (8, 0):
        return f"{_gpu(probes)} is older than the 8.0 (Ampere) that flash-attention 2 needs"
    if dtype not in _HALF:
        return f"flash-attention 2 needs float16 or bfloat16 and the dtype is {dtype}"
    return None


def select_attention(
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    need_weights: bool = False,
    *,
    attn: str = "auto",
    probes: Probes | None = None,
) -> AttentionChoice:
    """Choose the attention kernel, dtype and device for a Phi-3 model on this machine.

    Args:
        device: ``"auto"`` (CUDA, else MPS, else CPU) or an explicit device.
        dtype: ``"auto"`` (bfloat16 on GPUs that have it, float16 on other GPUs and on MPS,
            float32 on CPU) or an explicit dtype.
        need_weights: attention weights will be requested with ``output_attentions=True``;
            only eager returns them.
        attn: ``"auto"`` or an explicit ``"flash_attention_2"``, ``"sdpa"`` or ``"eager"``.
        probes: the machine's capabilities; :func:`phi3lab.runtime.hardware.probe` by default.  Tests
            pass a hand-written :class:`~phi3lab.runtime.hardware.Probes` to simulate other machines.

    Returns:
        A frozen :class:`AttentionChoice`; ``print()`` it to see the reason.

    Raises:
        AttentionRequestError: the request cannot run here; the message says what to do.

    Examples:
        >>> from phi3lab.runtime.hardware import Probes
        >>> print(select_attention(probes=Probes()))
        sdpa · float32 · cpu — CPU: sdpa is the fastest kernel that runs here
        >>> h100 = Probes(cuda=True, capability=(9, 0), gpu_name="H100", cuda_bf16=True, flash_attn=True)
        >>> select_attention(probes=h100).impl
        'flash_attention_2'
    """
    probes = probes or probe()
    dev = _parse_device(device, probes)
    dt = _pick_dtype(parse_dtype(dtype), dev, probes)
    attn = str(attn).lower()
    if attn != "auto":
        return _explicit(attn, dev, dt, need_weights, probes)

    if need_weights:
        return AttentionChoice(
            "eager",
            dt,
            dev,
            "attention weights were requested (output_attentions) and only eager returns them; "
            "phi3lab.inspect.capture can capture chosen rows under sdpa instead",
        )
    if not probes.sdpa:
        return AttentionChoice("eager", dt, dev, "this torch has no scaled_dot_product_attention")
    kind = dev.split(":")[0]
    if kind == "cuda":
        blocker = _flash_blocker(dev, dt, probes)
        if blocker is None:
            return AttentionChoice(
                "flash_attention_2",
                dt,
                dev,
                f"flash_attn imports, {_gpu(probes)} supports it and the dtype is {dt}",
            )
        return AttentionChoice("sdpa", dt, dev, f"sdpa on {_gpu(probes)}; not flash-attention 2: {blocker}")
    if kind == "mps":
        return AttentionChoice("sdpa", dt, dev, "Apple MPS: sdpa runs there; flash-attention 2 is CUDA-only")
    return AttentionChoice("sdpa", dt, dev, "CPU: sdpa is the fastest kernel that runs here")


def _explicit(attn: str, dev: str, dt: torch.dtype, need_weights: bool, probes: Probes) -> AttentionChoice:
    if attn not in IMPLEMENTATIONS:
        raise AttentionRequestError(
            f"unknown attention implementation {attn!r}; use 'auto', {', '.join(map(repr, IMPLEMENTATIONS))}"
        )
    if need_weights and attn != "eager":
        raise AttentionRequestError(
            f"attention weights (output_attentions) were requested with attn={attn!r}, which never "
            "materialises them; use attn='eager', or keep "
            f"{attn} and capture the rows you need with phi3lab.inspect.capture"
        )
    if attn == "flash_attention_2":
        blocker = _flash_blocker(dev, dt, probes)
        if blocker is not None:
            fix = "install flash-attn (pip install flash-attn --no-build-isolation) or use attn='sdpa'"
            if "dtype" in blocker:
                fix = "pass dtype='bfloat16' (or 'float16'), or use attn='sdpa'"
            elif "NVIDIA" in blocker or "older" in blocker:
                fix = "use attn='sdpa' (or 'auto')"
            raise AttentionRequestError(f"attn='flash_attention_2' cannot run: {blocker}; {fix}")
    if attn == "sdpa" and not probes.sdpa:
        raise AttentionRequestError(
            "attn='sdpa' was requested but this torch has no scaled_dot_product_attention; "
            "upgrade torch or use attn='eager'"
        )
    return AttentionChoice(attn, dt, dev, f"requested explicitly (attn={attn!r})")


PLANNED_MODELS = (
    "microsoft/Phi-3-mini-4k-instruct",
    "microsoft/Phi-3-vision-128k-instruct",
    "microsoft/Phi-3-medium-4k-instruct",
)
"""The checkpoints :func:`hardware_report` plans a load for (from the registry's numbers, nothing downloaded)."""


def hardware_report(probes: Probes | None = None, memory=None) -> HardwareReport:
    """Summarise this machine, what attention phi3lab would pick for each dtype, and what would fit.

    Args:
        probes: the machine's capabilities (default: probed now).
        memory: a :class:`~phi3lab.runtime.hardware.DeviceMemory` (or several) for the default device
            (default: measured now).  Tests pass both to simulate a machine.

    The load plans are :func:`phi3lab.runtime.memory.plan_memory`'s for chat at 4,096 tokens with
    ``dtype="auto"`` and ``quantize="auto"``, from the registry's parameter counts.

    Examples:
        >>> from phi3lab.runtime.hardware import DeviceMemory, Probes
        >>> laptop = DeviceMemory("cpu", available=14 * 2**30, total=16 * 2**30)
        >>> text = hardware_report(Probes(), laptop).to_text()
        >>> print(next(line for line in text.splitlines() if line.startswith("  float32")))
          float32   sdpa · float32 · cpu — CPU: sdpa is the fastest kernel that runs here
        >>> print(next(line for line in text.splitlines() if "Phi-3-mini" in line)[:60])
          microsoft/Phi-3-mini-4k-instruct: bfloat16 · cpu — float32
    """
    import transformers

    from phi3lab.runtime.hardware import DeviceMemory, probe_memory
    from phi3lab.runtime.memory import NotEnoughMemoryError, QuantizationError, Usage, plan_memory, size_text
    from phi3lab.runtime.registry import lookup

    simulated = probes is not None and probes is not probe()
    probes = probes or probe()
    selections = []
    for name in ("float32", "float16", "bfloat16"):
        try:
            choice = select_attention(dtype=name, probes=probes)
            selections.append((name, choice.summary()))
        except AttentionRequestError as exc:
            selections.append((name, f"refused — {exc}"))
    device = probes.default_device
    if memory is None and simulated:  # this process's memory says nothing about a simulated machine
        memory = [DeviceMemory(device, None, probes.gpu_memory if probes.cuda else None)]
    elif memory is None:
        memory = [probe_memory(device)] + ([probe_memory("cpu")] if device != "cpu" else [])
    memory = [memory] if isinstance(memory, DeviceMemory) else list(memory)
    plans = []
    default = select_attention(probes=probes).dtype
    for model in PLANNED_MODELS:
        spec = lookup(model)
        try:
            plan = plan_memory(
                spec.architecture,
                device=device,
                default_dtype=default,
                quantize="auto",
                usage=Usage(images=1 if spec.modality == "vision" else 0, num_crops=spec.num_crops or 16),
                probes=probes,
                memory=memory[0],
                name=spec.name,
            )
            plans.append((spec.name, plan.summary()))
        except NotEnoughMemoryError as exc:
            runnable = [o for o in exc.options if not o.why_not] or list(exc.options)
            least = min(runnable, key=lambda o: o.estimate.total)
            plans.append(
                (
                    spec.name,
                    f"does not fit: {size_text(memory[0].available)} available; the smallest way, {least.label}, "
                    f"needs {size_text(least.estimate.total)}",
                )
            )
        except QuantizationError as exc:
            plans.append((spec.name, f"cannot plan: {exc}"))
    return HardwareReport(
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        probes=probes,
        selections=tuple(selections),
        memory=tuple(memory),
        plans=tuple(plans),
    )
