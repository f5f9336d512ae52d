"""The patch lens: the logit lens over a picture's tokens, cell by cell and layer by layer.

The logit lens (:mod:`phi3lab.inspect.lens`) asks what the model would say if it stopped after a layer.
Asked of the image tokens, it shows what each patch of the picture "reads as" to the language model:
Neo et al. (ICLR 2025) and LatentLens (2026) found that in later layers the tokens covering an object
read as words for it.  :func:`patch_lens` passes every image token's residual stream (``resid_post``)
through the final norm and the output head and keeps each cell's top token and its probability, on the
crop grid and the global view the model sees; :meth:`PatchLens.reads` measures how often the cells
covering a written word read that word.

    >>> import phi3lab
    >>> vision = phi3lab.load("tiny-vision", verbose=False)
    >>> _, cache = vision.run_with_cache("<|image_1|>\\nWhat is shown?", [phi3lab.sample_image("word.png")])
    >>> lens = patch_lens(cache)
    >>> lens.layers == list(range(vision.model.config.num_hidden_layers)), lens.top_ids.shape[1] == cache.inputs.image(0).num_tokens
    (True, True)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from phi3lab.prompts.patches import CELLS, ImageToken, hd_layout, image_tokens
from phi3lab.validation import check_int

__all__ = ["PatchLens", "patch_lens"]


@dataclasses.dataclass(frozen=True)
class PatchLens:
    """Each image token's top next-token under the logit lens, at each layer.

    Attributes:
        image: the picture's index in the prompt.
        layers: the layers read.
        top_ids: ``[layers, tokens]`` the top token id of every token of the picture's run.
        probs: ``[layers, tokens]`` its probability.
        pieces: ``[layers][tokens]`` the top tokens as vocabulary pieces.
        tokens: the run's :class:`~phi3lab.prompts.patches.ImageToken` s (cells and boxes).
        width, height, num_crops: the picture as processed.
    """

    image: int
    layers: list[int]
    top_ids: np.ndarray
    probs: np.ndarray
    pieces: list[list[str]]
    tokens: tuple[ImageToken, ...]
    width: int
    height: int
    num_crops: int

    def _layer(self, layer: int) -> int:
        if layer < 0:
            layer = self.layers[layer]
        if layer not in self.layers:
            raise IndexError(f"layer {layer} was not read; the lens holds layers {self.layers}")
        return self.layers.index(layer)

    def grid(self, layer: int = -1, view: str = "crops") -> np.ndarray:
        """The top pieces of one layer as a grid of strings: ``[rows·12, cols·12]`` crops or ``[12, 12]`` global."""
        if view not in ("crops", "global"):
            raise ValueError(f"view must be 'crops' or 'global', got {view!r}")
        k = self._layer(layer)
        rows, cols = hd_layout(self.width, self.height, self.num_crops).grid
        shape = (rows * CELLS, cols * CELLS) if view == "crops" else (CELLS, CELLS)
        out = np.full(shape, "", dtype=object)
        kind = "crop" if view == "crops" else "global"
        for t in self.tokens:
            if t.kind == kind:
                out[t.row, t.col] = self.pieces[k][t.index]
        return out

    def reads(self, word_ids, cells=None, layer: int = -1) -> float:
        """The share of ``cells`` (indices in the run; default every cell) whose top token is one of ``word_ids``."""
        k = self._layer(layer)
        wanted = {int(i) for i in (word_ids if not isinstance(word_ids, int) else [word_ids])}
        chosen = [t.index for t in self.tokens if t.kind in ("crop", "global")] if cells is None else list(cells)
        if not chosen:
            raise ValueError("no cells to read: pass the run indices of the cells covering the word")
        return float(np.mean([int(self.top_ids[k, i]) in wanted for i in chosen]))

    def to_text(self, layer: int = -1, view: str = "global", width: int = 6) -> str:
        """One layer's grid of top pieces (``view``), each cut to ``width`` characters."""
        grid = self.grid(layer, view)
        k = self._layer(layer)
        counts: dict[str, int] = {}
        for piece in grid.reshape(-1):
            if piece:
                counts[piece] = counts.get(piece, 0) + 1
        common = ", ".join(f"{p!r} ×{n}" for p, n in sorted(counts.items(), key=lambda kv: -kv[1])[:5])
        lines = [
            f"patch lens, image {self.image + 1}, layer {self.layers[k]}, {view}: most read {common}",
        ]
        for row in grid:
            lines.append(" ".join(f"{(p or '·')[:width]:<{width}}" for p in row))
        return "\n".join(lines)

    __str__ = to_text


@torch.inference_mode()
def patch_lens(cache, image: int = 0, layers="all", chunk: int = 1024) -> PatchLens:
    """The logit lens over every token of picture ``image`` kept in ``cache`` (it needs ``resid_post`` at
    the picture's positions: the default sites and positions keep it).

    Args:
        cache: a :class:`~phi3lab.inspect.cache.Cache`.
        image: the picture's index in the prompt.
        layers: ``"all"`` (every layer the cache kept) or a list of layers.
        chunk: image tokens put through the output head at a time.
    """
    chunk = check_int("chunk", chunk, minimum=1)
    if "resid_post" not in cache.sites:
        raise ValueError("the patch lens reads resid_post: run with sites=[..., 'resid_post'] (the default keeps it)")
    span = cache.inputs.image(image)
    positions = cache.positions
    where = [positions.index(p) for p in range(span.start, span.end) if p in positions]
    if len(where) != span.num_tokens:
        raise ValueError(
            f"the cache kept {len(where)} of the picture's {span.num_tokens} positions; run with positions='all'"
        )
    chosen = list(cache.layers) if isinstance(layers, str) and layers == "all" else [cache._layer(i) for i in layers]
    model = cache.lab.model
    base = getattr(model, "model", model)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    tokenizer = cache.lab.tokenizer
    ids, probs = [], []
    for layer in chosen:
        hidden = cache["resid_post", layer][0, where]  # [n, hidden]
        top_id, top_p = [], []
        for start in range(0, hidden.shape[0], chunk):
            part = base.norm(hidden[start : start + chunk].to(device, dtype))
            p = torch.softmax(model.lm_head(part).float(), dim=-1)
            values, index = p.max(dim=-1)
            top_id.append(index.cpu())
            top_p.append(values.cpu())
        ids.append(torch.cat(top_id).numpy())
        probs.append(torch.cat(top_p).numpy())
    top_ids = np.stack(ids)
    pieces = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in top_ids]
    return PatchLens(
        image=image,
        layers=chosen,
        top_ids=top_ids,
        probs=np.stack(probs),
        pieces=pieces,
        tokens=tuple(image_tokens(span.width, span.height, span.num_crops)),
        width=span.width,
        height=span.height,
        num_crops=span.num_crops,
    )
