"""The places inside a Phi-3 model that phi3lab reads and edits, by name, and which positions a hook sees.

One vocabulary for Phi-3 and Phi-3-vision's language model (``B`` batch, ``T`` positions of one
forward, ``D`` hidden size, ``H`` query heads, ``H_kv`` key/value heads, ``d`` head size, ``K`` keys)::

    site          per layer  shape              what it is
    embed         no         [B, T, D]          what enters layer 0: token embeddings, image features written in
    resid_pre     yes        [B, T, D]          the residual stream entering a decoder layer
    attn_out      yes        [B, T, D]          the attention block's output (after o_proj)
    resid_mid     yes        [B, T, D]          resid_pre + attn_out: what the MLP's norm reads
    mlp_out       yes        [B, T, D]          the MLP's output
    resid_post    yes        [B, T, D]          resid_mid + mlp_out: the stream leaving the layer
    q             yes        [B, T, H, d]       queries, after RoPE
    k             yes        [B, T, H_kv, d]    keys, after RoPE (this forward's new positions)
    v             yes        [B, T, H_kv, d]    values
    z             yes        [B, T, H, d]       each head's output, before o_proj mixes the heads
    pattern       yes        [B, H, T, K]       attention probabilities (read only; any kernel)
    logits        no         [B, T, V]          the output head (only the positions it is asked for)
    image_embeds  per image  [N_i, D]           Phi-3-vision: one picture's projected tokens
    clip          yes (CLIP) [views, P, D_clip] Phi-3-vision: a CLIP tower layer's output (the layers that run:
                                                up to the one whose output the model reads, the second-to-last)

:class:`Positions` says which positions of each forward a hook sees: ``"all"``, ``"last"`` (the last
of every forward: the prompt's, then each generated token's), absolute positions (an int, a list, a
range or a slice; negative ones count from the end of the first forward, i.e. the prompt), or a
function of a forward's positions; ``new=True`` adds every position generated after the first forward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

__all__ = ["Site", "SITES", "STREAM", "Positions", "At", "choose_layers", "choose_heads", "check_site"]


@dataclasses.dataclass(frozen=True)
class Site:
    """One named place: whether it repeats per layer, its shape, and whether it can be edited."""

    name: str
    per_layer: bool
    shape: str
    meaning: str
    editable: bool = True
    heads: str | None = None  # the head axis: "query" (H heads) or "kv" (H_kv heads)
    vision: bool = False

    def describe(self) -> str:
        return f"{self.name:<13}{'per layer' if self.per_layer else '':<10}{self.shape:<19}{self.meaning}"


SITES: dict[str, Site] = {
    s.name: s
    for s in (
        Site("embed", False, "[B, T, D]", "what enters layer 0 (token embeddings, image features written in)"),
        Site("resid_pre", True, "[B, T, D]", "the residual stream entering a decoder layer"),
        Site("attn_out", True, "[B, T, D]", "the attention block's output (after o_proj)"),
        Site("resid_mid", True, "[B, T, D]", "resid_pre + attn_out: what the MLP's norm reads"),
        Site("mlp_out", True, "[B, T, D]", "the MLP's output"),
        Site("resid_post", True, "[B, T, D]", "resid_mid + mlp_out: the stream leaving the layer"),
        Site("q", True, "[B, T, H, d]", "queries after RoPE", heads="query"),
        Site("k", True, "[B, T, H_kv, d]", "keys after RoPE", heads="kv"),
        Site("v", True, "[B, T, H_kv, d]", "values", heads="kv"),
        Site("z", True, "[B, T, H, d]", "each head's output before o_proj", heads="query"),
        Site("pattern", True, "[B, H, T, K]", "attention probabilities", editable=False, heads="query"),
        Site("logits", False, "[B, T, V]", "the output head's logits"),
        Site("image_embeds", True, "[N_i, D]", "one picture's projected image tokens (index: picture)", vision=True),
        Site("clip", True, "[views, P, D_clip]", "a CLIP tower layer's output", vision=True),
    )
}
"""Every site, by name."""

STREAM = ("embed", "resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
"""The residual-stream sites, in the order the stream passes them."""


def check_site(name) -> Site:
    """The :class:`Site` called ``name``, or a clear error listing the names."""
    if not isinstance(name, str) or name not in SITES:
        raise ValueError(
            f"{name!r} is not a site; the sites are {', '.join(SITES)} (see phi3lab.inspect.sites for shapes)"
        )
    return SITES[name]


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


def choose_heads(heads, n: int) -> list[int] | None:
    """``None`` (every head), an int or a list of ints as sorted head indices of ``n``."""
    if heads is None:
        return None
    if isinstance(heads, str):
        if heads != "all":
            raise ValueError(f"heads={heads!r} is not a choice; use None or 'all' for every head, an int or a list")
        return None
    return _index_list(heads, n, "heads")


@dataclasses.dataclass(frozen=True)
class At:
    """Where an edit function is being called: ``fn(value, at)``.

    Attributes:
        site: the site's name.
        layer: its layer (picture index for ``image_embeds``; ``None`` for ``embed`` and ``logits``).
        step: which forward of the block this is (0: the first, e.g. generation's prefill).
        positions: ``[rows]`` absolute positions of the rows ``value`` holds.
        heads: the heads ``value`` holds (``None``: all).
    """

    site: str
    layer: int | None
    step: int
    positions: torch.Tensor
    heads: tuple[int, ...] | None = None


Spec = str | int | slice | range | Sequence[int] | Callable[[torch.Tensor], torch.Tensor]


class Positions:
    """Which positions of each forward a hook sees (see the module docstring).

    Examples:
        >>> Positions("last").rows(seen=0, length=5, prompt=5).tolist()
        [4]
        >>> Positions([0, -1]).rows(seen=0, length=5, prompt=5).tolist()
        [0, 4]
        >>> Positions(slice(-2, None), new=True).rows(seen=5, length=1, prompt=5).tolist()
        [0]
    """

    def __init__(self, spec: Spec = "all", *, new: bool = False):
        self.new = bool(new)
        if isinstance(spec, Positions):
            spec, self.new = spec.spec, spec.new or self.new
        if isinstance(spec, str):
            if spec not in ("all", "last"):
                raise ValueError(
                    f"positions={spec!r} is not a choice; use 'all', 'last', a position (int), a list of positions, "
                    "a range, a slice or a function of a forward's positions"
                )
        elif isinstance(spec, bool):
            raise TypeError("positions must be 'all', 'last', an int, a list of ints, a range, a slice or a function")
        elif isinstance(spec, slice):
            for part in (spec.start, spec.stop, spec.step):
                if part is not None and (isinstance(part, bool) or not isinstance(part, int)):
                    raise TypeError(f"positions as a slice takes ints, got {spec!r}")
            if spec.step is not None and spec.step <= 0:
                raise ValueError(f"positions={spec!r}: a slice of positions must step forward (step ≥ 1)")
            start, stop = spec.start, spec.stop
            if start is not None and stop is not None and (start >= 0) == (stop >= 0) and stop <= start:
                raise ValueError(f"positions={spec!r} selects no positions; use slice(start, stop) with start < stop")
        elif isinstance(spec, int):
            pass
        elif isinstance(spec, (list, tuple, range)) or (isinstance(spec, torch.Tensor) and spec.dim() == 1):
            items = [int(i) for i in spec] if isinstance(spec, torch.Tensor) else list(spec)
            if not items or any(isinstance(i, bool) or not isinstance(i, int) for i in items):
                raise TypeError(f"positions as a list must be a non-empty list of ints, got {spec!r}")
            spec = items
        elif not callable(spec):
            raise TypeError(
                "positions must be 'all', 'last', an int, a list of ints, a range, a slice or a function, "
                f"got {type(spec).__name__}"
            )
        self.spec = spec

    def __repr__(self) -> str:
        return f"Positions({self.spec!r}{', new=True' if self.new else ''})"

    @property
    def everything(self) -> bool:
        return isinstance(self.spec, str) and self.spec == "all"

    def rows(self, *, seen: int, length: int, prompt: int) -> torch.Tensor:
        """Indices (within a forward of ``length`` positions starting at ``seen``) of the positions seen.

        ``prompt`` is the length of the block's first forward, which negative positions count from.
        """
        spec = self.spec
        if self.new and seen >= prompt:
            return torch.arange(length)
        if isinstance(spec, str):
            return torch.arange(length) if spec == "all" else torch.tensor([length - 1])
        absolute = torch.arange(seen, seen + length)
        if callable(spec) and not isinstance(spec, (list, int, slice)):
            picked = torch.as_tensor(spec(absolute))
            if picked.dtype == torch.bool:
                return picked.nonzero()[:, 0]
            picked = picked.long().reshape(-1) - seen  # absolute positions → rows of this forward
            return torch.unique(picked[(picked >= 0) & (picked < length)])
        if isinstance(spec, slice):
            wanted = torch.arange(prompt)[spec] if _from_end(spec) else _slice_positions(spec, seen + length)
        else:
            items = [spec] if isinstance(spec, int) else spec
            bad = [i for i in items if i < -prompt]
            if bad:
                raise IndexError(
                    f"positions {bad} do not exist: the prompt has {prompt} positions (negative ones count from its end)"
                )
            wanted = torch.tensor([i + prompt if i < 0 else i for i in items])
        inside = wanted[(wanted >= seen) & (wanted < seen + length)]
        return torch.unique(inside - seen)


def _from_end(spec: slice) -> bool:
    return any(part is not None and part < 0 for part in (spec.start, spec.stop))


def _slice_positions(spec: slice, upto: int) -> torch.Tensor:
    return torch.arange(upto)[spec]
