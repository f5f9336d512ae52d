"""Computations on captured attention: rollout, head summaries, and attention on the image.

Everything here is a pure function of tensors (from :func:`phi3lab.inspect.capture.capture` or eager
``output_attentions``); :mod:`phi3lab.views.plotting` draws the results.  Each result has a plain-text
form so notebooks and tests can compare it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch

from phi3lab.prompts.patches import CELLS, hd_layout, image_tokens

__all__ = [
    "rollout",
    "rollout_rows",
    "map_rows",
    "qk_rows",
    "head_summary",
    "top_keys",
    "rows_text",
    "grid_text",
    "ImageHeat",
    "image_heat",
    "image_runs",
]


def rollout(attentions: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each token draws on each input token
    through all layers, mixing in the residual stream.

    Args:
        attentions: ``[layers, heads, N, N]`` (or with a leading batch of 1) full attention maps.
        residual: weight of the identity (skip connection) mixed into every layer.

    Returns:
        ``[N, N]``: row ``i`` is token ``i``'s attribution over the input tokens (rows sum to 1).
    """
    if attentions.dim() == 5:
        attentions = attentions[:, 0]
    if attentions.shape[-2] != attentions.shape[-1]:
        raise ValueError(
            f"rollout needs square maps (every query row), got {tuple(attentions.shape[-2:])}; capture with positions='all'"
        )
    n = attentions.shape[-1]
    eye = torch.eye(n, dtype=torch.float64)
    result = eye.clone()
    for layer in attentions.double():
        a = residual * eye + (1 - residual) * layer.mean(0)
        a = a / a.sum(-1, keepdim=True)
        result = a @ result
    return result.float()


def rollout_rows(
    layer_rows: Sequence[Callable[[int, int], torch.Tensor]],
    rows: Sequence[int],
    n: int,
    residual: float = 0.5,
    chunk: int = 256,
) -> torch.Tensor:
    """Rollout for a few query rows, as vector–matrix products from the top layer down.

    The same numbers as ``rollout(maps)[rows]``, without any ``N × N`` matrix: ``v`` starts as the
    one-hot rows and, for each layer from the last to the first, becomes
    ``residual · v + (1 − residual) · v · A_l``, where the head-mean attention ``A_l`` is produced
    ``chunk`` query rows at a time by ``layer_rows[l](start, stop)`` (``[stop − start, n]``).
    Only rows that carry mass are ever computed: up to the largest requested position (attention is
    causal), and in the top layer only the blocks holding the requested rows.

    Args:
        layer_rows: per layer (first to last), a function giving head-mean attention rows.
        rows: the query positions to roll out (e.g. the answer's rows).
        n: sequence length (keys).
        residual: weight of the identity (skip connection) mixed into every layer.
        chunk: query rows computed at once (bounds the working memory to ``heads × chunk × n``).

    Returns:
        ``[len(rows), n]``; each row sums to 1.
    """
    rows = [int(r) for r in rows]
    if not rows or any(not 0 <= r < n for r in rows):
        raise IndexError(f"rollout rows {rows} must be positions in 0..{n - 1}")
    v = torch.zeros(len(rows), n, dtype=torch.float64)
    v[torch.arange(len(rows)), torch.tensor(rows)] = 1.0
    upto = max(rows) + 1
    for get in reversed(list(layer_rows)):
        mixed = residual * v
        for start in range(0, upto, chunk):
            stop = min(start + chunk, upto)
            if not bool(v[:, start:stop].any()):
                continue  # no mass on these rows yet (the top layer starts from the chosen rows only)
            block = torch.nan_to_num(get(start, stop).double())  # [stop - start, n]
            mixed += (1 - residual) * (v[:, start:stop] @ block)
        v = mixed
    return v.float()


def map_rows(maps: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    """A ``layer_rows`` entry for :func:`rollout_rows` from one stored map ``[heads, N, N]``."""
    return lambda start, stop: maps[:, start:stop].float().mean(0)


def qk_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    groups: int = 1,
    key_mask: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> Callable[[int, int], torch.Tensor]:
    """A ``layer_rows`` entry from one layer's rotated queries ``[H, N, d]`` and keys ``[H_kv, N, d]``:
    causal softmax attention for a block of query rows, averaged over heads."""
    if groups > 1:
        key = key.repeat_interleave(groups, dim=0)
    n = key.shape[1]
    keys = torch.arange(n)

    def rows_of(start: int, stop: int) -> torch.Tensor:
        scores = torch.matmul(query[:, start:stop].float(), key.float().transpose(-1, -2)).mul_(scaling)
        position = torch.arange(start, stop)[:, None]
        allowed = keys[None, :] <= position
        if sliding_window:
            allowed &= keys[None, :] > position - sliding_window
        if key_mask is not None:
            allowed &= key_mask.bool()[None, :n]
        scores.masked_fill_(~allowed, float("-inf"))
        scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()  # softmax in place: one block-sized tensor
        return scores.div_(scores.sum(dim=-1, keepdim=True)).mean(0)

    return rows_of


def head_summary(weights: torch.Tensor, keys: slice | list[int] | torch.Tensor) -> torch.Tensor:
    """Share of attention each head puts on ``keys``, averaged over the captured rows.

    Args:
        weights: ``[layers, heads, rows, K]`` (batch already selected).
        keys: the key positions of interest (e.g. the image run, or a name in the prompt).

    Returns:
        ``[layers, heads]`` in 0..1.
    """
    mass = weights[..., keys]
    return mass.reshape(*weights.shape[:3], -1).sum(-1).mean(-1)


def top_keys(row: torch.Tensor, tokens: list[str], top: int = 5) -> list[tuple[int, str, float]]:
    """The ``top`` most attended keys of one attention row: ``(position, token, weight)``."""
    values, index = row.float().topk(min(top, row.numel()))
    return [(int(i), tokens[int(i)] if int(i) < len(tokens) else "?", float(v)) for v, i in zip(values, index)]


def image_runs(input_ids: torch.Tensor, image_token_id: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of every image's run of positions in one row of ``input_ids``."""
    ids = input_ids.reshape(-1)
    is_image = ids < 0 if image_token_id is None else (ids < 0) | (ids == image_token_id)
    runs, start = [], None
    for i, flag in enumerate(is_image.tolist() + [False]):
        value = int(ids[i]) if i < len(ids) else None
        if flag and start is None:
            start, first = i, value
        elif start is not None and (not flag or (first < 0 and value != first)):
            runs.append((start, i))
            start = i if flag else None
            first = value
    return runs


@dataclasses.dataclass(frozen=True)
class ImageHeat:
    """Attention mass on one image, per view, on the grids the model sees.

    Attributes:
        crops: ``[rows·12, cols·12]`` mass on the stitched HD crops (row separators dropped).
        global_view: ``[12, 12]`` mass on the global view.
        separators: mass on the row separators and ``glb_GN``.
        width, height, num_crops: the image and crop budget the grids belong to.
        sinks: indices (in the image's run of tokens) of the picture's attention sinks
            (:mod:`phi3lab.inspect.sinks`), masked or not; figures outline their cells.
        masked: whether the sinks were masked out (their cells hold 0).
        masked_mass: the attention mass the masked sinks held (0 when not masked).
        candidates: tokens one question's attention singles out but that are not sinks (perhaps what the
            question asks about): drawn as they are, never masked nor outlined, named in :meth:`to_text`.
        evidence: what the sinks were found from, e.g. ``"1 question × 4 layers"`` (``""``: not said).
    """

    crops: np.ndarray
    global_view: np.ndarray
    separators: float
    width: int
    height: int
    num_crops: int
    sinks: tuple[int, ...] = ()
    masked: bool = False
    masked_mass: float = 0.0
    candidates: tuple[int, ...] = ()
    evidence: str = ""

    def sink_cells(self) -> list[tuple[str, int, int]]:
        """``(view, row, col)`` of the sink tokens that are cells (``"crops"`` or ``"global"``)."""
        tokens = image_tokens(self.width, self.height, self.num_crops)
        out = []
        for i in self.sinks:
            t = tokens[i]
            if t.kind in ("crop", "global"):
                out.append(("crops" if t.kind == "crop" else "global", t.row, t.col))
        return out

    @property
    def total(self) -> float:
        return float(self.crops.sum() + self.global_view.sum() + self.separators)

    def to_pixels(self, view: str = "crops") -> np.ndarray:
        """The chosen view's heat resampled onto the original image (``height × width``), with
        the padding cut away and portrait images handled by the same layout as the processor."""
        layout = hd_layout(self.width, self.height, self.num_crops)
        grid = self.crops if view == "crops" else self.global_view
        canvas_w, canvas_h = layout.padded
        ys = (np.arange(self.height) + 0.5) * (layout.pad_box[3] - layout.pad_box[1]) / self.height + layout.pad_box[1]
        xs = (np.arange(self.width) + 0.5) * (layout.pad_box[2] - layout.pad_box[0]) / self.width + layout.pad_box[0]
        rows = np.minimum((ys / canvas_h * grid.shape[0]).astype(int), grid.shape[0] - 1)
        cols = np.minimum((xs / canvas_w * grid.shape[1]).astype(int), grid.shape[1] - 1)
        return grid[rows][:, cols]

    def to_text(self, top: int = 3) -> str:
        lines = [
            f"image {self.width}×{self.height}, num_crops {self.num_crops}: "
            f"crops {self.crops.sum():.3f}, global view {self.global_view.sum():.3f}, "
            f"separators {self.separators:.3f}"
        ]
        found = f" (found from {self.evidence})" if self.evidence else ""
        if self.sinks and self.masked:
            lines.append(
                f"  {len(self.sinks)} sink token(s){found} masked, holding {self.masked_mass:.3f} of the mass "
                "(image_heat(..., sinks='show') keeps them)"
            )
        elif self.sinks:
            lines.append(f"  {len(self.sinks)} sink token(s){found} shown (outlined in figures)")
        if self.candidates:
            lines.append(
                f"  no sink masked for {len(self.candidates)} candidate token(s){found}: one question's answer "
                "looks at them hard, which a sink and the asked-about object both do; ask several questions "
                "(image_heat(..., found=find_sinks(lab, picture=picture)))"
            )
        for name, grid in (("crops", self.crops), ("global", self.global_view)):
            flat = np.argsort(grid.reshape(-1))[::-1][:top]
            cells = ", ".join(f"({i // grid.shape[1]},{i % grid.shape[1]}) {grid.reshape(-1)[i]:.3f}" for i in flat)
            lines.append(f"  top {name} cells: {cells}")
        return "\n".join(lines)


def image_heat(
    row: torch.Tensor | np.ndarray,
    start: int,
    width: int,
    height: int,
    num_crops: int,
    sinks=(),
    mask: bool = True,
    *,
    candidates=(),
    evidence: str = "",
) -> ImageHeat:
    """Spread one attention row's mass on an image run over the crop and global-view grids.

    Args:
        row: attention over all keys (``[K]``) for one query.
        start: position of the image's first token in the sequence.
        width, height, num_crops: the image's size and crop budget (as processed).
        sinks: indices in the image's run of its attention sinks; with ``mask`` their mass is reported,
            not drawn.
        candidates, evidence: passed on to the :class:`ImageHeat` (candidates are never masked).
    """
    row = np.asarray(torch.as_tensor(row).float().cpu()).copy()
    sinks = tuple(sorted({int(i) for i in sinks}))
    masked_mass = 0.0
    if mask:
        for i in sinks:
            if start + i < len(row):
                masked_mass += float(row[start + i])
                row[start + i] = 0.0
    tokens = image_tokens(width, height, num_crops)
    rows, cols = hd_layout(width, height, num_crops).grid
    crops = np.zeros((rows * CELLS, cols * CELLS))
    glob = np.zeros((CELLS, CELLS))
    separators = 0.0
    for t in tokens:
        value = float(row[start + t.index]) if start + t.index < len(row) else 0.0
        if t.kind == "crop":
            crops[t.row, t.col] = value
        elif t.kind == "global":
            glob[t.row, t.col] = value
        else:
            separators += value
    return ImageHeat(
        crops,
        glob,
        separators,
        width,
        height,
        num_crops,
        sinks,
        bool(mask and sinks),
        masked_mass,
        tuple(int(i) for i in candidates),
        evidence,
    )


def rows_text(weights: torch.Tensor, table, rows=None, top: int = 3) -> str:
    """Plain-text form of a heatmap: for each query row, its ``top`` most attended tokens.

    Args:
        weights: ``[rows, K]`` attention (one head or an average).
        table: the prompt's :class:`~phi3lab.prompts.token_view.TokenTable`.
        rows: absolute positions of the rows (default: the last ``len(weights)`` positions).
    """
    k_len = weights.shape[-1]
    rows = list(range(k_len - weights.shape[0], k_len)) if rows is None else [int(r) for r in rows]
    tokens = [r.token if r.segment != "image" else f"<img{-r.id}>" for r in table.rows]
    lines = []
    for row, position in zip(weights, rows):
        name = tokens[position] if position < len(tokens) else "?"
        tops = ", ".join(f"{t!r}@{i} {w:.2f}" for i, t, w in top_keys(row, tokens, top))
        lines.append(f"{position:>5} {name!r:<16} → {tops}")
    return "\n".join(lines)


def grid_text(values: torch.Tensor, title: str = "layer × head") -> str:
    """Plain-text form of a ``[layers, heads]`` grid, with the strongest head named."""
    v = torch.as_tensor(values).float()
    layer, head = divmod(int(v.argmax()), v.shape[1])
    lines = [
        f"{title}: strongest layer {layer} head {head} ({float(v.max()):.3f})",
        "      " + " ".join(f"h{h:<4}" for h in range(v.shape[1])),
    ]
    lines += [f"L{i:<4} " + " ".join(f"{x:5.3f}" for x in row.tolist()) for i, row in enumerate(v)]
    return "\n".join(lines)
