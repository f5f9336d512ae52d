"""How much memory a look inside may take, checked before anything is stored.

Every read of the hook core, every ``run_with_cache`` and every eager ``output_attentions`` call is
estimated first and refused above a limit — by default a quarter of the memory free on the model's
device — with a message that says what to ask for instead.
"""

from __future__ import annotations

import torch

from phi3lab.errors import Phi3LabError
from phi3lab.runtime.memory import size_text

__all__ = ["MemoryLimitError", "memory_limit", "check_memory", "check_max_bytes"]


class MemoryLimitError(Phi3LabError, MemoryError):
    """What was asked for would need more memory than the limit allows (nothing was stored)."""


def memory_limit(device: torch.device | str = "cpu", fraction: float = 0.25) -> int:
    """Bytes a look inside may keep: ``fraction`` of the memory free on ``device`` right now."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        import psutil

        free = psutil.virtual_memory().available
    return int(free * fraction)


def check_memory(nbytes: int, limit: int, what: str, advice: str) -> None:
    """Raise :class:`MemoryLimitError` when ``nbytes`` is over ``limit``, saying what and what to do."""
    if nbytes > limit:
        raise MemoryLimitError(
            f"{what} needs about {size_text(nbytes)}, over the limit of {size_text(limit)}; {advice}"
        )


def check_max_bytes(max_bytes) -> int | None:
    """``max_bytes`` as given by a caller: ``None`` (the default limit) or a number of bytes ≥ 0."""
    if max_bytes is None:
        return None
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise TypeError(
            f"max_bytes must be a number of bytes (an int ≥ 0, e.g. 2 * 2**30 for 2 GiB) or None for a quarter of "
            f"the free memory, got {max_bytes!r}"
        )
    return max_bytes
