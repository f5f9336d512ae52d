"""Attention maps at the cost of what is looked at, under any attention kernel.

Fused kernels (sdpa, flash-attention) never materialise attention probabilities, and
``output_attentions=True`` needs eager attention and stores every layer's ``heads × N × N``
matrix — tens of GB for one Phi-3-vision image.  :func:`capture` reads the ``pattern`` site of the
hook core (:mod:`phi3lab.inspect.hooks`) instead: hooks on the chosen layers' own modules see the
exact projections, apply the same RoPE, join the cached keys and compute ``softmax(q·kᵀ/√d + mask)``
only for the chosen heads and query rows, while the kernel runs as usual.  With the same mask the
kernel used (causal, padding, sliding window) the result equals eager ``output_attentions`` (to float
rounding), generation and every KV-cache layout included (:mod:`phi3lab.inspect.kernel`).

    >>> import phi3lab, torch
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> inputs = lab.encode("What is 2 plus 3?")
    >>> with capture(lab.model, layers=[0, 3], positions="last") as cap, torch.no_grad():
    ...     _ = lab.model(**inputs)
    >>> cap.weights(3).shape[:3]  # batch, heads, query rows
    torch.Size([1, 4, 1])

Across ``generate`` the same block records every new token's row too, so ``cap.weights(layer)`` holds
the answer's attention over the prompt and itself.  Before anything is stored the bytes are checked
against ``max_bytes`` (a quarter of free memory by default).
"""

from __future__ import annotations

import torch

from phi3lab.inspect.hooks import Hooks, NothingRecordedError, guard_output_attentions, output_attentions_bytes
from phi3lab.inspect.sites import Positions
from phi3lab.runtime.memory import size_text

__all__ = ["AttentionCapture", "capture", "guard_output_attentions", "output_attentions_bytes"]


class AttentionCapture:
    """The recorded attention of one :func:`capture` block.

    ``weights(layer)`` gives ``[batch, heads, rows, keys]`` probabilities for the captured query rows
    in the order they were computed (several ``generate`` steps stack along ``rows``; shorter key
    ranges of earlier steps are zero-padded), ``positions(layer)`` their absolute positions.
    """

    def __init__(self, hooks: Hooks, layers: list[int], heads: list[int] | None):
        self.hooks, self.layers, self.heads = hooks, layers, heads

    @property
    def nbytes(self) -> int:
        """Bytes kept so far."""
        return self.hooks.nbytes

    def __repr__(self) -> str:
        rows = sum(len(self.hooks.positions("pattern", i)) for i, _ in enumerate(self.layers) if self._has(i))
        return f"AttentionCapture(layers={self.layers}, {rows} rows, {size_text(self.nbytes)})"

    def _has(self, layer: int) -> bool:
        return ("pattern", layer) in self.hooks.recorded()

    def _check(self, layer) -> None:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}")
        if layer not in self.layers:
            raise KeyError(
                f"layer {layer} was not captured; captured layers: {self.layers} (pass layers=[...] or "
                "layers='all' to capture it)"
            )

    def weights(self, layer: int) -> torch.Tensor:
        self._check(layer)
        try:
            return self.hooks["pattern", layer]
        except NothingRecordedError:
            raise NothingRecordedError(
                f"nothing was captured for layer {layer}: run the model inside the capture block"
            ) from None

    def positions(self, layer: int) -> torch.Tensor:
        """``[batch, rows]`` absolute positions of the captured rows."""
        weights = self.weights(layer)
        return self.hooks.positions("pattern", layer).expand(weights.shape[0], -1)

    def stacked(self) -> torch.Tensor:
        """All captured layers as ``[layers, batch, heads, rows, keys]``."""
        return torch.stack([self.weights(i) for i in self.layers])


class capture:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Record attention probabilities of chosen layers, heads and query positions.

    Args:
        model: a phi3lab or transformers Phi-3 / Phi-3-vision model (any attention kernel), or a Lab.
        layers: layer indices, ``"all"`` (default) or one int (negative counts from the end).
        heads: head indices, one int, or ``None`` for all heads.
        positions: which query positions: ``"all"`` (default), ``"last"`` (of every forward), absolute
            positions (an int, a list, a range or a slice; negative ones from the prompt's end) or a
            function of a forward's positions (:class:`~phi3lab.inspect.sites.Positions`); every token
            ``generate`` adds is recorded too.
        max_bytes: bytes the maps may take; default a quarter of the free memory.

    Returns:
        An :class:`AttentionCapture` (from ``with capture(...) as cap``).
    """

    def __init__(self, model, layers="all", heads=None, positions="all", max_bytes: int | None = None):
        self.hooks = Hooks(model, max_bytes=max_bytes)
        self.hooks.read("pattern", layers, heads=heads, positions=Positions(positions, new=True))
        wanted = self.hooks._wanted[-1]
        self.cap = AttentionCapture(self.hooks, list(wanted.layers), wanted.heads)

    def __enter__(self) -> AttentionCapture:
        self.hooks.__enter__()
        return self.cap

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)
