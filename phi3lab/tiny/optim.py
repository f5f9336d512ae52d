"""The optimiser loop both embedded models train with (:mod:`phi3lab.tiny.train`,
:mod:`phi3lab.tiny.train_vision`): AdamW, warm-up then cosine decay, gradient clipping."""

from __future__ import annotations

import math
import time

import torch

__all__ = ["lr_at", "optimise"]


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def optimise(
    model,
    next_batch,
    steps: int,
    lr: float,
    warmup: int,
    log_every: int,
    lr_scale: dict[str, float] | None = None,
    check=None,
    check_every: int = 0,
) -> float:
    """AdamW with warm-up and cosine decay, gradient clipping, progress and loss printed (with the
    seconds since the start, and the CPU seconds this process used: on a shared machine the second
    is what the run would take alone on one core).

    ``lr_scale`` maps a piece of parameter name (``"model.vision_embed_tokens."``, found anywhere in
    the name, so a wrapped model's parameters match too) to a multiplier of the learning rate (the rest
    get 1).
    ``check(step)``, if given, runs every ``check_every`` steps (e.g. a quick held-out accuracy; it
    must not draw random numbers, so the run stays the same with or without it).
    Returns the start time (``time.perf_counter()``)."""
    scales = lr_scale or {}
    groups: dict[float, list] = {}
    for name, param in model.named_parameters():
        scale = next((v for k, v in scales.items() if k in name), 1.0)
        groups.setdefault(scale, []).append(param)
    opt = torch.optim.AdamW(
        [{"params": ps, "scale": s} for s, ps in groups.items()], lr=lr, betas=(0.9, 0.98), weight_decay=0.01
    )
    started, cpu, smooth = time.perf_counter(), time.process_time(), None
    for step in range(steps):
        batch = next_batch()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup) * group["scale"]
        loss = model(**batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        if step % log_every == 0 or step == steps - 1:
            print(
                f"  step {step:5d}/{steps}  loss {smooth:.4f}  lr {lr_at(step, steps, lr, warmup):.2e}  "
                f"{time.perf_counter() - started:6.0f} s  (cpu {time.process_time() - cpu:.0f} s)",
                flush=True,
            )
        if check is not None and check_every and (step + 1) % check_every == 0 and step + 1 < steps:
            check(step + 1)
    return started
