"""What this machine can do, found by asking it rather than by reading version strings.

Every decision phi3lab makes about devices, dtypes and attention kernels starts from a
:class:`Probes` record.  :func:`probe` fills one from the running process (is CUDA there, which
compute capability, does the GPU do bf16, does ``flash_attn`` import, is Apple MPS there, does
torch have ``scaled_dot_product_attention``).  Because the record is plain data, tests build one by
hand to simulate any machine: a V100 without flash-attn, an H100 with it, a Mac, a laptop CPU.

:class:`HardwareReport` is the human-readable summary a notebook prints first; it is made by
:func:`phi3lab.hardware_report` (in :mod:`phi3lab.runtime.attention_backend`, which adds the attention
choice for each dtype — this module knows nothing of attention, so nothing here imports it).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from functools import lru_cache

import torch

__all__ = ["Probes", "probe", "HardwareReport"]


@dataclasses.dataclass(frozen=True)
class Probes:
    """Capabilities of one machine, as found by :func:`probe` (or written by a test).

    Attributes:
        cuda: a CUDA device is usable.
        capability: compute capability ``(major, minor)`` of the CUDA device, or ``None``.
        gpu_name: the CUDA device's name, or ``None``.
        gpu_memory: total memory of the CUDA device in bytes, or ``None``.
        cuda_bf16: the CUDA device computes in bfloat16.
        flash_attn: the ``flash_attn`` package imports (not merely is installed).
        mps: Apple's Metal backend is usable.
        sdpa: torch has ``scaled_dot_product_attention``.
    """

    cuda: bool = False
    capability: tuple[int, int] | None = None
    gpu_name: str | None = None
    gpu_memory: int | None = None
    cuda_bf16: bool = False
    flash_attn: bool = False
    flash_attn_error: str | None = None
    mps: bool = False
    sdpa: bool = True

    @property
    def default_device(self) -> str:
        """The device phi3lab uses when asked for ``"auto"``."""
        if self.cuda:
            return "cuda"
        if self.mps:
            return "mps"
        return "cpu"


def _flash_attn_status() -> tuple[bool, str | None]:
    """Whether ``flash_attn`` really imports; a broken build (wrong CUDA, wrong torch) does not."""
    if importlib.util.find_spec("flash_attn") is None:
        return False, "the flash_attn package is not installed"
    try:
        import flash_attn  # noqa: F401
    except Exception as exc:  # an ImportError or an undefined-symbol OSError from a bad build
        return False, f"flash_attn is installed but does not import ({type(exc).__name__}: {exc})"
    return True, None


@lru_cache(maxsize=1)
def probe() -> Probes:
    """Probe the running machine once per process; returns a frozen :class:`Probes`."""
    cuda = bool(torch.cuda.is_available())
    capability = gpu_name = gpu_memory = None
    bf16 = False
    if cuda:
        capability = tuple(torch.cuda.get_device_capability(0))
        props = torch.cuda.get_device_properties(0)
        gpu_name, gpu_memory = props.name, int(props.total_memory)
        bf16 = bool(torch.cuda.is_bf16_supported())
    flash, flash_error = _flash_attn_status()
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend and mps_backend.is_available())
    sdpa = hasattr(torch.nn.functional, "scaled_dot_product_attention")
    return Probes(
        cuda=cuda,
        capability=capability,
        gpu_name=gpu_name,
        gpu_memory=gpu_memory,
        cuda_bf16=bf16,
        flash_attn=flash,
        flash_attn_error=flash_error,
        mps=mps,
        sdpa=sdpa,
    )


@dataclasses.dataclass(frozen=True)
class HardwareReport:
    """Versions, devices and the attention choice for each dtype; ``str()`` gives the text form."""

    python: str
    torch: str
    transformers: str
    probes: Probes
    selections: tuple[tuple[str, str], ...]  # (dtype name, one-line choice or why it is refused)

    def to_text(self) -> str:
        p = self.probes
        rows = [
            ("python", self.python),
            ("torch", self.torch),
            ("transformers", self.transformers),
            ("default device", p.default_device),
        ]
        if p.cuda:
            cap = f"{p.capability[0]}.{p.capability[1]}" if p.capability else "?"
            mem = f"{p.gpu_memory / 2**30:.1f} GiB" if p.gpu_memory else "?"
            rows += [("GPU", f"{p.gpu_name} · {mem} · compute capability {cap}")]
            rows += [("bf16 on GPU", "yes" if p.cuda_bf16 else "no")]
        else:
            rows += [("GPU", "none (CUDA not available)")]
        rows += [("Apple MPS", "yes" if p.mps else "no")]
        rows += [("flash-attn", "imports" if p.flash_attn else f"no — {p.flash_attn_error}")]
        rows += [("sdpa", "yes" if p.sdpa else "no")]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        lines.append("attention per dtype:")
        lines += [f"  {name:<9} {text}" for name, text in self.selections]
        return "\n".join(lines)

    __str__ = to_text

    def _repr_pretty_(self, printer, cycle):  # IPython shows the text form
        printer.text(self.to_text())
