"""Which part of a training picture covers each image token: the dense targets of the vision models'
read-outs (:class:`phi3lab.tiny.train_vision.TrainingAids`) and of :mod:`phi3lab.tiny.readouts`.

The embedded vision models see a picture at ``num_crops=1``: one 336×336 canvas, 12×12 cells of 28
pixels, each one image token of the crop view and one of the global view (the same canvas).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from phi3lab.tiny import vision_data

__all__ = ["NUM_CROPS", "cell_parts", "cell_targets", "view_cells"]

NUM_CROPS = 1  # the embedded vision models' geometry: a global view and one crop, 313 image tokens


def cell_parts(example: vision_data.VisionExample) -> torch.Tensor:
    """``[144]``: for each 28-pixel cell of the 336×336 canvas (one image token of the crop view,
    and of the global view, which is the same canvas at ``num_crops=1``), the id of the part
    covering most of it — 0 where no part covers at least 5% of the cell.

    The part map goes through the HD geometry (resize, then pad) exactly as the pixels do."""
    import numpy as np
    from PIL import Image

    from phi3lab.prompts.patches import hd_layout

    layout = hd_layout(example.image.width, example.image.height, NUM_CROPS)
    assert layout.padded == (336, 336), layout
    left, top, right, bottom = layout.pad_box
    canvas = Image.new("L", layout.padded, 0)
    canvas.paste(example.parts.resize((right - left, bottom - top), Image.Resampling.NEAREST), (left, top))
    ids = np.asarray(canvas).reshape(12, 28, 12, 28).transpose(0, 2, 1, 3).reshape(144, 28 * 28)
    counts = np.stack([np.bincount(row, minlength=len(example.part_attributes) + 1) for row in ids])
    counts[:, 0] = 0
    best = counts.argmax(1)
    best[counts.max(1) < 0.05 * 28 * 28] = 0
    return torch.from_numpy(best)


def cell_targets(example: vision_data.VisionExample, parts: torch.Tensor | None = None) -> torch.Tensor:
    """``[144, len(ATTRIBUTES)]``: the attributes of each cell's part (:func:`cell_parts`), 0 = none."""
    table = torch.zeros((len(example.part_attributes) + 1, len(vision_data.ATTRIBUTES)), dtype=torch.long)
    for k, attrs in enumerate(example.part_attributes, start=1):
        table[k] = torch.tensor([attrs.get(name, 0) for name in vision_data.ATTRIBUTES])
    return table[cell_parts(example) if parts is None else parts]


@lru_cache(maxsize=1)
def view_cells() -> tuple[torch.Tensor, int]:
    """``(cells, length)``: the positions, within a picture's run of ``length`` (313) image tokens,
    of the crop view's 144 cells, then the global view's, row by row (the separators left out)."""
    from phi3lab.prompts.patches import image_tokens

    run = image_tokens(336, 336, NUM_CROPS)
    cells = [t.index for t in run if t.kind == "crop"] + [t.index for t in run if t.kind == "global"]
    return torch.tensor(cells), len(run)
