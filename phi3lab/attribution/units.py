"""What an attribution is about: units of a chat prompt and of its pictures, and what replaces them.

A :class:`Unit` is a group of prompt positions that is removed and restored as one.  Text units
come from the prompt's :class:`~phi3lab.prompts.token_view.TokenTable`; image units from each picture's HD
layout (:mod:`phi3lab.prompts.patches`):

============== =====================================================================================
tokens         every token of a turn's text (system, user or assistant), one unit each
words          tokens grouped into words: a word starts at a token that begins with a space
               (``▁``) after text; a newline joins the word that follows it
messages       one unit per turn (its text, without the role header and ``<|end|>``)
roles          one unit per role: all system, all user, all assistant text
image-regions  blocks of ``region_size × region_size`` merged-patch cells (28 px each) of the HD
               crop grid, each with the same canvas area of the global view; blocks that are all
               white padding are left out
crops          each 336×336 HD crop as the crop view sees it, and the global view as one more unit
images         each picture as a whole
============== =====================================================================================

Template tokens (``<s>``, ``<|user|>``, ``<|end|>``, ``<|assistant|>`` and the ``▁``/newline
pieces around them) belong to no unit and are never replaced, unless ``include_template=True``
adds one ``template`` unit per special token (with the separators that follow it).

Baselines — what a removed unit becomes, with the sequence length unchanged:

* text: each token of the unit becomes the baseline token (``"unk"``: the tokenizer's ``<unk>``;
  or any single token, by id or string);
* pictures: the unit's pixels in ``pixel_values`` become a baseline colour (``"white"``: the
  normalised white the processor pads with, so a removed region looks like padding; ``"mean"``:
  CLIP's mean colour, 0 after normalisation; ``"black"``; or an ``(r, g, b)`` triple), in the crop
  view and in the global view.  The vision tower then runs on the edited pixels, so a region is
  removed from what CLIP sees, not only from its own tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from phi3lab.prompts.patches import CELL, CELLS, CROP, crop_boxes, image_regions, image_tokens

__all__ = ["Unit", "TEXT_UNITS", "IMAGE_UNITS", "UNIT_KINDS", "build_units", "text_baseline_id", "image_fill"]

TEXT_UNITS = ("tokens", "words", "messages", "roles")
IMAGE_UNITS = ("image-regions", "crops", "images")
UNIT_KINDS = TEXT_UNITS + IMAGE_UNITS
CONTENT = ("system", "user", "assistant")
IMAGE_BASELINES = ("white", "mean", "black")


@dataclasses.dataclass(frozen=True)
class Unit:
    """One thing an attribution scores.

    Attributes:
        label: what it is (a word, ``"user 1"``, ``"image 1 r0c2"``, ``"crop 1"``…).
        kind: its unit kind (``"words"``, ``"image-regions"``…, or ``"template"``).
        positions: the prompt positions it covers (an image unit: its image tokens).
        where: the turn it is in (``"user 1"``) or its picture (``"image 1"``).
        image: 0-based picture index for image units, else ``None``.
        box: ``(x0, y0, x1, y1)`` in the original picture's pixels (image units).
        views: ``(view, y0, y1, x0, x1)`` rectangles of ``pixel_values[image]`` it replaces
            (view 0 is the global view, view ``k`` the ``k``-th crop).
        run: ``(start, end)`` of its picture's run of tokens (image units).
    """

    label: str
    kind: str
    positions: tuple[int, ...]
    where: str = ""
    image: int | None = None
    box: tuple[float, float, float, float] | None = None
    views: tuple[tuple[int, int, int, int, int], ...] = ()
    run: tuple[int, int] | None = None

    def __repr__(self) -> str:
        where = f" in {self.where}" if self.where else ""
        return f"Unit({self.label!r}, {self.kind}{where}, {len(self.positions)} positions)"

    @property
    def first(self) -> int:
        """The first position a removal can change (an image unit changes its whole picture's run,
        since CLIP mixes every patch of a view)."""
        return self.run[0] if self.run else min(self.positions)

    @property
    def name(self) -> str:
        """``label`` with where it is, for lists and tooltips."""
        if self.kind in ("tokens", "words", "template") and self.where:
            return f"{self.label!r} ({self.where})"
        return self.label


def check_kinds(units) -> tuple[str, ...]:
    """``units`` as a tuple of kinds: one text kind and/or one image kind."""
    kinds = (units,) if isinstance(units, str) else tuple(units) if isinstance(units, (list, tuple)) else None
    if not kinds or not all(isinstance(k, str) for k in kinds):
        raise TypeError(f"units must be one of {UNIT_KINDS} or a list of them, got {units!r}")
    unknown = [k for k in kinds if k not in UNIT_KINDS]
    if unknown:
        raise ValueError(
            f"unknown units {unknown}; choose from {', '.join(UNIT_KINDS)} "
            "(e.g. units='words', or units=['messages', 'images'])"
        )
    if sum(k in TEXT_UNITS for k in kinds) > 1 or sum(k in IMAGE_UNITS for k in kinds) > 1:
        raise ValueError(
            f"units={list(kinds)}: combine at most one text kind {TEXT_UNITS} with one image kind "
            f"{IMAGE_UNITS}, so that no position belongs to two units"
        )
    return kinds


def _turn_names(turns) -> dict[int, str]:
    names, counts = {}, {}
    for message, role in turns:
        if message is not None and message not in names:
            counts[role] = counts.get(role, 0) + 1
            names[message] = f"{role} {counts[role]}"
    return names


def _text(prompt: str, table, positions) -> str:
    rows = [table.rows[p] for p in positions]
    return " ".join(prompt[rows[0].start : rows[-1].end].split()) or rows[0].token


def _new_word(prompt: str, table, group, row, where: str) -> bool:
    if group is None or group[0] != where or row.index != group[1][-1] + 1:
        return True
    so_far = "".join(prompt[table.rows[p].start : table.rows[p].end] for p in group[1])
    return prompt[row.start : row.end][:1].isspace() and bool(so_far.strip())


def _text_units(kind: str, table, include_template: bool) -> list[Unit]:
    prompt, turns = table.prompt, table.turns()
    names = _turn_names(turns)
    groups: list[tuple[str, list[int]]] = []  # (where, positions)
    for row, (message, _) in zip(table.rows, turns):
        if row.segment not in CONTENT:
            continue
        where = names.get(message, row.segment)
        last = groups[-1] if groups else None
        if kind == "roles":
            where = row.segment
            last = next((g for g in groups if g[0] == where), None)
            starts = last is None
        elif kind == "messages":
            starts = last is None or last[0] != where
        elif kind == "words":
            starts = _new_word(prompt, table, last, row, where)
        else:
            starts = True
        if starts:
            groups.append((where, [row.index]))
        else:
            last[1].append(row.index)
    if kind in ("messages", "roles"):
        units = [Unit(where, kind, tuple(p), where) for where, p in groups]
    else:
        units = [Unit(_text(prompt, table, p), kind, tuple(p), where) for where, p in groups]
    if include_template:
        units += _template_units(table, turns, names)
    return units


def _template_units(table, turns, names) -> list[Unit]:
    units: list[Unit] = []
    for row, (message, _) in zip(table.rows, turns):
        if row.segment == "special":
            units.append(Unit(row.token, "template", (row.index,), names.get(message, "")))
        elif row.segment == "separator" and units and units[-1].positions[-1] == row.index - 1:
            last = units[-1]
            units[-1] = dataclasses.replace(last, positions=last.positions + (row.index,))
    return units


def _view_rect(box, layout) -> tuple[int, int, int, int, int]:
    """The global view's rectangle (view 0) for a canvas box: the canvas squashed to 336×336."""
    sx, sy = CROP / layout.padded[0], CROP / layout.padded[1]
    x0, y0, x1, y1 = box
    return (
        0,
        round(y0 * sy),
        max(round(y1 * sy), round(y0 * sy) + 1),
        round(x0 * sx),
        max(round(x1 * sx), round(x0 * sx) + 1),
    )


def _image_units(kind: str, span, region_size: int) -> list[Unit]:
    layout, start, where, run = span.layout, span.start, f"image {span.index + 1}", (span.start, span.end)
    rows, cols = layout.grid
    tokens = image_tokens(span.width, span.height, span.num_crops)
    full_box = (0.0, 0.0, float(span.width), float(span.height))
    everything = tuple(start + t.index for t in tokens)
    if kind == "images":
        views = tuple((v, 0, CROP, 0, CROP) for v in range(1 + rows * cols))
        return [Unit(where, kind, everything, where, span.index, full_box, views, run)]
    if kind == "crops":
        units = []
        for k, box in enumerate(crop_boxes(span.width, span.height, span.num_crops), start=1):
            if box is None:
                continue  # all padding
            positions = tuple(start + t.index for t in tokens if t.kind == "crop" and t.crop == k)
            units.append(Unit(f"crop {k}", kind, positions, where, span.index, box, ((k, 0, CROP, 0, CROP),), run))
        glob = tuple(start + t.index for t in tokens if t.kind == "global")
        return units + [Unit("global view", kind, glob, where, span.index, full_box, ((0, 0, CROP, 0, CROP),), run)]
    units = []
    size = region_size * CELL
    for region in image_regions(span.width, span.height, span.num_crops, region_size):
        r, c = region.row, region.col
        y0, x0 = (r * size) % CROP, (c * size) % CROP
        views = ((region.crop, y0, y0 + size, x0, x0 + size), _view_rect(region.canvas_box, layout))
        units.append(
            Unit(
                f"{where} r{r}c{c}",
                kind,
                tuple(start + i for i in region.tokens),
                where,
                span.index,
                region.image_box,
                views,
                run,
            )
        )
    return units


def build_units(
    inputs, kinds: Sequence[str], *, region_size: int = 4, include_template: bool = False, vision: bool = False
) -> list[Unit]:
    """The units of an encoded prompt, in prompt order (by first position).

    Raises:
        ValueError: image units for a text model or a prompt without pictures, a ``region_size``
            that does not divide a crop's 12 cells, or a prompt with nothing to attribute.
    """
    units: list[Unit] = []
    for kind in kinds:
        if kind in TEXT_UNITS:
            units += _text_units(kind, inputs.table, include_template)
            continue
        if not vision:
            raise ValueError(
                f"units={kind!r} needs pictures, but this is a text model; use a text kind "
                f"({', '.join(TEXT_UNITS)}) or load a vision model (phi3lab.load('tiny-vision'))"
            )
        if not inputs.images:
            raise ValueError(
                f"units={kind!r} needs pictures, but this prompt has none; put <|image_1|> in the "
                "text and pass images=[picture]"
            )
        if isinstance(region_size, bool) or not isinstance(region_size, int) or region_size < 1 or CELLS % region_size:
            raise ValueError(
                f"region_size={region_size!r} must divide a crop's {CELLS} cells (1, 2, 3, 4, 6 or 12), "
                "so that every region lies inside one crop"
            )
        for span in inputs.images:
            units += _image_units(kind, span, region_size)
    if include_template and not any(k in TEXT_UNITS for k in kinds):
        units += _template_units(inputs.table, inputs.table.turns(), _turn_names(inputs.table.turns()))
    if not units:
        raise ValueError(
            "nothing to attribute: the prompt has no text outside the chat template"
            + (" and no pictures" if vision else "")
            + "; give a conversation with some words"
        )
    return sorted(units, key=lambda u: (u.first, u.positions))


def text_baseline_id(tokenizer, baseline) -> int:
    """The token id that replaces a removed text unit's tokens."""
    if baseline == "unk":
        for candidate in (tokenizer.unk_token_id, tokenizer.pad_token_id):
            if candidate is not None:
                return int(candidate)
        raise ValueError("this tokenizer has no <unk> or pad token; pass baseline= a token id or a one-token string")
    if isinstance(baseline, str):
        ids = tokenizer.convert_tokens_to_ids([baseline])
        if ids[0] is None or ids[0] == tokenizer.unk_token_id and baseline != tokenizer.unk_token:
            encoded = tokenizer.encode(baseline, add_special_tokens=False)
            if len(encoded) != 1:
                raise ValueError(
                    f"baseline={baseline!r} is {len(encoded)} tokens; a text baseline must be one token "
                    "(so removing a word keeps every position), e.g. 'unk', '▁the' or a token id"
                )
            ids = encoded
        return int(ids[0])
    if isinstance(baseline, bool) or not isinstance(baseline, (int, np.integer)) or not 0 <= baseline < len(tokenizer):
        raise ValueError(
            f"baseline must be 'unk', a one-token string or a token id in 0..{len(tokenizer) - 1}, got {baseline!r}"
        )
    return int(baseline)


def image_fill(image_processor, baseline) -> list[float]:
    """The normalised per-channel value that replaces a removed image unit's pixels."""
    mean, std = list(image_processor.image_mean), list(image_processor.image_std)
    if isinstance(baseline, str):
        rgb = {"white": (255, 255, 255), "black": (0, 0, 0)}.get(baseline)
        if baseline == "mean":
            return [0.0, 0.0, 0.0]
        if rgb is None:
            raise ValueError(f"image_baseline={baseline!r} is not one of {IMAGE_BASELINES} or an (r, g, b) triple")
    else:
        rgb = tuple(baseline) if isinstance(baseline, (list, tuple)) else ()
        if len(rgb) != 3 or not all(isinstance(v, (int, float)) and 0 <= v <= 255 for v in rgb):
            raise ValueError(
                f"image_baseline must be one of {IMAGE_BASELINES} or an (r, g, b) triple of 0..255, got {baseline!r}"
            )
    return [(v / 255 - m) / s for v, m, s in zip(rgb, mean, std)]
