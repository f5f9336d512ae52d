"""Forwards that start part-way: the keys and values before the first edited position come from an unedited run.

In a causal model nothing at a position ``p`` or later reaches the states before ``p``.  An edit that changes
only positions ``≥ p`` (a region of a picture replaced, an activation patched from there on) leaves every
layer's keys and values at the positions before ``p`` as the unedited run computed them.  A forward of the
positions from ``p`` on, with those keys and values in its cache, gives the numbers of a forward of the
whole sequence (to float rounding) and costs what the positions from ``p`` cost.

Such a forward needs a causal mask aligned to the end ("lower right"): new query ``i`` sees the ``p`` cached
keys and the new keys up to its own.  transformers' sdpa path builds that mask as a tensor, and with a mask
sdpa on a CPU loses its causal kernel: a forward from position 10 took 1.6× a forward of all 2,527 positions
(embedded vision model).  :func:`reusing` switches the language model to :func:`end_aligned_attention` while
it lasts: on a CPU the cached keys (no mask) and the new keys (the causal kernel) are attended to separately
and the two results merged by their log-sum-exp; elsewhere it is sdpa with torch's lower-right causal bias.

* :func:`unedited_run` — one forward that keeps every layer's keys and values and the last logits;
* :func:`forward_from` — forwards of the positions from ``first`` on, several rows at once;
* :func:`target_log_probs` — what such a forward's logits give a target answer, token by token.

Under an attention window shorter than the sequence (Phi-3-mini-4k and -medium: 2,047) the model's own
attention runs, with the mask transformers builds for the window: the same numbers, without the kernel's
saving.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from transformers import AttentionInterface, AttentionMaskInterface, DynamicCache

from phi3lab.inspect.kernel import language_model

__all__ = [
    "UneditedRun",
    "unedited_run",
    "forward_from",
    "target_log_probs",
    "reusing",
    "end_aligned_attention",
    "end_aligned_applies",
    "NAME",
]

NAME = "phi3lab_end_aligned"
"""The attention implementation's name in transformers' registry while :func:`reusing` is active."""


def end_aligned_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal attention of ``query [B, heads, m, d]`` over ``key``/``value [B, kv_heads, n, d]`` with the last
    query at the last key (``n ≥ m``: the first ``n − m`` keys come from a cache).  Returns ``[B, m, heads, d]``
    as transformers' attention functions do (and no weights).

    Raises:
        ValueError: for an explicit mask (padding), or an attention window shorter than the keys.
    """
    if attention_mask is not None:
        raise ValueError("a forward that starts part-way runs without padding; pass no attention_mask")
    window = kwargs.get("sliding_window")
    n, m = key.shape[2], query.shape[2]
    if window is not None and n > window:
        raise ValueError(f"{n} keys exceed the attention window ({window}); run the whole sequence instead")
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)  # GQA
    causal = getattr(module, "is_causal", True)
    if m == n or not causal:
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, is_causal=causal and m > 1, scale=scaling
        )
    elif query.device.type == "cpu":
        out = _split_at_cache(query, key, value, scaling)
    else:
        out = _lower_right(query, key, value, scaling)
    return out.transpose(1, 2).contiguous(), None


def _split_at_cache(query, key, value, scaling):
    """End-aligned causal attention on a CPU: the cached keys with no mask, the new keys with the causal
    kernel, merged by each part's log-sum-exp."""
    cached = key.shape[2] - query.shape[2]
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    old, old_lse = flash(query, key[:, :, :cached], value[:, :, :cached], 0.0, False, scale=scaling)
    new, new_lse = flash(query, key[:, :, cached:], value[:, :, cached:], 0.0, True, scale=scaling)
    top = torch.maximum(old_lse, new_lse)
    w_old, w_new = (old_lse - top).exp()[..., None], (new_lse - top).exp()[..., None]
    return ((old.float() * w_old + new.float() * w_new) / (w_old + w_new)).to(query.dtype)


def _lower_right(query, key, value, scaling):
    """End-aligned causal attention with torch's lower-right causal bias (fused kernels on accelerators)."""
    from torch.nn.attention.bias import causal_lower_right

    bias = causal_lower_right(query.shape[2], key.shape[2])
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scaling)


AttentionInterface.register(NAME, end_aligned_attention)
AttentionMaskInterface.register(NAME, lambda *args, **kwargs: None)  # the attention function aligns the mask


@contextlib.contextmanager
def reusing(model):
    """While it lasts, ``model``'s language model attends with :func:`end_aligned_attention` (restored after)."""
    config = language_model(model).config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield model
    finally:
        config._attn_implementation = before


def end_aligned_applies(model, length: int) -> bool:
    """Whether :func:`end_aligned_attention` can run a sequence of ``length`` positions: no attention window
    shorter than it (a window that bites needs the model's own mask, which transformers builds)."""
    window = getattr(language_model(model).config, "sliding_window", None)
    return window is None or length <= window


@dataclasses.dataclass(frozen=True)
class UneditedRun:
    """What a forward of the unedited sequence leaves for the forwards that start part-way.

    Attributes:
        keys_values: per layer ``(keys, values)`` ``[1, kv_heads, T, d]``: every position's, also past an
            attention window (a cache made without the model's config keeps them all).
        logits: ``[1, keep, vocab]`` at the last ``keep`` positions.
    """

    keys_values: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    logits: torch.Tensor


def unedited_run(model, embeds: torch.Tensor, keep: int) -> UneditedRun:
    """One forward of ``embeds [1, T, hidden]`` that keeps every layer's keys and values and the logits of
    the last ``keep`` positions."""
    out = model(inputs_embeds=embeds, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=keep)
    pairs = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)
    return UneditedRun(pairs, out.logits)


def forward_from(model, suffix: torch.Tensor, run: UneditedRun, first: int, keep: int) -> torch.Tensor:
    """Logits ``[rows, keep, vocab]`` of forwards whose positions from ``first`` on are ``suffix [rows, n, hidden]``
    (edited there, or by hooks during the call) and whose positions before ``first`` are the unedited run's.

    ``first = 0`` is a plain forward of ``suffix``.  Nothing before ``first`` may differ from the unedited run.
    Under an attention window shorter than the sequence the model's own attention runs, with its own mask.
    """
    total = run.keys_values[0][0].shape[2]
    if not 0 <= first < total or first + suffix.shape[1] != total:
        raise ValueError(
            f"first={first} with {suffix.shape[1]} positions after it does not make the unedited run's {total}; "
            "pass the positions from first to the end"
        )
    if first == 0:
        return model(inputs_embeds=suffix, logits_to_keep=keep).logits
    rows = suffix.shape[0]
    cache = DynamicCache(
        ddp_cache_data=[
            (k[:, :, :first].expand(rows, -1, -1, -1), v[:, :, :first].expand(rows, -1, -1, -1))
            for k, v in run.keys_values
        ]
    )
    kernel = reusing(model) if end_aligned_applies(model, total) else contextlib.nullcontext()
    with kernel:
        out = model(inputs_embeds=suffix, past_key_values=cache, use_cache=True, logits_to_keep=keep)
    return out.logits


def target_log_probs(logits: torch.Tensor, target) -> torch.Tensor:
    """``[rows, T]`` log-probabilities of the ``target`` ids (``[T]`` or ``[1, T]``) under the logits
    ``[rows, T, vocab]`` that predict them (e.g. :func:`forward_from`'s, with ``keep = T``)."""
    wanted = torch.as_tensor(target, device=logits.device).reshape(1, -1).expand(logits.shape[0], -1)
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, wanted[..., None])[..., 0]
