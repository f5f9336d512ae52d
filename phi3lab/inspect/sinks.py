"""Visual attention sinks: image tokens that draw attention whatever is asked.

Kang et al. (ICLR 2025, "See What You Are Told") found that a few image tokens of a vision-language
model draw much of the answer's attention on the picture whatever the question — *sinks* — and that
they carry massive activations in a few hidden dimensions.  A heat map that shows them paints the same
cells for every question and hides what the question changed; :meth:`phi3lab.inspect.cache.Cache.image_heat`
therefore masks them by default (``sinks="mask"``; ``"show"`` keeps them, outlined either way).

:func:`find_sinks` reads the evidence from caches (one per question; one cache works too, with its
layers as the evidence): for every token of a picture's run,

* **ratio** — the share of the picture's attention it draws (answer rows, mean over heads), in
  multiples of a uniform share (1 = average), averaged over questions and layers;
* **consistency** — the fraction of (question, layer) pairs in which it draws at least ``min_ratio``;
* **activation** — its largest |activation| in the residual stream (``resid_post``, any layer), in
  multiples of the prompt's median |activation|, and the dimension where it sits.

A token is a sink when its mean ratio is at least ``min_ratio`` (default 5) and its consistency at least
``min_consistency`` (default 0.75): attention it draws whatever is asked.  Massive activations are
reported beside it (Sun et al. 2024 call activations massive at ~1,000× the median; whether a model's
sinks carry them is a finding to read off the table, not an assumption).

    >>> import phi3lab
    >>> vision = phi3lab.load("tiny-vision", verbose=False)
    >>> picture = phi3lab.sample_image("shapes.png")
    >>> _, cache = vision.generate_with_cache("<|image_1|>\\nWhat is shown in this image?", [picture], max_new_tokens=4)
    >>> sinks = find_sinks([cache])
    >>> sinks.evidence
    '1 question × 4 layers'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from phi3lab.prompts.patches import ImageToken, image_tokens
from phi3lab.validation import check_float

__all__ = ["Sinks", "find_sinks", "DEFAULT_QUESTIONS"]

DEFAULT_QUESTIONS = (
    "What is shown in this image?",
    "Describe the picture.",
    "What colour is the biggest thing in the picture?",
    "Is there any text in the picture?",
)
"""Questions asked when :func:`find_sinks` is given a Lab and no questions: unrelated on purpose."""


@dataclasses.dataclass(frozen=True)
class Sinks:
    """The sink tokens of one picture and the evidence for every token of its run.

    Attributes:
        image: the picture's index in its prompt.
        indices: the sinks' indices in the picture's run of tokens (see :func:`~phi3lab.prompts.patches.image_tokens`).
        positions: the sinks' absolute positions in the prompt.
        ratio, consistency, activation: per token of the run (see the module docstring).
        dims: per token, the hidden dimension of its largest |activation| (``-1`` without ``resid_post``).
        tokens: the run's :class:`~phi3lab.prompts.patches.ImageToken` s (kind, cell, boxes).
        min_ratio, min_consistency: the thresholds used.
        evidence: what the evidence covers, e.g. ``"4 questions × 4 layers"``.
    """

    image: int
    indices: tuple[int, ...]
    positions: tuple[int, ...]
    ratio: np.ndarray
    consistency: np.ndarray
    activation: np.ndarray
    dims: np.ndarray
    tokens: tuple[ImageToken, ...]
    min_ratio: float
    min_consistency: float
    evidence: str

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def share(self) -> float:
        """The share of the picture's attention the sinks draw together (uniform would be ``len / n``)."""
        return float(self.ratio[list(self.indices)].sum() / len(self.ratio)) if self.indices else 0.0

    def describe(self, index: int) -> str:
        """Where token ``index`` of the run is: a crop cell, a global-view cell or a separator."""
        t = self.tokens[index]
        if t.kind == "crop":
            return f"crop {t.crop} cell ({t.row},{t.col})"
        if t.kind == "global":
            return f"global view cell ({t.row},{t.col})"
        return "global separator" if t.kind == "global_separator" else f"row separator {t.row}"

    def to_text(self, top: int = 8) -> str:
        """The sinks (or the strongest candidates) with their evidence."""
        n = len(self.ratio)
        lines = [
            f"image {self.image + 1}: {len(self)} sink token(s) of {n} drawing {self.share:.0%} of the picture's "
            f"attention; sink = ratio ≥ {self.min_ratio:g}× uniform in ≥ {self.min_consistency:.0%} of "
            f"{self.evidence}",
            f"{'token':>6}  {'where':<28}{'ratio':>7}{'consistency':>13}{'activation':>12}",
        ]
        order = list(self.indices) or []
        rest = [int(i) for i in np.argsort(-self.ratio) if int(i) not in order]
        for i in (order + rest)[: max(top, len(order))]:
            mark = "  sink" if i in self.indices else ""
            act = f"{self.activation[i]:.1f}× d{self.dims[i]}" if self.dims[i] >= 0 else "—"
            lines.append(
                f"{i:>6}  {self.describe(i):<28}{self.ratio[i]:>6.1f}×{self.consistency[i]:>12.0%}{act:>12}{mark}"
            )
        return "\n".join(lines)

    __str__ = to_text


def find_sinks(
    caches,
    image: int = 0,
    *,
    min_ratio: float = 5.0,
    min_consistency: float = 0.75,
) -> Sinks:
    """The sink tokens of picture ``image`` from caches of the same picture asked different questions.

    Args:
        caches: :class:`~phi3lab.inspect.cache.Cache` objects (from ``generate_with_cache`` or
            ``run_with_cache``) of one picture, each keeping ``pattern`` at every layer (and ``resid_post``
            for the activation evidence); one cache is enough, its layers being the evidence.
        image: the picture's index in the prompts.
        min_ratio: how many times the uniform share a token must draw.
        min_consistency: in what fraction of (question, layer) pairs.
    """
    caches = list(caches) if not hasattr(caches, "inputs") else [caches]
    if not caches:
        raise ValueError("find_sinks needs at least one cache of the picture (lab.generate_with_cache(...))")
    min_ratio = check_float("min_ratio", min_ratio, minimum=1.0)
    min_consistency = check_float("min_consistency", min_consistency, minimum=0.0, maximum=1.0)
    spans = [c.inputs.image(image) for c in caches]
    first = spans[0]
    for span in spans[1:]:
        if (span.width, span.height, span.num_crops) != (first.width, first.height, first.num_crops):
            raise ValueError(
                "the caches show pictures of different sizes or crop budgets; find_sinks compares one picture "
                f"asked different questions ({first.width}×{first.height} vs {span.width}×{span.height})"
            )
    for c in caches:
        if "pattern" not in c.sites:
            raise ValueError("find_sinks reads attention: make the caches with the 'pattern' site (the default)")
    ratios = []  # one row per (question, layer)
    for c, span in zip(caches, spans):
        rows = c.answer_rows
        for layer in c.layers:
            weights = c.attention(layer)[0][:, rows, span.start : span.end].float()  # [heads, rows, n]
            share = weights.mean(dim=(0, 1))
            total = share.sum()
            if float(total) > 0:
                ratios.append((share / total * share.numel()).numpy())
    ratio_table = np.stack(ratios)
    ratio = ratio_table.mean(0)
    consistency = (ratio_table >= min_ratio).mean(0)
    activation, dims = _activations(caches, spans)
    sinks = [int(i) for i in np.flatnonzero((ratio >= min_ratio) & (consistency >= min_consistency))]
    sinks.sort(key=lambda i: -ratio[i])
    questions = len(caches)
    evidence = f"{questions} question{'s' if questions > 1 else ''} × {len(caches[0].layers)} layers"
    return Sinks(
        image=image,
        indices=tuple(sinks),
        positions=tuple(first.start + i for i in sinks),
        ratio=ratio,
        consistency=consistency,
        activation=activation,
        dims=dims,
        tokens=tuple(image_tokens(first.width, first.height, first.num_crops)),
        min_ratio=min_ratio,
        min_consistency=min_consistency,
        evidence=evidence,
    )


def _activations(caches: Sequence, spans) -> tuple[np.ndarray, np.ndarray]:
    """Per token of the run: largest |resid_post| over layers and caches, relative to the prompt's median."""
    n = spans[0].num_tokens
    best = np.zeros(n)
    dims = np.full(n, -1, dtype=int)
    for c, span in zip(caches, spans):
        if "resid_post" not in c.sites:
            continue
        for layer in c.layers:
            hidden = c["resid_post", layer][0].float()  # [rows, hidden]
            positions = torch.tensor(c.positions)
            inside = (positions >= span.start) & (positions < span.end)
            if not bool(inside.any()):
                continue
            median = float(hidden.abs().median()) or 1.0
            values, where = hidden[inside].abs().max(dim=-1)
            index = (positions[inside] - span.start).numpy()
            relative = values.numpy() / median
            better = relative > best[index]
            best[index[better]] = relative[better]
            dims[index[better]] = where.numpy()[better]
    return best, dims
