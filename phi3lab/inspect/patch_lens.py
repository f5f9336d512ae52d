"""The patch lens: the logit lens over a picture's tokens, cell by cell and layer by layer.

The logit lens (:mod:`phi3lab.inspect.lens`) asks what the model would say if it stopped after a layer.
Asked of the image tokens, it shows what each patch of the picture "reads as" to the language model:
Neo et al. (ICLR 2025) and LatentLens (2026) found that in later layers the tokens covering an object
read as words for it.  :func:`patch_lens` passes every image token's residual stream (``resid_post``)
through the final norm and the output head and keeps each cell's top token and its probability, on the
crop grid and the global view the model sees; :meth:`PatchLens.reads` measures how often chosen cells
read chosen tokens.

:func:`word_reads` asks the question of Neo et al. of pictures with written words: at which layer, and how
often, does a cell covering a word read *that* word (its top-1 token spells it, :func:`word_ids`)?  Beside
it, two controls on the same pictures: the same cells of a blank picture of the same size (what those
places read with nothing written), and the picture's cells away from the word (a word read everywhere is
not read *there*).

    >>> import phi3lab
    >>> vision = phi3lab.load("tiny-vision", verbose=False)
    >>> _, cache = vision.run_with_cache("<|image_1|>\\nWhat is shown?", [phi3lab.sample_image("word.png")])
    >>> lens = patch_lens(cache)
    >>> lens.layers == list(range(vision.model.config.num_hidden_layers)), lens.top_ids.shape[1] == cache.inputs.image(0).num_tokens
    (True, True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from phi3lab.prompts.patches import CELLS, ImageToken, hd_layout, image_tokens, overlap
from phi3lab.validation import check_float, check_int

__all__ = ["PatchLens", "patch_lens", "WordReads", "word_reads", "word_ids", "spelling", "READ_QUESTION"]

READ_QUESTION = "What does the picture say?"
"""The question :func:`word_reads` asks by default (the embedded reader was trained on it)."""


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

    def cells(self, box, min_overlap: float = 0.5, views=("crop", "global")) -> list[int]:
        """Run indices of the cells (crop and global-view) at least ``min_overlap`` inside ``box``
        (``(x0, y0, x1, y1)`` in picture pixels): the cells that cover it."""
        min_overlap = check_float("min_overlap", min_overlap, above=0, maximum=1.0)
        return [t.index for t in self.tokens if t.kind in views and overlap(t.image_box, box) >= min_overlap]

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


# --- do the cells covering a written word read it? ---------------------------------------------------------


def spelling(piece: str) -> str:
    """A vocabulary piece as a word: without the SentencePiece space mark and outer punctuation, lower case.

    Examples:
        >>> spelling("▁Apple.")
        'apple'
    """
    return piece.replace("▁", " ").strip().strip(".,;:!?'\"()").lower()


def word_ids(tokenizer, word: str) -> tuple[int, ...]:
    """Every vocabulary id whose piece spells ``word`` (case, the leading space mark and outer punctuation
    ignored: ``"▁apple"``, ``"▁apple."`` and ``"Apple"`` all spell ``apple``); empty when no single piece does.

    Examples:
        >>> import phi3lab
        >>> tokenizer = phi3lab.load("tiny", verbose=False).tokenizer
        >>> {"▁apple", "▁apple.", "APPLE."} <= set(tokenizer.convert_ids_to_tokens(list(word_ids(tokenizer, "apple"))))
        True
    """
    wanted = spelling(word)
    if not wanted or " " in wanted:
        raise ValueError(f"word={word!r} must be one word (no spaces); pass the written words one at a time")
    return tuple(sorted(i for piece, i in tokenizer.get_vocab().items() if spelling(piece) == wanted))


@dataclasses.dataclass(frozen=True)
class WordRead:
    """One written word under the patch lens: its cells and, per layer, how many of them read it.

    Attributes:
        picture: the picture's index in the list given to :func:`word_reads`.
        word: the word.
        cells: how many cells cover it.
        hits: per layer, how many of those cells' top token spells it.
        blank: per layer, the same for the same cells of a blank picture of the same size.
        other_cells: cells of the picture away from the word (no overlap with it).
        other_hits: per layer, how many of those read it.
    """

    picture: int
    word: str
    cells: int
    hits: tuple[int, ...]
    blank: tuple[int, ...]
    other_cells: int
    other_hits: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class WordReads:
    """How often the cells covering written words read those words under the patch lens, layer by layer.

    Attributes:
        layers: the layers read.
        pictures: how many pictures were measured.
        words: one :class:`WordRead` per written word measured.
        skipped: why words were left out, and how many (``"no piece spells it"``, ``"no cell covers it"``).
        question: the question asked with each picture.
        source: what the pictures were (free text, e.g. ``"40 held-out reading pictures"``).
        weights: a digest of the weights measured, when known (so a stored report can tell it is stale).
    """

    layers: tuple[int, ...]
    pictures: int
    words: tuple[WordRead, ...]
    skipped: dict[str, int]
    question: str
    source: str = ""
    weights: str = ""

    @property
    def cells(self) -> int:
        """Cells covering a word, over every word."""
        return sum(w.cells for w in self.words)

    def share(self, which: str = "word") -> np.ndarray:
        """Per layer: the share of cells reading their word — ``"word"`` (the cells covering it),
        ``"blank"`` (the same cells, nothing written) or ``"other"`` (the picture's cells away from it)."""
        if which not in ("word", "blank", "other"):
            raise ValueError(f"which must be 'word', 'blank' or 'other', got {which!r}")
        if not self.words:
            return np.zeros(len(self.layers))
        if which == "other":
            total = sum(w.other_cells for w in self.words)
            hits = np.sum([w.other_hits for w in self.words], axis=0)
        else:
            total = self.cells
            hits = np.sum([w.hits if which == "word" else w.blank for w in self.words], axis=0)
        return hits / max(total, 1)

    def words_read(self) -> np.ndarray:
        """Per layer: the share of words with at least one covering cell that reads them."""
        if not self.words:
            return np.zeros(len(self.layers))
        return np.mean([[h > 0 for h in w.hits] for w in self.words], axis=0)

    @property
    def best_layer(self) -> int:
        """The layer at which the most covering cells read their word (the earliest on a tie)."""
        return self.layers[int(np.argmax(self.share("word")))]

    def most_read(self, n: int = 5, layer: int | None = None) -> list[WordRead]:
        """The ``n`` words most of whose cells read them at ``layer`` (default :attr:`best_layer`)."""
        k = self.layers.index(self.best_layer if layer is None else layer)
        ranked = sorted(self.words, key=lambda w: (-w.hits[k] / w.cells, -w.hits[k]))
        return [w for w in ranked[:n] if w.hits[k] > 0]

    def to_text(self) -> str:
        word, blank, other, words = self.share("word"), self.share("blank"), self.share("other"), self.words_read()
        head = (
            f"patch lens on {self.pictures} picture(s){f' ({self.source})' if self.source else ''}: "
            f"{len(self.words)} written words, {self.cells} cells covering them; asked {self.question!r}"
        )
        lines = [
            head,
            "share of cells whose top-1 token spells the word they cover, per layer:",
            f"{'layer':>6}{'covering cells':>16}{'words read':>12}{'same cells, blank':>19}{'other cells':>13}",
        ]
        for k, layer in enumerate(self.layers):
            lines.append(f"{layer:>6}{word[k]:>16.1%}{words[k]:>12.1%}{blank[k]:>19.1%}{other[k]:>13.2%}")
        best = self.best_layer
        k = self.layers.index(best)
        if word[k] > 0:
            read = ", ".join(f"{w.word!r} {w.hits[k]}/{w.cells}" for w in self.most_read(5))
            lines.append(f"most at layer {best}: {word[k]:.1%} of covering cells; the words most read there: {read}")
        else:
            lines.append("no covering cell reads its word at any layer")
        if self.skipped:
            lines.append("left out: " + ", ".join(f"{n} ({why})" for why, n in self.skipped.items()))
        return "\n".join(lines)

    __str__ = to_text

    def to_dict(self) -> dict:
        """Plain data (JSON-ready); :meth:`from_dict` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WordReads:
        fields = {**data, "layers": tuple(data["layers"])}
        fields["words"] = tuple(
            WordRead(**{**w, **{k: tuple(w[k]) for k in ("hits", "blank", "other_hits")}}) for w in data["words"]
        )
        return cls(**fields)


@torch.inference_mode()
def word_reads(
    lab,
    pictures: Sequence,
    *,
    question: str = READ_QUESTION,
    min_overlap: float = 0.5,
    source: str = "",
    weights: str = "",
) -> WordReads:
    """At which layer, and how often, the cells covering each written word read that word (top-1 of the patch
    lens), with the same cells of a blank picture and the picture's other cells as controls.

    Args:
        lab: a vision :class:`~phi3lab.Lab`.
        pictures: ``(picture, words)`` pairs, ``words`` a list of ``(word, box)``: each written word and the
            box ``(x0, y0, x1, y1)`` of its ink in picture pixels.
        question: asked with each picture (one forward each; the lens reads the picture's tokens).
        min_overlap: how much of a cell must lie inside a word's box for the cell to cover it.
        source, weights: recorded in the result (what the pictures were; a digest of the weights).

    Words no single vocabulary piece spells (:func:`word_ids`), or too small for any cell to lie
    ``min_overlap`` inside, are left out and counted in :attr:`WordReads.skipped`.
    """
    from PIL import Image

    from phi3lab.inspect.cache import run_with_cache

    if lab.spec.modality != "vision":
        raise ValueError(f"{lab.spec.name} is a text model; the patch lens reads pictures: load a vision model")
    pictures = list(pictures)
    if not pictures:
        raise ValueError("pictures is empty: pass (picture, [(word, box), ...]) pairs")
    min_overlap = check_float("min_overlap", min_overlap, above=0, maximum=1.0)
    prompt = f"<|image_1|>\n{question}"
    spelled: dict[str, tuple[int, ...]] = {}
    blanks: dict[tuple[int, int], PatchLens] = {}
    layers: list[int] | None = None
    records, skipped = [], {}

    def lens_of(picture) -> PatchLens:
        _, cache = run_with_cache(lab, prompt, [picture], sites=["resid_post"])
        return patch_lens(cache)

    for p, item in enumerate(pictures):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"pictures[{p}] must be a (picture, [(word, box), ...]) pair, got {type(item).__name__}")
        picture, words = item
        lens = lens_of(picture)
        layers = lens.layers
        if picture.size not in blanks:
            blanks[picture.size] = lens_of(Image.new("RGB", picture.size, (255, 255, 255)))
        blank = blanks[picture.size]
        all_cells = [t.index for t in lens.tokens if t.kind in ("crop", "global") and t.image_box is not None]
        for word, box in words:
            ids = spelled.setdefault(word, word_ids(lab.tokenizer, word))
            cells = lens.cells(box, min_overlap)
            if not ids or not cells:
                why = "no piece spells it" if not ids else "no cell covers it"
                skipped[why] = skipped.get(why, 0) + 1
                continue
            same = [b for w, b in words if w == word]  # a word written twice is not "elsewhere" where it is written
            away = [i for i in all_cells if all(overlap(lens.tokens[i].image_box, b) == 0 for b in same)]
            records.append(
                WordRead(
                    p,
                    word,
                    len(cells),
                    _count(lens, cells, ids),
                    _count(blank, cells, ids),
                    len(away),
                    _count(lens, away, ids),
                )
            )
    return WordReads(tuple(layers), len(pictures), tuple(records), skipped, question, source, weights)


def _count(lens: PatchLens, cells: list[int], ids: tuple[int, ...]) -> tuple[int, ...]:
    """Per layer of ``lens``: how many of ``cells`` have one of ``ids`` as their top token."""
    return tuple(int(np.isin(lens.top_ids[k, cells], ids).sum()) for k in range(len(lens.layers)))
