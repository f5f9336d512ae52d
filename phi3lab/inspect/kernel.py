"""What a Phi-3 attention layer computes, recomputed from what its hooks see.

The hook core (:mod:`phi3lab.inspect.hooks`) sees a layer's fused ``qkv_proj`` output and the
arguments its ``self_attn`` was called with (rotary tables, mask, KV cache).  From those, this
module rebuilds what the kernel works on, without touching the cache or the kernel:

* :func:`split_heads` — queries, keys and values ``[B, heads, T, d]`` from the fused projection,
  queries and keys rotated as the layer rotates them (:func:`rotate`; :func:`unrotate` undoes it,
  so an edit of a rotated query or key can be written back before the rotation);
* :func:`kernel_keys` — the keys the kernel will see once the cache is updated, and each key's
  absolute position (dynamic, sliding-window, static and static sliding-window caches);
* :func:`attention_rows` — ``softmax(q·kᵀ/√d + mask)`` for chosen heads and query rows, placed at
  the keys' absolute positions: equal to eager ``output_attentions`` (to float rounding).
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = [
    "KernelKeys",
    "kernel_keys",
    "attention_rows",
    "split_heads",
    "rotate",
    "unrotate",
    "decoder_layers",
    "attention_modules",
    "language_model",
    "embed_inputs",
]


def language_model(model) -> torch.nn.Module:
    """The decoder stack (``model.model`` of a causal LM, or the model itself), checked to be a Phi-3's."""
    if not isinstance(model, torch.nn.Module):
        hint = (
            " — this looks like a phi3lab Lab: pass lab.model (or use lab.run_with_cache(...))"
            if hasattr(model, "model") and hasattr(model, "processor")
            else ""
        )
        raise TypeError(f"expected a torch model, got {type(model).__name__}{hint}")
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
        raise TypeError(
            f"{type(model).__name__} has no Phi-3 decoder layers (model.layers[i].self_attn); "
            "pass a Phi-3 or Phi-3-vision causal LM such as lab.model"
        )
    return base


def decoder_layers(model) -> list[torch.nn.Module]:
    """The decoder layers of a Phi-3 or Phi-3-vision causal LM, in order."""
    return list(language_model(model).layers)


def attention_modules(model) -> list[torch.nn.Module]:
    """The language model's self-attention modules, in layer order."""
    return [layer.self_attn for layer in decoder_layers(model)]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as Phi-3 applies it to ``x [B, heads, T, d]`` (partial rotary included: only the first
    ``cos.shape[-1]`` channels turn)."""
    from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb

    return apply_rotary_pos_emb(x, x, cos, sin)[0]


def unrotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rotate` (a rotation by the opposite angles).

    Examples:
        >>> x = torch.randn(1, 2, 3, 8)
        >>> angle = torch.rand(1, 3, 4).repeat(1, 1, 2)
        >>> torch.allclose(unrotate(rotate(x, angle.cos(), angle.sin()), angle.cos(), angle.sin()), x, atol=1e-6)
        True
    """
    return rotate(x, cos, -sin)


def split_heads(attn, qkv: torch.Tensor, position_embeddings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q, k, v)`` of one attention call, ``[B, heads, T, d]`` (``k`` and ``v`` with the key/value heads),
    from the fused ``qkv_proj`` output; ``q`` and ``k`` rotated as the layer rotates them."""
    q_dim = attn.config.num_attention_heads * attn.head_dim
    kv_dim = attn.num_key_value_heads * attn.head_dim
    shape = (*qkv.shape[:-1], -1, attn.head_dim)
    query = qkv[..., :q_dim].view(shape).transpose(1, 2)
    key = qkv[..., q_dim : q_dim + kv_dim].view(shape).transpose(1, 2)
    value = qkv[..., q_dim + kv_dim :].view(shape).transpose(1, 2)
    cos, sin = position_embeddings
    return rotate(query, cos, sin), rotate(key, cos, sin), value


@dataclasses.dataclass(frozen=True)
class KernelKeys:
    """The keys an attention kernel sees in one call, and where each sits in the sequence.

    Attributes:
        keys: ``[B, H_kv, k_len, d]``, in the order the kernel gets them (cached keys, then this call's).
        positions: ``[k_len]`` absolute position of each key (its cache index), ``-1`` for a slot a
            static cache has not filled yet.
        seen: tokens the cache held before this call (the position of this call's first query).
    """

    keys: torch.Tensor
    positions: torch.Tensor
    seen: int

    @property
    def offset(self) -> int:
        """Absolute position of the first key the kernel sees (above 0 once a sliding window has slid)."""
        return int(self.positions[0])


def cache_length(cache) -> int:
    """Tokens a KV cache held before the current call (0 without a cache)."""
    if cache is None:
        return 0
    return int(cache.get_seq_length())


def kernel_keys(cache, layer_idx: int, new: torch.Tensor) -> KernelKeys:
    """The keys ``cache.update(new, …)`` will hand the kernel for one layer, without changing the cache.

    Mirrors each cache layer type of transformers 5: ``DynamicLayer`` (every past key),
    ``DynamicSlidingWindowLayer`` (the last ``window − 1`` keys; their positions start where the window
    has slid to), ``StaticLayer`` (a preallocated buffer, written at ``seen …``) and
    ``StaticSlidingWindowLayer`` (a rolling buffer).  Other layer types (quantized caches, offloading
    variants with other layouts) are refused with a clear error rather than read wrongly.
    """
    from transformers.cache_utils import (
        DynamicLayer,
        DynamicSlidingWindowLayer,
        StaticLayer,
        StaticSlidingWindowLayer,
    )

    q_len = new.shape[2]
    device = new.device
    layers = getattr(cache, "layers", None) if cache is not None else None
    if layers is None or layer_idx >= len(layers):
        return KernelKeys(new, torch.arange(q_len, device=device), 0)
    entry = layers[layer_idx]
    ready = bool(getattr(entry, "is_initialized", False))
    kind = type(entry)
    if kind is DynamicLayer:
        past = entry.keys if ready and entry.keys is not None and entry.keys.numel() else None
        seen = 0 if past is None else past.shape[2]
        keys = new if past is None else torch.cat([past, new], dim=2)
        return KernelKeys(keys, torch.arange(seen + q_len, device=device), seen)
    if kind is DynamicSlidingWindowLayer:
        seen = int(entry.cumulative_length)
        past = entry.keys if ready and entry.keys is not None and entry.keys.numel() else None
        held = 0 if past is None else past.shape[2]
        keys = new if past is None else torch.cat([past, new], dim=2)
        positions = torch.arange(seen - held, seen + q_len, device=device)
        if entry.record_past:  # the layer hands over only what the mask advertises
            visible = entry.sliding_window - 1 + q_len
            keys, positions = keys[:, :, -visible:], positions[-visible:]
        return KernelKeys(keys, positions, seen)
    if kind is StaticSlidingWindowLayer:
        seen = int(entry.cumulative_length_int)
        size = entry.max_cache_len
        if ready and seen >= size:  # full: the oldest key drops out, the new ones follow
            return KernelKeys(
                torch.cat([entry.keys[:, :, 1:], new], dim=2),
                torch.arange(seen - size + 1, seen + q_len, device=device),
                seen,
            )
        if seen + q_len > size:  # becoming full on this call
            keys = new if seen == 0 else torch.cat([entry.keys[:, :, :seen], new], dim=2)
            return KernelKeys(keys, torch.arange(seen + q_len, device=device), seen)
        return _static_keys(entry, new, seen, size, ready)
    if kind is StaticLayer:
        seen = int(entry.cumulative_length) if ready else 0
        return _static_keys(entry, new, seen, entry.max_cache_len, ready)
    raise NotImplementedError(
        f"attention capture reads the keys of transformers' dynamic, sliding-window and static caches; this "
        f"forward uses {kind.__name__}. Generate with the default cache (no cache_implementation=..., no "
        "quantized or offloaded cache)"
    )


def _static_keys(entry, new: torch.Tensor, seen: int, size: int, ready: bool) -> KernelKeys:
    """A preallocated buffer of ``size`` slots with this call's keys written at ``seen …``."""
    q_len = new.shape[2]
    if ready:
        buffer = entry.keys.clone()
    else:
        buffer = new.new_zeros(*new.shape[:2], size, new.shape[-1])
    buffer[:, :, seen : seen + q_len] = new
    positions = torch.arange(size, device=new.device)
    positions[seen + q_len :] = -1  # slots not written yet: the kernel's mask hides them
    return KernelKeys(buffer, positions, seen)


def attention_rows(
    query: torch.Tensor,
    keys: KernelKeys,
    mask: torch.Tensor | None,
    scaling: float,
    groups: int,
    rows: torch.Tensor,
    heads: list[int] | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """``softmax(q·kᵀ·scaling + mask)`` for query ``rows`` of one call, over absolute key positions.

    Args:
        query: this call's rotated queries ``[B, H, q_len, d]``.
        keys: the keys the kernel sees (:func:`kernel_keys`).
        mask: the mask the kernel got: 4-D additive or boolean over those keys, 2-D padding (flash
            attention) or ``None`` (a causal kernel).
        scaling: the layer's ``1/√d``.
        groups: query heads per key/value head.
        rows: indices of the query rows wanted (within this call).
        heads: the query heads wanted (``None``: all).
        sliding_window: the layer's window, applied when the kernel had no 4-D mask.

    Returns:
        ``[B, len(heads), len(rows), seen + q_len]`` float32 probabilities; keys a sliding window no
        longer holds get weight 0 at their own positions, never another token's.
    """
    key = keys.keys
    q_len = query.shape[2]
    k_len = key.shape[2]
    total = keys.seen + q_len
    q = query[:, :, rows]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
    if heads is not None:
        index = torch.as_tensor(heads, device=query.device)
        q, key = q[:, index], key[:, index]
    # q·kᵀ, mask and softmax in place: the result is the only full-size tensor made
    weights = torch.matmul(q.float(), key.float().transpose(-1, -2)).mul_(scaling)
    absolute = keys.seen + rows
    key_pos = keys.positions.to(query.device)
    if mask is not None and mask.dim() == 4:
        if mask.shape[-1] < k_len:
            raise RuntimeError(
                f"attention capture: the kernel's mask covers {mask.shape[-1]} keys but the cache gives {k_len}; "
                "this cache layout is not supported"
            )
        m = mask[:, :, rows, :k_len] if mask.shape[2] == q_len else mask[..., :k_len]
        if m.dtype == torch.bool:
            weights.masked_fill_(~m, float("-inf"))
        else:
            weights.add_(m.float())
    else:  # causal kernel (no mask, or flash-attention's 2-D padding mask)
        allowed = (key_pos[None, :] <= absolute[:, None]) & (key_pos[None, :] >= 0)
        if sliding_window:
            allowed &= key_pos[None, :] > absolute[:, None] - sliding_window
        weights.masked_fill_(~allowed, float("-inf"))
        if mask is not None:  # [B, length], 1 = a real token, indexed by absolute position
            padding = mask[:, key_pos.clamp(min=0)].bool() if mask.shape[-1] >= total else mask[:, -k_len:].bool()
            weights.masked_fill_(~padding[:, None, None, :], float("-inf"))
    weights.sub_(weights.amax(dim=-1, keepdim=True)).exp_()
    weights.div_(weights.sum(dim=-1, keepdim=True))
    valid = key_pos >= 0
    if keys.offset == 0 and k_len == total and bool(valid.all()):
        return weights
    placed = weights.new_zeros(*weights.shape[:-1], total)  # each key's weight at its absolute position
    placed[..., key_pos[valid]] = weights[..., valid]
    return placed


def embed_inputs(model, input_ids: torch.Tensor, pixel_values=None, image_sizes=None) -> torch.Tensor:
    """The embeddings a forward of ``input_ids`` starts from: token embeddings, and for Phi-3-vision the
    image features written into the image positions (what the ``embed`` site holds)."""
    base = language_model(model)
    if hasattr(base, "embed"):  # phi3lab's Phi-3-vision
        return base.embed(input_ids, pixel_values, image_sizes)
    return model.get_input_embeddings()(input_ids)
