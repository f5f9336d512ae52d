"""Spreading a checkpoint over several GPUs and the CPU, whole decoder layers at a time."""

from __future__ import annotations

import torch

from phi3lab.paths import embedded_dir  # noqa: F401  used by the doctest

__all__ = ["plan_device_map", "STRATEGIES"]

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def plan_device_map(
    config, dtype: torch.dtype = torch.bfloat16, *, strategy: str = "auto", max_memory: dict | None = None
) -> dict[str, int | str]:
    """Where each module of the model ``config`` describes goes: module name → GPU index, ``"cpu"`` or ``"disk"``.

    The model is described on the meta device (nothing is allocated) and accelerate fills the GPUs in
    order, then the CPU, never splitting a decoder layer (``_no_split_modules``) or a vision encoder
    layer; the tied embedding and ``lm_head`` are kept together.  ``"auto"``/``"balanced"`` spread the
    layers evenly over the GPUs, ``"sequential"`` fills the first GPU first.

        >>> from transformers import AutoConfig
        >>> config = AutoConfig.from_pretrained(embedded_dir() / "phi3lab-tiny")
        >>> plan = plan_device_map(config, max_memory={0: "2MiB", 1: "2MiB", "cpu": "1GiB"})
        >>> sorted(set(plan.values()), key=str)
        [0, 1]
    """
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory
    from transformers import AutoModelForCausalLM

    if strategy not in STRATEGIES:
        raise ValueError(
            f"device_map must be one of {STRATEGIES}, a dict of module name → device, or None; got {strategy!r}"
        )
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    no_split = set(getattr(skeleton, "_no_split_modules", None) or [])
    no_split |= {type(m).__name__ for m in skeleton.modules() if type(m).__name__.endswith("EncoderLayer")}
    if strategy != "sequential":
        max_memory = get_balanced_memory(
            skeleton,
            max_memory=max_memory,
            no_split_module_classes=sorted(no_split),
            dtype=dtype,
            low_zero=strategy == "balanced_low_0",
        )
    skeleton.tie_weights()
    return dict(
        infer_auto_device_map(skeleton, max_memory=max_memory, no_split_module_classes=sorted(no_split), dtype=dtype)
    )
