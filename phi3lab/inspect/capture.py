"""Attention maps at the cost of what is looked at, under any attention kernel.

Fused kernels (sdpa, flash-attention) never materialise attention probabilities, and
``output_attentions=True`` needs eager attention and stores every layer's ``heads × N × N``
matrix — tens of GB for one Phi-3-vision image.  :func:`capture` instead puts forward hooks on
the chosen layers' own modules: a pre-hook on ``self_attn`` takes the call's rotary tables, mask
and KV cache, and a hook on its ``qkv_proj`` sees the exact projections, applies the same RoPE,
joins the cached keys and computes ``softmax(q·kᵀ/√d + mask)`` only for the chosen heads and query
rows, while the kernel runs as usual.  With the same mask the kernel used (causal, padding,
sliding window), the result equals eager ``output_attentions`` (to float rounding).  Nothing
global is patched: captures nest, repeat, and leave other models (and threads using them) alone.

    >>> import phi3lab
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> inputs = lab.tokenizer(lab.render("What is 2 plus 3?"), return_tensors="pt")
    >>> with capture(lab.model, layers=[0, 3], queries="last") as cap:
    ...     _ = lab.model(**inputs)
    >>> cap.weights(3).shape[:3]  # batch, heads, query rows
    torch.Size([1, 4, 1])

Across ``generate`` the same context records one row per new token (``queries="last"``), so
``cap.weights(layer)`` holds the answer's attention over the prompt and itself.

Before anything is stored, :func:`check_budget` estimates the bytes and refuses, with a message
suggesting fewer layers, heads or rows, above a budget (a quarter of free memory by default).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Iterable, Sequence

import torch

__all__ = [
    "AttentionBudgetError",
    "AttentionCapture",
    "capture",
    "check_budget",
    "memory_budget",
    "output_attentions_bytes",
    "attention_layers",
    "guard_output_attentions",
    "KernelKeys",
    "kernel_keys",
]

QuerySpec = str | int | slice | Sequence[int] | Callable[[torch.Tensor], torch.Tensor]


class AttentionBudgetError(MemoryError):
    """Capturing (or ``output_attentions``) would need more memory than the budget allows."""


def memory_budget(device: torch.device | str = "cpu", fraction: float = 0.25) -> int:
    """Bytes that attention maps may use: ``fraction`` of the free memory of ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        import psutil

        free = psutil.virtual_memory().available
    return int(free * fraction)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_budget(nbytes: int, budget: int, what: str, advice: str) -> None:
    """Raise :class:`AttentionBudgetError` when ``nbytes`` exceeds ``budget``."""
    if nbytes > budget:
        raise AttentionBudgetError(
            f"{what} needs about {_human(nbytes)}, over the budget of {_human(budget)}; {advice}"
        )


def attention_layers(model) -> list[torch.nn.Module]:
    """The language model's self-attention modules, in layer order."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
        raise TypeError(
            f"{type(model).__name__} has no Phi-3 decoder layers (model.layers[i].self_attn); "
            "pass a Phi-3 or Phi-3-vision causal LM such as lab.model"
        )
    return [layer.self_attn for layer in layers]


def output_attentions_bytes(model, seq_len: int, batch: int = 1) -> int:
    """Bytes that ``output_attentions=True`` stores for a forward of ``seq_len`` tokens (fp32)."""
    config = model.config
    return 4 * batch * config.num_hidden_layers * config.num_attention_heads * seq_len * seq_len


@dataclasses.dataclass
class _Record:
    step: int
    positions: torch.Tensor  # [B, R] absolute positions of the captured query rows
    weights: torch.Tensor  # [B, H, R, K]


def _select_rows(spec: QuerySpec, q_len: int) -> torch.Tensor:
    """Row indices (within this call's queries) for a query spec, checked against ``q_len``."""
    if callable(spec) and not isinstance(spec, str):
        rows = torch.as_tensor(spec(torch.arange(q_len)), dtype=torch.long).reshape(-1)
    elif spec == "last":
        return torch.tensor([q_len - 1])
    elif spec == "all":
        return torch.arange(q_len)
    elif isinstance(spec, slice):
        return torch.arange(q_len)[spec]
    else:
        rows = torch.as_tensor([spec] if isinstance(spec, int) else list(spec), dtype=torch.long)
    bad = [int(r) for r in rows if not -q_len <= int(r) < q_len]
    if bad:
        raise IndexError(
            f"query rows {bad} are out of range for a forward of {q_len} token(s); use rows in "
            f"-{q_len}..{q_len - 1}, 'last' or 'all'"
        )
    return torch.where(rows < 0, rows + q_len, rows)


def _check_queries(queries) -> QuerySpec:
    if isinstance(queries, str):
        if queries not in ("last", "all"):
            raise ValueError(
                f"queries={queries!r} is not a choice; use 'last', 'all', an int, a list of ints, "
                "a slice or a function of the row indices"
            )
        return queries
    if isinstance(queries, bool):
        raise TypeError("queries must be 'last', 'all', an int, a list of ints, a slice or a function, got a bool")
    if isinstance(queries, int) or isinstance(queries, slice) or callable(queries):
        return queries
    if isinstance(queries, Iterable):
        items = list(queries)
        if not items or any(isinstance(q, bool) or not isinstance(q, int) for q in items):
            raise TypeError(f"queries as a list must be a non-empty list of ints, got {queries!r}")
        return items
    raise TypeError(
        f"queries must be 'last', 'all', an int, a list of ints, a slice or a function, got {type(queries).__name__}"
    )


def _index_list(value, n: int, name: str) -> list[int]:
    """``value`` as a sorted list of distinct indices into ``n`` items (negatives count from the end)."""
    items = [value] if isinstance(value, int) else list(value) if isinstance(value, (list, tuple, range)) else None
    if items is None or not items or any(isinstance(i, bool) or not isinstance(i, int) for i in items):
        raise TypeError(f"{name} must be an int or a non-empty list of ints, got {value!r}")
    bad = [i for i in items if not -n <= i < n]
    if bad:
        raise IndexError(f"{name} {bad} do not exist; the model has {name} 0..{n - 1} (negative counts from the end)")
    return sorted({i % n for i in items})


def choose_layers(layers, n: int) -> list[int]:
    """``"all"``, an int or a list of ints (negatives from the end) as sorted layer indices of ``n``."""
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(
                f"layers={layers!r} is not a choice; use 'all', an int (e.g. -1 for the last layer) or a list of ints"
            )
        return list(range(n))
    return _index_list(layers, n, "layers")


class AttentionCapture:
    """The recorded attention of one :func:`capture` block.

    ``weights(layer)`` gives ``[batch, heads, rows, keys]`` probabilities for the captured query
    rows in the order they were computed (several ``generate`` steps stack along ``rows``; shorter
    key ranges of earlier steps are zero-padded), ``positions(layer)`` their absolute positions.
    With ``keep_qk`` the rotated queries and keys of every position are kept too (per layer, of the
    latest sequence), which :meth:`rollout_rows` uses to compute rollout without storing N×N maps.
    """

    def __init__(
        self, layers: list[int], heads: list[int] | None, queries: QuerySpec, budget: int, keep_qk: bool = False
    ):
        self.layers, self.heads, self.queries, self.budget = layers, heads, queries, budget
        self.keep_qk = keep_qk
        self.records: dict[int, list[_Record]] = {i: [] for i in layers}
        self.qk: dict[int, dict] = {}
        self.bytes = 0
        self._steps: dict[int, int] = {i: 0 for i in layers}

    def __repr__(self) -> str:
        rows = sum(r.weights.shape[2] for recs in self.records.values() for r in recs)
        return f"AttentionCapture(layers={self.layers}, {rows} rows, {_human(self.bytes)})"

    def _records(self, layer: int) -> list[_Record]:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}")
        if layer not in self.records:
            raise KeyError(
                f"layer {layer} was not captured; captured layers: {self.layers} "
                "(pass layers=[...] or layers='all' to capture it)"
            )
        recs = self.records[layer]
        if not recs:
            raise RuntimeError(f"nothing was captured for layer {layer}: run the model inside the capture block")
        return recs

    def weights(self, layer: int) -> torch.Tensor:
        recs = self._records(layer)
        keys = max(r.weights.shape[-1] for r in recs)
        padded = [torch.nn.functional.pad(r.weights, (0, keys - r.weights.shape[-1])) for r in recs]
        return torch.cat(padded, dim=2)

    def positions(self, layer: int) -> torch.Tensor:
        return torch.cat([r.positions for r in self._records(layer)], dim=1)

    def stacked(self) -> torch.Tensor:
        """All captured layers as ``[layers, batch, heads, rows, keys]``."""
        return torch.stack([self.weights(i) for i in self.layers])

    # -- called from the hooks -------------------------------------------------------------------

    def _reserve(self, nbytes: int) -> None:
        check_budget(
            self.bytes + nbytes,
            self.budget,
            "capturing these attention rows",
            "capture fewer layers or heads, or fewer query rows (e.g. queries='last'), "
            "or raise budget= if you know the memory is there",
        )
        self.bytes += nbytes

    def record(
        self,
        layer: int,
        query: torch.Tensor,
        keys: KernelKeys,
        mask: torch.Tensor | None,
        scaling: float,
        position_ids: torch.Tensor | None,
        groups: int,
        sliding_window: int | None = None,
    ) -> None:
        """Store softmax(q·kᵀ·scaling + mask) for the selected rows of one forward call.

        ``query`` holds this call's rows ``[B, H, q_len, d]``; ``keys`` the keys the kernel sees
        (a :class:`KernelKeys`: past and new, with each key's absolute position); ``mask`` is the mask
        the kernel got (4-D additive or boolean over those keys, 2-D padding for flash-attention, or
        ``None`` for a causal kernel).  Each row is stored over absolute key positions
        ``0 … seen + q_len − 1``: keys a sliding-window cache no longer holds get weight 0 at their
        own positions, never another token's.
        """
        key = keys.keys
        if self.keep_qk:
            self._keep(layer, query, key[:, :, -query.shape[2] :], keys.seen, groups)
        batch, _, q_len, _ = query.shape
        k_len = key.shape[2]
        total = keys.seen + q_len  # absolute key positions 0 … total − 1
        # a decode step of generate has one new row: it is the answer's, whatever the prompt's selection
        rows = (torch.tensor([0]) if keys.seen > 0 and q_len == 1 else _select_rows(self.queries, q_len)).to(
            query.device
        )
        heads = torch.as_tensor(self.heads, device=query.device) if self.heads is not None else None
        n_heads = len(self.heads) if self.heads is not None else query.shape[1]
        self._reserve(4 * batch * n_heads * len(rows) * max(total, k_len))
        q = query[:, :, rows]
        if groups > 1:
            key = key.repeat_interleave(groups, dim=1)
        if heads is not None:
            q, key = q[:, heads], key[:, heads]
        # q·kᵀ, mask and softmax in place: the stored map is the only full-size tensor made
        weights = torch.matmul(q.float(), key.float().transpose(-1, -2)).mul_(scaling)
        absolute = keys.seen + rows  # the rows' positions in the sequence (cache index)
        key_pos = keys.positions.to(query.device)
        if mask is not None and mask.dim() == 4:
            if mask.shape[-1] < k_len:
                raise RuntimeError(
                    f"attention capture: the kernel's mask covers {mask.shape[-1]} keys but the "
                    f"cache gives {k_len}; this cache layout is not supported"
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
        positions = position_ids[:, rows] if position_ids is not None else absolute.expand(batch, -1)
        weights.sub_(weights.amax(dim=-1, keepdim=True)).exp_()
        weights.div_(weights.sum(dim=-1, keepdim=True))
        valid = key_pos >= 0
        if keys.offset == 0 and k_len == total and bool(valid.all()):
            placed = weights
        else:  # place each key's weight at its absolute position (sliding-window and static caches)
            placed = weights.new_zeros(*weights.shape[:-1], total)
            placed[..., key_pos[valid]] = weights[..., valid]
        self.records[layer].append(_Record(self._steps[layer], positions.cpu(), placed.cpu()))
        self._steps[layer] += 1

    def _keep(self, layer: int, query: torch.Tensor, new_keys: torch.Tensor, seen: int, groups: int) -> None:
        """Append this call's rotated queries and new keys to the layer's sequence (reset when ``seen == 0``)."""
        self._reserve((query.numel() + new_keys.numel()) * query.element_size())
        store = self.qk.get(layer)
        if store is None or seen == 0:
            store = self.qk[layer] = {"q": [], "k": [], "groups": groups}
        store["q"].append(query.detach())
        store["k"].append(new_keys.detach())

    def queries_keys(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(q [B, H, T, d], k [B, H_kv, T, d], groups)`` kept for ``layer`` (needs ``keep_qk``)."""
        if layer not in self.qk:
            raise RuntimeError(
                f"no queries and keys were kept for layer {layer}; capture with keep_qk=True "
                "(lab.run_with_cache(..., rollout=True))"
            )
        store = self.qk[layer]
        return torch.cat(store["q"], dim=2), torch.cat(store["k"], dim=2), store["groups"]


class _Hooks:
    """Forward hooks on one model's attention modules that feed an :class:`AttentionCapture`.

    A pre-hook on each chosen ``self_attn`` takes the call's rotary tables, mask and cache; a
    forward hook on its ``qkv_proj`` then sees the exact projections the layer computes, applies
    the same RoPE, joins the cached keys (as the dynamic cache's ``update`` will) and records.
    Nothing global is touched, so captures nest, repeat, and leave other models alone.
    """

    def __init__(self, modules: list[torch.nn.Module], layers: list[int], cap: AttentionCapture):
        self.modules, self.layers, self.cap = modules, layers, cap
        self.local = threading.local()
        self.handles: list = []

    def install(self) -> None:
        for layer in self.layers:
            attn = self.modules[layer]
            self.handles.append(
                attn.register_forward_pre_hook(functools.partial(self._before, layer), with_kwargs=True)
            )
            self.handles.append(attn.qkv_proj.register_forward_hook(functools.partial(self._after, layer)))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _before(self, layer, module, args, kwargs):
        self.local.__dict__[layer] = kwargs
        return None

    def _after(self, layer, proj, args, qkv):
        from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb

        kwargs = self.local.__dict__.pop(layer, None)
        if kwargs is None:
            return None
        attn = self.modules[layer]
        q_dim = attn.config.num_attention_heads * attn.head_dim
        kv_dim = attn.num_key_value_heads * attn.head_dim
        shape = (*qkv.shape[:-1], -1, attn.head_dim)
        with torch.no_grad():
            query = qkv[..., :q_dim].view(shape).transpose(1, 2)
            key = qkv[..., q_dim : q_dim + kv_dim].view(shape).transpose(1, 2)
            cos, sin = kwargs["position_embeddings"]
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            keys = kernel_keys(kwargs.get("past_key_values"), attn.layer_idx, key)
            self.cap.record(
                layer,
                query,
                keys,
                kwargs.get("attention_mask"),
                attn.scaling,
                kwargs.get("position_ids"),
                attn.num_key_value_groups,
                sliding_window=getattr(attn.config, "sliding_window", None),
            )
        return None


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


class capture:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Record attention probabilities of chosen layers, heads and query rows.

    Hooks go on the model's own attention modules for the duration of the block (nothing global
    is patched): captures nest, repeat, and other models running meanwhile are not affected.

    Args:
        model: a phi3lab or transformers Phi-3 / Phi-3-vision model (any attention kernel).
        layers: layer indices, ``"all"`` (default) or one int (negative counts from the end).
        heads: head indices, one int, or ``None`` for all heads.
        queries: which query rows of each forward call: ``"last"`` (default; one row per
            ``generate`` step), ``"all"``, an int, a list of ints (negative counts from the end),
            a slice, or a function of the row indices.
        budget: bytes the maps may take; default a quarter of the free memory.
        keep_qk: also keep every position's rotated queries and keys (for scalable rollout).

    Returns:
        An :class:`AttentionCapture` (from ``with capture(...) as cap``).
    """

    def __init__(
        self,
        model,
        layers: Iterable[int] | int | str = "all",
        heads: Iterable[int] | int | None = None,
        queries: QuerySpec = "last",
        budget: int | None = None,
        keep_qk: bool = False,
    ):
        if not isinstance(model, torch.nn.Module):
            hint = (
                " — this looks like a phi3lab Lab: pass lab.model, or use lab.run_with_cache(...)"
                if hasattr(model, "model") and hasattr(model, "processor")
                else ""
            )
            raise TypeError(f"capture takes a torch model, got {type(model).__name__}{hint}")
        modules = attention_layers(model)
        layers = choose_layers(layers, len(modules))
        n_heads = model.config.num_attention_heads
        if heads is not None:
            heads = _index_list(heads, n_heads, "heads")
        queries = _check_queries(queries)
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise TypeError(f"budget must be a number of bytes (an int ≥ 0) or None, got {budget!r}")
        device = next(model.parameters()).device
        self.model = model
        self.cap = AttentionCapture(
            layers, heads, queries, budget if budget is not None else memory_budget(device), keep_qk=bool(keep_qk)
        )
        self._hooks = _Hooks(modules, layers, self.cap)

    def __enter__(self) -> AttentionCapture:
        self._hooks.install()
        return self.cap

    def __exit__(self, *exc) -> None:
        self._hooks.remove()


def guard_output_attentions(model, budget: int | None = None):
    """Refuse ``output_attentions=True`` calls whose maps would not fit the budget.

    Installs a forward pre-hook on ``model`` (``phi3lab.load`` does this) that estimates the bytes
    of all layers' ``heads × N × N`` maps before the forward runs.  Returns the hook handle.
    """

    def check(module, args, kwargs):
        if not kwargs.get("output_attentions"):
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        shape = ids.shape if ids is not None else embeds.shape[:2]
        nbytes = output_attentions_bytes(module, int(shape[1]), int(shape[0]))
        device = next(module.parameters()).device
        check_budget(
            nbytes,
            budget if budget is not None else memory_budget(device),
            f"output_attentions=True on {int(shape[0])}×{int(shape[1])} tokens",
            "capture only the layers, heads and rows you need with phi3lab.inspect.capture.capture "
            "(it also works under sdpa), or shorten the input",
        )
        return None

    return model.register_forward_pre_hook(check, with_kwargs=True)
