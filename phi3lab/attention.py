"""Attention maps at the cost of what is looked at, under any attention kernel.

Fused kernels (sdpa, flash-attention) never materialise attention probabilities, and
``output_attentions=True`` needs eager attention and stores every layer's ``heads × N × N``
matrix — tens of GB for one Phi-3-vision image.  :func:`capture` instead intercepts the query and
key states that each chosen Phi-3 attention layer hands to its kernel (after RoPE, with the KV
cache already concatenated), lets the kernel run as usual, and computes ``softmax(q·kᵀ/√d + mask)``
only for the chosen layers, heads and query rows.  With the same mask the kernel used (causal,
padding, sliding window), the result equals eager ``output_attentions`` (to float rounding).

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
    return [layer.self_attn for layer in base.layers]


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
    """Row indices (within this call's queries) for a query spec."""
    if callable(spec) and not isinstance(spec, str):
        return torch.as_tensor(spec(torch.arange(q_len)), dtype=torch.long)
    if spec == "last":
        return torch.tensor([q_len - 1])
    if spec == "all":
        return torch.arange(q_len)
    if isinstance(spec, slice):
        return torch.arange(q_len)[spec]
    if isinstance(spec, int):
        spec = [spec]
    rows = torch.as_tensor(list(spec), dtype=torch.long)
    return torch.where(rows < 0, rows + q_len, rows)


class AttentionCapture:
    """The recorded attention of one :func:`capture` block.

    ``weights(layer)`` gives ``[batch, heads, rows, keys]`` probabilities for the captured query
    rows in the order they were computed (several ``generate`` steps stack along ``rows``; shorter
    key ranges of earlier steps are zero-padded), ``positions(layer)`` their absolute positions.
    """

    def __init__(self, layers: list[int], heads: list[int] | None, queries: QuerySpec, budget: int):
        self.layers, self.heads, self.queries, self.budget = layers, heads, queries, budget
        self.records: dict[int, list[_Record]] = {i: [] for i in layers}
        self.bytes = 0
        self._steps: dict[int, int] = {i: 0 for i in layers}

    def __repr__(self) -> str:
        rows = sum(r.weights.shape[2] for recs in self.records.values() for r in recs)
        return f"AttentionCapture(layers={self.layers}, {rows} rows, {_human(self.bytes)})"

    def weights(self, layer: int) -> torch.Tensor:
        recs = self.records[layer]
        if not recs:
            raise KeyError(f"nothing was captured for layer {layer}; run the model inside the capture block")
        keys = max(r.weights.shape[-1] for r in recs)
        padded = [torch.nn.functional.pad(r.weights, (0, keys - r.weights.shape[-1])) for r in recs]
        return torch.cat(padded, dim=2)

    def positions(self, layer: int) -> torch.Tensor:
        return torch.cat([r.positions for r in self.records[layer]], dim=1)

    def stacked(self) -> torch.Tensor:
        """All captured layers as ``[layers, batch, heads, rows, keys]``."""
        return torch.stack([self.weights(i) for i in self.layers])

    # -- called from inside the attention kernel wrapper --------------------------------------

    def record(self, layer: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None,
               scaling: float, position_ids: torch.Tensor | None, groups: int) -> None:
        batch, _, q_len, _ = query.shape
        k_len = key.shape[2]
        rows = _select_rows(self.queries, q_len).to(query.device)
        heads = torch.as_tensor(self.heads, device=query.device) if self.heads is not None else None
        n_heads = len(self.heads) if self.heads is not None else query.shape[1]
        nbytes = 4 * batch * n_heads * len(rows) * k_len
        check_budget(self.bytes + nbytes, self.budget, "capturing these attention rows",
                     "capture fewer layers or heads, or fewer query rows (e.g. queries='last'), "
                     "or raise budget= if you know the memory is there")
        q = query[:, :, rows]
        if groups > 1:
            key = key.repeat_interleave(groups, dim=1)
        if heads is not None:
            q, key = q[:, heads], key[:, heads]
        # q·kᵀ, mask and softmax in place: the stored map is the only full-size tensor made
        weights = torch.matmul(q.float(), key.float().transpose(-1, -2)).mul_(scaling)
        if mask is not None:
            m = mask[:, :, rows, :k_len] if mask.shape[2] == q_len else mask[..., :k_len]
            if m.dtype == torch.bool:
                weights.masked_fill_(~m, float("-inf"))
            else:
                weights.add_(m.float())
            positions = (position_ids[:, rows] if position_ids is not None
                         else (k_len - q_len + rows).expand(batch, -1))
        else:  # the kernel ran with is_causal: keys up to each query's own position
            absolute = k_len - q_len + rows
            allowed = torch.arange(k_len, device=query.device)[None, :] <= absolute[:, None]
            weights.masked_fill_(~allowed, float("-inf"))
            positions = position_ids[:, rows] if position_ids is not None else absolute.expand(batch, -1)
        weights.sub_(weights.amax(dim=-1, keepdim=True)).exp_()
        weights.div_(weights.sum(dim=-1, keepdim=True))
        self.records[layer].append(_Record(self._steps[layer], positions.cpu(), weights.cpu()))
        self._steps[layer] += 1
        self.bytes += nbytes


def _wrap(kernel: Callable, modules: dict[int, int], cap: AttentionCapture) -> Callable:
    @functools.wraps(kernel)
    def capturing(module, query, key, value, attention_mask, *args, **kwargs):
        layer = modules.get(id(module))
        if layer is not None:
            cap.record(layer, query, key, attention_mask, kwargs.get("scaling") or module.scaling,
                       kwargs.get("position_ids"), getattr(module, "num_key_value_groups", 1))
        return kernel(module, query, key, value, attention_mask, *args, **kwargs)

    return capturing


class capture:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Record attention probabilities of chosen layers, heads and query rows.

    Args:
        model: a phi3lab or transformers Phi-3 / Phi-3-vision model (any attention kernel).
        layers: layer indices, ``"all"`` (default) or one int.
        heads: head indices or ``None`` for all heads.
        queries: which query rows of each forward call: ``"last"`` (default; one row per
            ``generate`` step), ``"all"``, an int, a list of ints (negative counts from the end),
            a slice, or a function of the row indices.
        budget: bytes the maps may take; default a quarter of the free memory.

    Returns:
        An :class:`AttentionCapture` (from ``with capture(...) as cap``).
    """

    def __init__(self, model, layers: Iterable[int] | int | str = "all", heads: Iterable[int] | None = None,
                 queries: QuerySpec = "last", budget: int | None = None):
        self.model = model
        modules = attention_layers(model)
        if layers == "all":
            layers = list(range(len(modules)))
        elif isinstance(layers, int):
            layers = [layers]
        layers = [int(i) % len(modules) if -len(modules) <= int(i) < len(modules) else int(i) for i in layers]
        bad = [i for i in layers if not 0 <= i < len(modules)]
        if bad:
            raise IndexError(f"layers {bad} do not exist; the model has layers 0..{len(modules) - 1}")
        n_heads = model.config.num_attention_heads
        heads = None if heads is None else [int(h) for h in heads]
        if heads is not None and any(not 0 <= h < n_heads for h in heads):
            raise IndexError(f"heads {heads} out of range; the model has heads 0..{n_heads - 1}")
        device = next(model.parameters()).device
        self.cap = AttentionCapture(layers, heads, queries, budget if budget is not None else memory_budget(device))
        self._modules = {id(modules[i]): i for i in layers}
        self._restore: Callable | None = None

    def __enter__(self) -> AttentionCapture:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        # Phi-3's attention asks this interface for its kernel on every call (eager included, as
        # the default); wrapping what it returns sees the exact q/k/mask the kernel gets.
        interface = ALL_ATTENTION_FUNCTIONS
        original_get = interface.get_interface
        modules, cap = self._modules, self.cap

        def get_interface(name, default):
            return _wrap(original_get(name, default), modules, cap)

        interface.get_interface = get_interface

        def restore():
            if interface.__dict__.get("get_interface") is get_interface:
                del interface.get_interface

        self._restore = restore
        return self.cap

    def __exit__(self, *exc) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None


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
        check_budget(nbytes, budget if budget is not None else memory_budget(device),
                     f"output_attentions=True on {int(shape[0])}×{int(shape[1])} tokens",
                     "capture only the layers, heads and rows you need with phi3lab.attention.capture "
                     "(it also works under sdpa), or shorten the input")
        return None

    return model.register_forward_pre_hook(check, with_kwargs=True)
