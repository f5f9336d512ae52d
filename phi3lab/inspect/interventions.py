"""Edit what flows through a model while it runs: two shortcuts over the hook core, and a projection.

The hook core (:class:`phi3lab.inspect.hooks.Hooks`) edits any named site with ``fn(value, at)``.  The
two most common edits have shortcuts taking ``fn(layer, tensor)``:

* :func:`edit_residual` — the residual stream entering each chosen decoder layer (``where="input"``,
  the ``resid_pre`` site; layer 0's input is the embeddings), between its attention and its MLP
  (``where="mid"``, ``resid_mid``: what both the MLP and the rest of the stream see) or leaving it
  (``where="output"``, ``resid_post``).  Directional ablation, steering vectors and activation patching
  of whole positions are one line each.
* :func:`edit_heads` — the per-head attention outputs ``z [batch, tokens, heads, head_dim]`` just
  before ``o_proj`` mixes them (the ``z`` site): zero-, mean- or activation-patch single heads.

Both are :class:`~phi3lab.inspect.hooks.Hooks` blocks: nothing global is patched, edits nest and
combine with reads, and only the thread that opened the block is edited.  Returning ``None`` leaves
the tensor as it was.

    >>> import phi3lab, torch
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> inputs = lab.encode("What is 2 plus 3?")
    >>> with edit_heads(lab.model, lambda layer, z: z * 0, layers=[0]), torch.no_grad():
    ...     patched = lab.model(**inputs).logits
    >>> bool((patched != lab.model(**inputs).logits).any())
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from phi3lab.inspect.hooks import Hooks
from phi3lab.inspect.kernel import decoder_layers
from phi3lab.inspect.sites import choose_layers

__all__ = ["edit_residual", "edit_heads", "project_out", "RESIDUAL_SITES"]

RESIDUAL_SITES = {"input": "resid_pre", "mid": "resid_mid", "output": "resid_post"}
"""``edit_residual``'s ``where`` → the site it edits."""


def _check(fn) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be a function of (layer, tensor) returning a tensor or None, got {type(fn).__name__}")


def edit_residual(model, fn: Callable, layers="all", where: str = "input", positions="all") -> Hooks:
    """Apply ``fn(layer, hidden)`` to the residual stream entering, inside or leaving chosen decoder layers.

    Args:
        model: a Phi-3 / Phi-3-vision causal LM (``lab.model``) or its Lab.
        fn: ``(layer, hidden [batch, tokens, hidden]) -> new hidden or None``.
        layers: ``"all"`` (default), an int or a list of ints.
        where: ``"input"`` (before the layer; layer 0's input is the embeddings), ``"mid"`` (between the
            layer's attention and its MLP: what both the MLP and the rest of the residual stream see, to
            float rounding) or ``"output"``.
        positions: which positions ``fn`` receives (:class:`~phi3lab.inspect.sites.Positions`; default all).

    Returns:
        A :class:`~phi3lab.inspect.hooks.Hooks` block: use it in a ``with`` statement.
    """
    _check(fn)
    if where not in RESIDUAL_SITES:
        raise ValueError(f"where must be one of {', '.join(map(repr, RESIDUAL_SITES))}, got {where!r}")
    blocks = decoder_layers(model.model if hasattr(model, "processor") else model)
    chosen = choose_layers(layers, len(blocks))
    if where == "mid":
        for i in chosen:  # checked now, not when the block opens
            if not all(
                isinstance(getattr(blocks[i], n, None), torch.nn.Module)
                for n in ("input_layernorm", "resid_attn_dropout")
            ):
                raise TypeError(
                    f"where='mid' needs a Phi-3 decoder layer (input_layernorm … resid_attn_dropout); layer {i} is a "
                    f"{type(blocks[i]).__name__}: use where='input' or 'output'"
                )
    return Hooks(model).edit(RESIDUAL_SITES[where], lambda x, at: fn(at.layer, x), chosen, positions=positions)


def edit_heads(model, fn: Callable, layers="all", heads=None) -> Hooks:
    """Apply ``fn(layer, z)`` to the per-head attention outputs before ``o_proj``.

    Args:
        model: a Phi-3 / Phi-3-vision causal LM (or its Lab).
        fn: ``(layer, z [batch, tokens, heads, head_dim]) -> new z or None``.
        layers: ``"all"`` (default), an int or a list of ints.
        heads: the heads ``fn`` receives (default all).

    Returns:
        A :class:`~phi3lab.inspect.hooks.Hooks` block: use it in a ``with`` statement.
    """
    _check(fn)
    return Hooks(model).edit("z", lambda z, at: fn(at.layer, z), layers, heads=heads)


def project_out(hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``hidden − (hidden · d̂) d̂``: remove the component along ``direction`` (any shape ``[..., hidden]``).

    Examples:
        >>> h = torch.tensor([[3.0, 4.0]])
        >>> project_out(h, torch.tensor([1.0, 0.0]))
        tensor([[0., 4.]])
    """
    if direction.dim() != 1 or direction.shape[0] != hidden.shape[-1]:
        raise ValueError(
            f"direction must be one vector of the hidden size {hidden.shape[-1]}, got shape {tuple(direction.shape)}"
        )
    norm = direction.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError(
            "direction has no length (all zeros, or not finite): there is nothing to project out; pass a "
            "non-zero direction such as RefusalDirection.vector"
        )
    unit = direction.to(hidden.dtype) / norm.to(hidden.dtype)
    return hidden - (hidden @ unit)[..., None] * unit
