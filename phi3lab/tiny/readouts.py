"""What a tiny vision model's image tokens carry: linear read-outs fitted after training.

The language model reads a picture only through its projected image tokens (the ``image_embeds``
site).  If those tokens barely tell a triangle from a circle, a question that names a shape ("What
colour is the square?") has little to go on.  :func:`image_token_readouts` fits
such read-outs on held-out pictures of shapes (:func:`phi3lab.tiny.vision_data.layouts`) and scores
them on other held-out pictures, for three of the renderer's attributes:

* ``colour``, ``kind`` and ``place`` of the part that covers each 28-pixel cell of the crop view
  (:func:`phi3lab.tiny.cells.cell_targets`), scored on the cells that show a part;
* ``kind of shape``: the mean of the tokens of a shape's cells, read out as its kind — what one
  attention head spread evenly over the shape, and read linearly, would get (the language model's
  layers can do more than one linear read-out, so this is a gauge, not a ceiling).

Each score comes with its ``chance``: always answering the commonest value of the fitting pictures.

Training put part of this in: the vision models were trained with linear read-outs of these same
attributes as an aid (:class:`phi3lab.tiny.train_vision.TrainingAids`).  These read-outs are fresh,
fitted on pictures no training saw, so they measure how far that aid and the answers got — not a
property the model found on its own.
"""

from __future__ import annotations

import random

import torch

__all__ = ["READOUTS_N", "image_token_readouts"]

READOUTS_N = 200  # held-out pictures: the first three quarters fit the read-outs, the rest score them
ATTRIBUTES = ("colour", "kind", "place")
FIT_STEPS = 300  # full-batch Adam steps per read-out (the loss has flattened well before)


def _tokens_and_targets(lab, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``([n, 144, D], [n, 144, len(ATTRIBUTES)])``: each picture's crop-view image tokens and the
    attributes of the part covering each cell (0 = none)."""
    from phi3lab.tiny import cells, vision_data

    if lab.spec.modality != "vision":
        raise ValueError(f"image-token read-outs need a vision model; {lab.spec.name} reads text only")
    if lab.num_crops != cells.NUM_CROPS:
        raise ValueError(
            f"image-token read-outs need the embedded models' geometry (num_crops={cells.NUM_CROPS}); "
            f"{lab.spec.name} uses num_crops={lab.num_crops}: set lab.processor.image_processor.num_crops = "
            f"{cells.NUM_CROPS} first"
        )
    crop_cells = cells.view_cells()[0][:144]  # the crop view's cells; the global view repeats the same canvas
    columns = [list(vision_data.ATTRIBUTES).index(name) for name in ATTRIBUTES]
    rng = random.Random(f"readouts-{seed}")
    tokens, targets = [], []
    for _ in range(n):
        example = vision_data.layouts(rng, "test")
        _, cache = lab.run_with_cache(
            [{"role": "user", "content": "<|image_1|>\nWhat is shown in this image?"}],
            [example.image],
            sites=["image_embeds"],
        )
        tokens.append(cache["image_embeds", 0][crop_cells].float())
        targets.append(cells.cell_targets(example)[:, columns])
    return torch.stack(tokens), torch.stack(targets)


def _fit_and_score(x_fit, y_fit, x_test, y_test, classes: int) -> tuple[float, float]:
    """``(accuracy, chance)`` of a linear read-out fitted on ``(x_fit, y_fit)``, on ``(x_test, y_test)``."""
    torch.manual_seed(0)
    mean, std = x_fit.mean(0), x_fit.std(0)
    std = torch.where(std > 1e-4, std, 1.0)  # a constant feature stays constant (rounding noise is not scaled up)
    head = torch.nn.Linear(x_fit.shape[-1], classes)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    with torch.enable_grad():
        for _ in range(FIT_STEPS):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head((x_fit - mean) / std), y_fit).backward()
            opt.step()
    with torch.no_grad():
        accuracy = (head((x_test - mean) / std).argmax(-1) == y_test).float().mean().item()
    commonest = torch.bincount(y_fit, minlength=classes).argmax()
    return accuracy, (y_test == commonest).float().mean().item()


def image_token_readouts(lab, n: int = READOUTS_N, seed: int = 0) -> dict[str, float]:
    """Held-out accuracy of linear read-outs of each cell's ``colour``, ``kind`` and ``place`` from the
    image tokens of a vision ``lab`` (the embedded models' geometry), and of each shape's kind from
    the mean of its cells' tokens; each with its ``"... chance"`` (see the module's docstring).

    ``n`` pictures: the first ``3n/4`` fit the read-outs, the rest score them.  Deterministic."""
    from phi3lab.tiny import vision_data

    if n < 8:
        raise ValueError(f"n={n} pictures is too few to fit and score read-outs; use at least 8")
    tokens, targets = _tokens_and_targets(lab, n, seed)
    split = 3 * n // 4
    result = {}
    for j, name in enumerate(ATTRIBUTES):
        fit, test = targets[:split, :, j] > 0, targets[split:, :, j] > 0
        result[name], result[f"{name} chance"] = _fit_and_score(
            tokens[:split][fit],
            targets[:split, :, j][fit],
            tokens[split:][test],
            targets[split:, :, j][test],
            len(vision_data.ATTRIBUTES[name]) + 1,
        )
    kind = ATTRIBUTES.index("kind")
    pooled, kinds, pictures = [], [], []
    for picture in range(n):
        labels = targets[picture, :, kind]
        for value in labels.unique().tolist():
            if value:
                pooled.append(tokens[picture][labels == value].mean(0))
                kinds.append(value)
                pictures.append(picture)
    pooled, kinds, pictures = torch.stack(pooled), torch.tensor(kinds), torch.tensor(pictures)
    fit, test = pictures < split, pictures >= split
    result["kind of shape"], result["kind of shape chance"] = _fit_and_score(
        pooled[fit], kinds[fit], pooled[test], kinds[test], len(vision_data.ATTRIBUTES["kind"]) + 1
    )
    return result
