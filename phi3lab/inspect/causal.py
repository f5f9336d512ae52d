"""Causal image maps: which regions of a picture the answer *uses*, measured by removing them.

Attention shows where the answer's rows look; it does not show what the answer needs (Neo et al.,
ICLR 2025: ablating the image tokens that cover an object cuts its identification by more than 70%, while
attention maps alone mislead).  :func:`causal_map` removes one region of the picture at a time — the
image tokens of a ``region_size × region_size`` block of crop cells *and* the global-view cells that show
the same part (:func:`~phi3lab.prompts.patches.image_regions`) — and measures the drop in the answer's
log-probability (teacher-forced, every answer token): a region the answer needs has a large drop.

What replaces a removed region's tokens (``baseline``) matters and is part of the result:

* ``"mean"`` (default) — the mean of the picture's own image tokens: "nothing in particular here";
* ``"blur"`` — the tokens of the same picture blurred (Gaussian, ``blur_radius`` pixels): coarse colour
  and layout kept, detail gone;
* ``"other"`` — the tokens of ``other``, another picture resized to the same size.

Regions are edited at the ``embed`` site (the hook core), ``batch_size`` regions per forward.  Removing a
region changes nothing before its first token, so each forward starts there, with the keys and values of
one unedited run before it (:mod:`phi3lab.inspect.reuse`): the numbers are those of one plain forward of the
whole prompt per region, and the work is what the positions from the region on cost
(``benchmarks/causal_map.py`` measures both).  On a CPU a batch costs what its forwards cost one by one;
batching is for accelerators (not measured here).
:func:`compare_maps` puts attention, attribution and the causal drop on the same regions, with their
rank correlations and deletion/insertion curves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from phi3lab.inspect.hooks import Hooks
from phi3lab.inspect.kernel import embed_inputs
from phi3lab.inspect.reuse import forward_from, target_log_probs, unedited_run
from phi3lab.prompts.patches import ImageRegion, hd_layout, image_regions
from phi3lab.validation import check_float, check_int

__all__ = ["CausalMap", "causal_map", "MapComparison", "compare_maps", "BASELINES"]

BASELINES = ("mean", "blur", "other")


@dataclasses.dataclass(frozen=True)
class CausalMap:
    """The answer's log-probability drop when each region of a picture is removed.

    Attributes:
        image: the picture's index in the prompt.
        regions: the :class:`~phi3lab.prompts.patches.ImageRegion` s removed, one at a time.
        drops: ``[regions]`` log p(answer) without the region minus... i.e. ``base − removed`` (nats):
            positive where the answer needs the region.
        base: log p(answer) with the whole picture.
        answer: the answer scored (its text) and ``answer_ids`` its tokens.
        baseline: what replaced the removed tokens (``"mean"``, ``"blur"`` or ``"other"``).
        width, height, num_crops, region_size: the picture as processed and the block size.
    """

    image: int
    regions: tuple[ImageRegion, ...]
    drops: np.ndarray
    base: float
    answer: str
    answer_ids: tuple[int, ...]
    baseline: str
    width: int
    height: int
    num_crops: int
    region_size: int

    def grid(self) -> np.ndarray:
        """``[rows, cols]`` of region blocks (the crop grid divided by ``region_size``); NaN for padding blocks."""
        rows, cols = hd_layout(self.width, self.height, self.num_crops).grid
        out = np.full((rows * 12 // self.region_size, cols * 12 // self.region_size), np.nan)
        for region, drop in zip(self.regions, self.drops):
            out[region.row, region.col] = drop
        return out

    def to_pixels(self) -> np.ndarray:
        """``[height, width]``: each pixel the drop of the region covering it (0 outside every region)."""
        out = np.zeros((self.height, self.width))
        for region, drop in zip(self.regions, self.drops):
            x0, y0, x1, y1 = (int(round(v)) for v in region.image_box)
            out[y0:y1, x0:x1] = drop
        return out

    def top(self, n: int = 5) -> list[tuple[ImageRegion, float]]:
        """The ``n`` regions the answer needs most."""
        n = check_int("n", n, minimum=1)
        order = np.argsort(-self.drops)[:n]
        return [(self.regions[i], float(self.drops[i])) for i in order]

    def to_text(self, top: int = 5) -> str:
        lines = [
            f"causal map of image {self.image + 1} ({self.width}×{self.height}, {len(self.regions)} regions of "
            f"{self.region_size}×{self.region_size} cells, removed with the {self.baseline!r} baseline); answer "
            f"{self.answer!r}, log p {self.base:.2f}",
        ]
        for region, drop in self.top(top):
            box = ", ".join(f"{v:.0f}" for v in region.image_box)
            lines.append(f"  {region.label:<7} pixels ({box}): log p drops by {drop:+.3f}")
        return "\n".join(lines)

    __str__ = to_text

    def plot(self, picture, ax=None):
        """The drops over the picture (diverging colours around 0, with the scale): ``(fig, ax)``."""
        from phi3lab.views.plotting import causal_image

        return causal_image(picture, self, ax=ax)


def _answer_ids(lab, inputs, answer, max_new_tokens: int) -> list[int]:
    if answer is None:
        from phi3lab.runtime.generation import chat_result, generate_kwargs

        with torch.inference_mode():
            out = lab.model.generate(**inputs, **generate_kwargs(lab, max_new_tokens, 0.0, 1.0))
        new = [int(i) for i in out[0, inputs.num_tokens :]]
        ids = list(chat_result(lab, new, [], inputs.num_tokens, 0.0, None, 0.0).token_ids)
        stops = set(lab.spec.stop_ids)
        ids = [i for i in ids if i not in stops]
        if not ids:
            raise ValueError("the model answered nothing; pass answer='…' (the text whose probability to measure)")
        return ids
    if isinstance(answer, str):
        ids = lab.tokenizer.encode(answer, add_special_tokens=False)
        if not ids:
            raise ValueError(f"answer={answer!r} has no tokens; pass the answer's text")
        return ids
    ids = [int(i) for i in answer]
    if not ids:
        raise ValueError("answer has no tokens")
    return ids


def _image_features(lab, picture, num_crops: int) -> torch.Tensor:
    """The projected image tokens of ``picture`` as the model computes them (``[tokens, hidden]``)."""
    pixels = lab.processor.image_processor([picture], num_crops=num_crops)
    vision = lab.model.model.vision_embed_tokens
    device = next(lab.model.parameters()).device
    with torch.inference_mode():
        return vision(pixels["pixel_values"].to(device), pixels["image_sizes"].to(device))[0]


def _baseline_tokens(lab, span, embeds: torch.Tensor, baseline: str, other, blur_radius: float) -> torch.Tensor:
    """``[tokens, hidden]`` replacements for the picture's run."""
    own = embeds[0, span.start : span.end]
    if baseline == "mean":
        return own.mean(0, keepdim=True).expand_as(own)
    from PIL import ImageFilter

    from phi3lab.prompts.images import to_rgb

    if baseline == "blur":
        picture = to_rgb(span.image).filter(ImageFilter.GaussianBlur(blur_radius))
    else:
        picture = to_rgb(other).resize((span.width, span.height))
    features = _image_features(lab, picture, span.num_crops).to(own.dtype)
    if features.shape != own.shape:
        raise ValueError(f"the {baseline} picture gives {features.shape[0]} tokens, the picture {own.shape[0]}")
    return features


def causal_map(
    lab,
    conversation,
    images: Sequence,
    *,
    image: int = 0,
    region_size: int = 4,
    baseline: str = "mean",
    other=None,
    blur_radius: float = 12.0,
    answer=None,
    max_new_tokens: int = 16,
    batch_size: int | None = None,
    num_crops: int | None = None,
) -> CausalMap:
    """Remove each region of picture ``image`` in turn and measure the drop in the answer's log-probability.

    Args:
        lab: a vision :class:`~phi3lab.Lab`.
        conversation, images: the prompt (with ``<|image_N|>`` tags) and its pictures.
        image: which picture to map.
        region_size: cells per region side (1, 2, 3, 4, 6 or 12; 4 = 112 canvas pixels).
        baseline: ``"mean"``, ``"blur"`` or ``"other"`` (see the module docstring).
        other: the picture for ``baseline="other"``.
        blur_radius: the Gaussian radius (pixels) for ``baseline="blur"``.
        answer: the answer to score (text or token ids); default the model's own greedy answer.
        max_new_tokens: the longest answer generated when ``answer`` is not given.
        batch_size: regions removed per forward; ``None``: 1 on a CPU (a batch costs what its forwards cost
            one by one there, and more: 16 at a time took 1.13× as long), 16 on an accelerator.
        num_crops: the crop budget (default the processor's).
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline={baseline!r} is not a choice; use one of {', '.join(map(repr, BASELINES))}")
    if baseline == "other" and other is None:
        raise ValueError("baseline='other' needs other=<a picture> whose tokens replace the removed ones")
    if lab.spec.modality != "vision":
        raise ValueError(f"{lab.spec.name} is a text model; causal image maps need a vision model")
    batch_size = _batch_size(batch_size, lab)
    blur_radius = check_float("blur_radius", blur_radius, above=0)
    inputs = lab.encode(conversation, images, num_crops=num_crops)
    span = inputs.image(image)
    regions = image_regions(span.width, span.height, span.num_crops, region_size)
    target = _answer_ids(lab, inputs, answer, max_new_tokens)
    model = lab.model
    device = inputs.device
    ids = torch.cat([inputs.input_ids, torch.tensor([target[:-1]], device=device, dtype=torch.long)], dim=1)
    with torch.inference_mode():
        embeds = embed_inputs(model, ids, inputs.get("pixel_values"), inputs.get("image_sizes"))
        replacement = _baseline_tokens(lab, span, embeds, baseline, other, blur_radius)
        run = unedited_run(model, embeds, len(target))
        base = float(_log_p(run.logits, target)[0])
        drops = []
        for start in range(0, len(regions), batch_size):
            chunk = regions[start : start + batch_size]
            scores = _score(
                model, embeds, run, target, [span.start + np.array(r.tokens) for r in chunk], replacement, span.start
            )
            drops += (base - scores).tolist()
    return CausalMap(
        image=image,
        regions=tuple(regions),
        drops=np.asarray(drops),
        base=base,
        answer=lab.tokenizer.decode(target, skip_special_tokens=True),
        answer_ids=tuple(target),
        baseline=baseline,
        width=span.width,
        height=span.height,
        num_crops=span.num_crops,
        region_size=region_size,
    )


def _batch_size(batch_size, lab) -> int:
    if batch_size is None:
        return 1 if str(lab.attention.device).startswith("cpu") else 16
    return check_int("batch_size", batch_size, minimum=1)


def _log_p(logits: torch.Tensor, target: list[int]) -> torch.Tensor:
    """``[rows]`` log p(target) from the logits ``[rows, len(target), vocab]`` that predict it."""
    return target_log_probs(logits, target).sum(-1).cpu()


def _score(model, embeds, run, target, removed, replacement, start) -> torch.Tensor:
    """log p(target) for each row: the prompt with the positions ``removed[row]`` replaced.

    The forward starts at the first removed position of the batch (nothing before it changes), with the
    unedited ``run``'s keys and values before it."""
    first = min(int(np.min(positions)) for positions in removed)

    def replace(value, at):
        offset = int(at.positions[0])
        value = value.clone()
        for row, positions in enumerate(removed):
            value[row, torch.as_tensor(positions - offset)] = replacement[torch.as_tensor(positions - start)].to(
                value.dtype
            )
        return value

    with Hooks(model).edit("embed", replace):
        logits = forward_from(model, embeds[:, first:].expand(len(removed), -1, -1), run, first, len(target))
    return _log_p(logits, target)


# --- three maps on the same regions ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MapComparison:
    """Attention, attribution and the causal drop on the same regions of one picture.

    Attributes:
        maps: name → ``[regions]`` values (attention: the answer rows' mass on the region's tokens;
            attribution: the region unit's score; causal: the log-probability drop).
        correlations: ``(a, b)`` → Spearman rank correlation over the regions.
        deletion, insertion: name → the answer's log-probability as regions are removed (deletion) or
            put back into a picture with every region removed (insertion) in that map's order, one value
            per step (``0 … regions``); ``"random"`` is a seeded random order for reference.
        causal: the :class:`CausalMap` the regions and the scoring come from.
    """

    maps: dict[str, np.ndarray]
    correlations: dict[tuple[str, str], float]
    deletion: dict[str, np.ndarray]
    insertion: dict[str, np.ndarray]
    causal: CausalMap

    def area(self, curve: str = "deletion") -> dict[str, float]:
        """Mean log-probability along each curve (deletion: lower means the order found what is needed)."""
        curves = self.deletion if curve == "deletion" else self.insertion
        return {name: float(values.mean()) for name, values in curves.items()}

    def to_text(self) -> str:
        lines = [f"{len(self.causal.regions)} regions of image {self.causal.image + 1}; answer {self.causal.answer!r}"]
        lines.append(
            "rank correlation (Spearman): "
            + ", ".join(f"{a} ~ {b} {value:+.2f}" for (a, b), value in self.correlations.items())
        )
        deletion, insertion = self.area("deletion"), self.area("insertion")
        lines.append("mean log p along the curves (deletion: lower is better; insertion: higher is better):")
        for name in self.deletion:
            lines.append(f"  {name:<12} deletion {deletion[name]:7.3f}   insertion {insertion[name]:7.3f}")
        return "\n".join(lines)

    __str__ = to_text

    def plot(self, picture, axes=None):
        """The maps side by side over the picture, and the deletion/insertion curves: ``(fig, axes)``."""
        from phi3lab.views.plotting import map_comparison

        return map_comparison(picture, self, axes=axes)


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    # ties share their mean rank
    for v in np.unique(values):
        same = values == v
        if same.sum() > 1:
            ranks[same] = ranks[same].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two value lists (NaN when either is constant)."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def compare_maps(
    lab,
    conversation,
    images: Sequence,
    causal: CausalMap,
    *,
    heat=None,
    attribution=None,
    seed: int = 0,
    batch_size: int | None = None,
) -> MapComparison:
    """Attention heat, attribution and the causal drop on the regions of ``causal``, with their rank
    correlations and deletion/insertion curves (scored like ``causal``: same answer, same baseline).

    Args:
        lab, conversation, images: the prompt ``causal`` was made from.
        causal: a :class:`CausalMap` (its regions, answer and baseline are used).
        heat: an :class:`~phi3lab.inspect.maps.ImageHeat` of the same picture (``cache.image_heat(...)``).
        attribution: an attribution with ``units="image-regions"`` of the same ``region_size``
            (``lab.attribute(...)``).
        seed: for the random order.
        batch_size: curve points scored per forward (``None``: as in :func:`causal_map`).
    """
    batch_size = _batch_size(batch_size, lab)
    regions = causal.regions
    maps: dict[str, np.ndarray] = {}
    if heat is not None:
        from phi3lab.prompts.patches import image_tokens

        tokens = image_tokens(causal.width, causal.height, causal.num_crops)
        mass = np.zeros(len(tokens))
        for t in tokens:
            if t.kind == "crop":
                mass[t.index] = heat.crops[t.row, t.col]
            elif t.kind == "global":
                mass[t.index] = heat.global_view[t.row, t.col]
        maps["attention"] = np.array([mass[list(r.tokens)].sum() for r in regions])
    if attribution is not None:
        scores = dict(zip((u.label for u in attribution.units), attribution.row(None).tolist()))
        prefix = f"image {causal.image + 1} "
        missing = [r.label for r in regions if prefix + r.label not in scores]
        if missing:
            raise ValueError(
                f"the attribution has no units for regions {missing[:4]}…; attribute with units='image-regions' and "
                f"region_size={causal.region_size} on the same picture"
            )
        maps["attribution"] = np.array([scores[prefix + r.label] for r in regions])
    maps["causal"] = causal.drops
    names = list(maps)
    correlations = {(a, b): spearman(maps[a], maps[b]) for i, a in enumerate(names) for b in names[i + 1 :]}
    orders = {name: list(np.argsort(-values, kind="stable")) for name, values in maps.items()}
    orders["random"] = list(np.random.default_rng(seed).permutation(len(regions)))
    deletion, insertion = _curves(lab, conversation, images, causal, orders, batch_size)
    return MapComparison(maps, correlations, deletion, insertion, causal)


def _curves(lab, conversation, images, causal: CausalMap, orders: dict, batch_size: int):
    """log p(answer) after removing (deletion) or restoring (insertion) the first k regions of each order."""
    model = lab.model
    inputs = lab.encode(conversation, images)
    span = inputs.image(causal.image)
    target = list(causal.answer_ids)
    device = inputs.device
    ids = torch.cat([inputs.input_ids, torch.tensor([target[:-1]], device=device, dtype=torch.long)], dim=1)
    with torch.inference_mode():
        embeds = embed_inputs(model, ids, inputs.get("pixel_values"), inputs.get("image_sizes"))
        replacement = (
            _baseline_tokens(lab, span, embeds, causal.baseline, None, 12.0) if causal.baseline != "other" else None
        )
        if replacement is None:
            raise ValueError(
                "deletion curves with baseline='other' need the other picture: make the map with 'mean' or 'blur'"
            )
        run = unedited_run(model, embeds, len(target))
        base = float(_log_p(run.logits, target)[0])
        every = np.arange(len(causal.regions))
        deletion, insertion = {}, {}
        for name, order in orders.items():
            for kind, store in (("deletion", deletion), ("insertion", insertion)):
                rows = []
                for k in range(len(order) + 1):
                    chosen = order[:k] if kind == "deletion" else [i for i in every if i not in set(order[:k])]
                    positions = [span.start + t for i in chosen for t in causal.regions[i].tokens]
                    rows.append(np.array(positions, dtype=int) if positions else None)
                edited = [i for i, positions in enumerate(rows) if positions is not None]
                values = np.full(len(rows), base)  # nothing removed: the unedited run's
                for start in range(0, len(edited), batch_size):
                    chunk = edited[start : start + batch_size]
                    values[chunk] = _score(
                        model, embeds, run, target, [rows[i] for i in chunk], replacement, span.start
                    ).numpy()
                store[name] = values
    return deletion, insertion
