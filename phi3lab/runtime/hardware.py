"""What this machine can do, found by asking it rather than by reading version strings.

Every decision phi3lab makes about devices, dtypes, weight quantization and attention kernels starts
from a :class:`Probes` record.  :func:`probe` fills one from the running process (is CUDA there, which
compute capability, does the GPU do bf16, does the CPU do bf16 natively, does ``flash_attn`` import,
do the quantization backends import, is Apple MPS there, does torch have
``scaled_dot_product_attention``).  Because the record is plain data, tests build one by hand to
simulate any machine: a V100 without flash-attn, an H100 with it, a Mac, a laptop CPU.

Memory changes from second to second, so it is not part of the cached probes: :func:`probe_memory`
measures one device's *available* memory (free RAM that can be had without swapping, or the GPU's
free memory) each time it is asked, and returns a :class:`DeviceMemory`, which tests also write by hand.

:class:`HardwareReport` is the human-readable summary a notebook prints first; it is made by
:func:`phi3lab.hardware_report` (in :mod:`phi3lab.runtime.attention_backend`, which adds the attention
choice for each dtype — this module knows nothing of attention, so nothing here imports it).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from functools import lru_cache

import torch

__all__ = ["Probes", "probe", "DeviceMemory", "probe_memory", "HardwareReport"]


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
        cpu_bf16: the CPU computes bfloat16 natively (AVX512-BF16 or AMX, as oneDNN reports); without
            it bfloat16 still runs, emulated and slower, but with half of float32's memory.
        bitsandbytes: the ``bitsandbytes`` package is installed (NF4 and int8 weights on CUDA, and
            on the CPU since its multi-backend releases; checked to import when a load uses it).
        torchao: the ``torchao`` package is installed (int8 weight-only; checked to import when used).
        gpu_count: CUDA devices visible.
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
    cpu_bf16: bool = False
    bitsandbytes: bool = False
    bitsandbytes_error: str | None = (
        "the bitsandbytes package is not installed (pip install bitsandbytes, or phi3lab[quant])"
    )
    torchao: bool = False
    torchao_error: str | None = "the torchao package is not installed (pip install torchao, or phi3lab[quant])"
    gpu_count: int = 0

    def __repr__(self) -> str:
        found = [name for name in ("cuda", "cuda_bf16", "flash_attn", "mps", "sdpa") if getattr(self, name)]
        gpu = f", {self.gpu_name}" if self.gpu_name else ""
        return f"Probes(default device {self.default_device}{gpu}; {', '.join(found) or 'no kernels'})"

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


def _package_status(name: str) -> tuple[bool, str | None]:
    """Whether a quantization backend is installed.  Importing it is left to the load that needs it
    (bitsandbytes takes seconds to import): :func:`phi3lab.runtime.quantization.import_backend` does
    that and says so when an installed package does not import."""
    if importlib.util.find_spec(name) is None:
        return False, f"the {name} package is not installed (pip install {name}, or phi3lab[quant])"
    return True, None


def _cpu_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # an old torch or a build without oneDNN: no native bf16 claim
        return False


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
    bnb, bnb_error = _package_status("bitsandbytes")
    tao, tao_error = _package_status("torchao")
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
        cpu_bf16=_cpu_bf16(),
        bitsandbytes=bnb,
        bitsandbytes_error=bnb_error,
        torchao=tao,
        torchao_error=tao_error,
        gpu_count=torch.cuda.device_count() if cuda else 0,
    )


@dataclasses.dataclass(frozen=True)
class DeviceMemory:
    """Memory of one device, in bytes, as measured now (or written by a test).

    Attributes:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        available: what a new allocation can have now: the CPU's available RAM (free plus
            reclaimable caches, not swap), a GPU's free memory; ``None`` when unknown.
        total: the device's total memory (RAM without swap, or the GPU's); ``None`` when unknown.
    """

    device: str
    available: int | None
    total: int | None

    def __repr__(self) -> str:
        return f"DeviceMemory({self.to_text()})"

    def to_text(self) -> str:
        def gib(n):
            return "?" if n is None else f"{n / 2**30:.1f} GiB"

        return f"{self.device}: {gib(self.available)} available of {gib(self.total)}"

    __str__ = to_text


def probe_memory(device: str = "cpu") -> DeviceMemory:
    """Measure ``device``'s available and total memory now (not cached: memory changes).

    Examples:
        >>> mem = probe_memory("cpu")
        >>> mem.available is None or 0 < mem.available <= mem.total
        True
    """
    kind = str(device).split(":")[0]
    try:
        if kind == "cuda":
            free, total = torch.cuda.mem_get_info(torch.device(device))
            return DeviceMemory(str(device), int(free), int(total))
        if kind == "mps":
            total = int(torch.mps.recommended_max_memory())
            return DeviceMemory(str(device), max(0, total - int(torch.mps.driver_allocated_memory())), total)
        import psutil

        vm = psutil.virtual_memory()
        return DeviceMemory(str(device), int(vm.available), int(vm.total))
    except Exception:  # no driver, no psutil: unknown, and the plan says so
        return DeviceMemory(str(device), None, None)


@dataclasses.dataclass(frozen=True)
class HardwareReport:
    """Versions, devices and the attention choice for each dtype; ``str()`` gives the text form."""

    python: str
    torch: str
    transformers: str
    probes: Probes
    selections: tuple[tuple[str, str], ...]  # (dtype name, one-line choice or why it is refused)
    memory: tuple[DeviceMemory, ...] = ()
    plans: tuple[tuple[str, str], ...] = ()  # (model, one-line load plan or why nothing fits)

    def _rows(self) -> list[tuple[str, str]]:
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
        rows += [("bf16 on CPU", "native (oneDNN)" if p.cpu_bf16 else "emulated: runs, slower than float32")]
        rows += [("flash-attn", "imports" if p.flash_attn else f"no — {p.flash_attn_error}")]
        rows += [("sdpa", "yes" if p.sdpa else "no")]
        rows += [("bitsandbytes", "installed (NF4, int8)" if p.bitsandbytes else f"no — {p.bitsandbytes_error}")]
        rows += [("torchao", "installed (int8 weight-only)" if p.torchao else f"no — {p.torchao_error}")]
        rows += [("memory", mem.to_text()) for mem in self.memory]
        return rows

    def to_text(self) -> str:
        from phi3lab.reprs import rows_text

        lines = [rows_text(self._rows()), "attention per dtype:"]
        lines += [f"  {name:<9} {text}" for name, text in self.selections]
        if self.plans:
            lines.append("load plans here (dtype='auto', quantize='auto', chat at 4,096 tokens):")
            lines += [f"  {name}: {text}" for name, text in self.plans]
        return "\n".join(lines)

    __str__ = to_text

    def __repr__(self) -> str:
        return f"HardwareReport(torch {self.torch}, transformers {self.transformers}, {self.probes.default_device})"

    def _repr_pretty_(self, printer, cycle):  # IPython shows the text form
        printer.text(self.to_text())

    def _repr_html_(self) -> str:
        from phi3lab.reprs import rows_html

        rows = self._rows() + [("attention per dtype", "\n".join(f"{n}: {t}" for n, t in self.selections))]
        if self.plans:
            rows.append(("load plans", "\n".join(f"{n}: {t}" for n, t in self.plans)))
        return rows_html(rows, title="Hardware")
