"""Visual attention sinks: image tokens that draw attention whatever is asked.

Kang et al. (ICLR 2025, "See What You Are Told") found that a few image tokens of a vision-language
model draw much of the answer's attention on the picture whatever the question — *sinks* — and that
they carry massive activations in a few hidden dimensions.  A heat map that shows them paints the same
cells for every question and hides what the question changed; :meth:`phi3lab.inspect.cache.Cache.image_heat`
therefore masks them by default (``sinks="mask"``; ``"show"`` keeps them, outlined either way).

:func:`find_sinks` reads the evidence from caches of one picture asked different questions (or asks a
Lab :data:`DEFAULT_QUESTIONS` itself): for every token of the picture's run,

* **ratio** — the share of the picture's attention it draws (answer rows, mean over heads), in
  multiples of a uniform share (1 = average), averaged over questions and layers;
* **consistency** — the fraction of (question, layer) pairs in which it draws at least ``min_ratio``;
* **activation** — its largest |activation| in the residual stream (``resid_post``, any layer), in
  multiples of the prompt's median |activation|, and the dimension where it sits.

**The rule.**  A sink draws attention *whatever is asked*, so the evidence must say so.  A token's
attention criteria hold when its mean ratio is at least ``min_ratio`` (default 5) and its consistency at
least ``min_consistency`` (default 0.75).  It is a **sink** when they hold and either

* the evidence covers at least two different questions, or
* its activation is massive: at least ``min_activation`` (default 100) times the prompt's median.

Image tokens come before the question and attention is causal, so their activations are the same
whatever is asked: question-independent evidence that one question can give.  The answer's attention
from one question is not: the answer looks hard, in every layer, at the part it is about — the asked-about
object passes the attention criteria too.  With one question, tokens that meet only the attention criteria
are **candidates**: listed (:attr:`Sinks.candidates`), never masked.  The 100× default sits an order of
magnitude under the ~1,000× at which Sun et al. (2024, "Massive Activations in Large Language Models") call
activations massive, and well above ordinary outliers: the embedded tiny vision model has no massive
activations (on the shipped sample pictures every image token's largest |activation| is 4–17× the
median), so from one question it has candidates only, and its sinks need several questions.

**What several questions cannot tell.**  "Whatever is asked" is only as broad as the questions asked.  Generic
questions (:data:`DEFAULT_QUESTIONS`: what is shown, describe it, …) all look at what stands out, so an object
they all look at passes too: on the embedded vision model, the sinks found across the asked question and
:data:`DEFAULT_QUESTIONS` lie on drawn shapes, often the asked-about one (notebook 05 counts them).  Read
where the sinks lie (:meth:`Sinks.to_text` names each cell) before masking them, and ask questions about
different parts of the picture where you can.

    >>> import phi3lab
    >>> vision = phi3lab.load("tiny-vision", verbose=False)
    >>> picture = phi3lab.sample_image("shapes.png")
    >>> _, cache = vision.generate_with_cache("<|image_1|>\\nWhat colour is the triangle?", [picture], max_new_tokens=4)
    >>> one = find_sinks([cache])
    >>> one.evidence, len(one), len(one.candidates) > 0
    ('1 question × 4 layers', 0, True)
    >>> find_sinks(vision, picture=picture, max_new_tokens=4).evidence  # asks DEFAULT_QUESTIONS
    '4 questions × 4 layers'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from phi3lab.prompts.patches import ImageToken, image_tokens
from phi3lab.validation import check_float, check_int, check_sequence, check_text

__all__ = ["Sinks", "find_sinks", "DEFAULT_QUESTIONS", "MIN_ACTIVATION"]

DEFAULT_QUESTIONS = (
    "What is shown in this image?",
    "Describe the picture.",
    "What colour is the biggest thing in the picture?",
    "Is there any text in the picture?",
)
"""Questions asked when :func:`find_sinks` is given a Lab and no questions: generic, about no part of the picture
in particular — so they can share a target, the most salient thing (see the module docstring)."""

MIN_ACTIVATION = 100.0
"""Default ``min_activation``: a token's largest |activation| at least this many times the prompt's median
makes one question's attention evidence enough (see the module docstring)."""

_ASK_MORE = "one question: ask more with find_sinks(lab, picture=...) or pass found="


@dataclasses.dataclass(frozen=True)
class Sinks:
    """The sink tokens of one picture, the candidates, and the evidence for every token of its run.

    Attributes:
        image: the picture's index in its prompt.
        indices: the sinks' indices in the picture's run of tokens (see :func:`~phi3lab.prompts.patches.image_tokens`):
            what :meth:`~phi3lab.inspect.cache.Cache.image_heat` masks.
        positions: the sinks' absolute positions in the prompt.
        ratio, consistency, activation: per token of the run (see the module docstring).
        dims: per token, the hidden dimension of its largest |activation| (``-1`` without ``resid_post``).
        tokens: the run's :class:`~phi3lab.prompts.patches.ImageToken` s (kind, cell, boxes).
        min_ratio, min_consistency: the attention thresholds used.
        evidence: what the evidence covers, e.g. ``"4 questions × 4 layers"``.
        candidates: tokens that meet the attention criteria from one question only, without a massive
            activation: perhaps sinks, perhaps what the question asks about; never masked.
        questions: how many different questions the evidence covers.
        min_activation: the activation (multiple of the prompt's median) that makes one question enough.
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
    candidates: tuple[int, ...] = ()
    questions: int = 1
    min_activation: float = MIN_ACTIVATION

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def share(self) -> float:
        """The share of the picture's attention the sinks draw together (uniform would be ``len / n``)."""
        return float(self.ratio[list(self.indices)].sum() / len(self.ratio)) if self.indices else 0.0

    @property
    def rule(self) -> str:
        """The rule these sinks were found by, in words."""
        rule = f"sink: ≥ {self.min_ratio:g}× the uniform share in ≥ {self.min_consistency:.0%} of {self.evidence}"
        if self.questions < 2:
            rule += f", and an activation ≥ {self.min_activation:g}× the prompt's median (one question)"
        return rule

    def describe(self, index: int) -> str:
        """Where token ``index`` of the run is: a crop cell, a global-view cell or a separator."""
        t = self.tokens[index]
        if t.kind == "crop":
            return f"crop {t.crop} cell ({t.row},{t.col})"
        if t.kind == "global":
            return f"global view cell ({t.row},{t.col})"
        return "global separator" if t.kind == "global_separator" else f"row separator {t.row}"

    def check(self, span) -> Sinks:
        """These sinks, if they are those of the picture at ``span`` (an :class:`~phi3lab.prompts.inputs.ImageSpan`:
        the same index, size and crop budget); else a ValueError."""
        if self.image != span.index or self.tokens != tuple(image_tokens(span.width, span.height, span.num_crops)):
            mine = f"picture {self.image + 1} with {len(self.tokens)} tokens"
            if self.image == span.index and len(self.tokens) == span.num_tokens:
                mine += " of another size"
            raise ValueError(
                f"these sinks belong to {mine}, not picture {span.index + 1} ({span.width}×{span.height}, "
                f"{span.num_tokens} tokens): find the sinks of this picture (find_sinks(caches, image={span.index}) "
                "or find_sinks(lab, picture=picture))"
            )
        return self

    def to_text(self, top: int = 8) -> str:
        """The sinks, the candidates and the strongest other tokens, with their evidence."""
        n = len(self.ratio)
        lines = [
            f"image {self.image + 1}: {len(self)} sink token{'s' if len(self) != 1 else ''} of {n}"
            + (f" drawing {self.share:.0%} of the picture's attention" if self.indices else "")
            + f"; {self.rule}"
        ]
        if self.candidates:
            k = len(self.candidates)
            lines.append(
                f"candidate ({_ASK_MORE}): {k} token{'s meet' if k != 1 else ' meets'} the attention criteria "
                "for this question only, perhaps what it asks about; not masked"
            )
        lines.append(f"{'token':>6}  {'where':<28}{'ratio':>7}{'consistency':>13}{'activation':>12}")
        order = list(self.indices) + list(self.candidates)
        rest = [int(i) for i in np.argsort(-self.ratio) if int(i) not in order]
        for i in (order + rest)[: max(top, len(order))]:
            mark = "  sink" if i in self.indices else "  candidate" if i in self.candidates else ""
            act = f"{self.activation[i]:.1f}× d{self.dims[i]}" if self.dims[i] >= 0 else "—"
            lines.append(
                f"{i:>6}  {self.describe(i):<28}{self.ratio[i]:>6.1f}×{self.consistency[i]:>12.0%}{act:>12}{mark}"
            )
        return "\n".join(lines)

    __str__ = to_text


def find_sinks(
    source,
    image: int = 0,
    *,
    picture=None,
    questions: Sequence[str] | None = None,
    max_new_tokens: int = 8,
    num_crops: int | None = None,
    min_ratio: float = 5.0,
    min_consistency: float = 0.75,
    min_activation: float = MIN_ACTIVATION,
) -> Sinks:
    """The sink tokens of picture ``image`` from caches of the same picture asked different questions, or
    of ``picture`` asked ``questions`` by a Lab.

    Args:
        source: :class:`~phi3lab.inspect.cache.Cache` objects (from ``generate_with_cache`` or
            ``run_with_cache``) of one picture, each keeping ``pattern`` at every layer (and ``resid_post``
            for the activation evidence) — or a :class:`~phi3lab.runtime.lab.Lab`, which asks ``questions``
            about ``picture`` itself.  One cache gives candidates, not sinks, unless their activations are
            massive (see the module docstring).
        image: the picture's index in the caches' prompts (a Lab's prompts hold ``picture`` only).
        picture: with a Lab: the picture to ask about.
        questions: with a Lab: what to ask (default :data:`DEFAULT_QUESTIONS`); each becomes
            ``"<|image_1|>\\n" + question`` unless it holds an image tag already.
        max_new_tokens: with a Lab: the answer tokens generated per question (their rows are the evidence).
        num_crops: with a Lab: the crop budget (default the Lab's).
        min_ratio: how many times the uniform share a token must draw.
        min_consistency: in what fraction of (question, layer) pairs.
        min_activation: the activation, in multiples of the prompt's median, that makes one question enough.
    """
    min_ratio = check_float("min_ratio", min_ratio, minimum=1.0)
    min_consistency = check_float("min_consistency", min_consistency, minimum=0.0, maximum=1.0)
    min_activation = check_float("min_activation", min_activation, above=0.0)
    if hasattr(source, "generate_with_cache"):  # a Lab: ask the questions here
        caches, activations = _ask(source, image, picture, questions, max_new_tokens, num_crops)
    else:
        if picture is not None or questions is not None:
            raise ValueError(
                "picture= and questions= go with a Lab, which asks them: find_sinks(lab, picture=picture, "
                "questions=[...]); caches already hold their picture and question"
            )
        caches = [source] if hasattr(source, "inputs") else list(source)
        activations = caches
    if not caches:
        raise ValueError(
            "find_sinks needs at least one cache of the picture (lab.generate_with_cache(...)), "
            "or a Lab and a picture: find_sinks(lab, picture=picture)"
        )
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
            weights = c.attention_rows(layer, rows)[0][:, :, span.start : span.end].float()  # [heads, rows, n]
            share = weights.mean(dim=(0, 1))
            total = share.sum()
            if float(total) > 0:
                ratios.append((share / total * share.numel()).numpy())
    ratio_table = np.stack(ratios)
    ratio = ratio_table.mean(0)
    consistency = (ratio_table >= min_ratio).mean(0)
    activation, dims = _activations(activations, [c.inputs.image(image) for c in activations])
    attended = (ratio >= min_ratio) & (consistency >= min_consistency)
    questions_asked = len({tuple(c.inputs["input_ids"][0].tolist()) for c in caches})  # the same prompt twice is one
    confirmed = attended & ((activation >= min_activation) | (questions_asked >= 2))
    sinks = sorted((int(i) for i in np.flatnonzero(confirmed)), key=lambda i: -ratio[i])
    candidates = sorted((int(i) for i in np.flatnonzero(attended & ~confirmed)), key=lambda i: -ratio[i])
    evidence = f"{questions_asked} question{'s' if questions_asked != 1 else ''} × {len(caches[0].layers)} layers"
    if len(caches) > questions_asked:
        evidence += f" ({len(caches)} caches)"
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
        candidates=tuple(candidates),
        questions=questions_asked,
        min_activation=min_activation,
    )


def _ask(lab, image, picture, questions, max_new_tokens, num_crops) -> tuple[list, list]:
    """Caches of ``picture`` asked each question (the answer's attention rows only) and one cache of its
    residual stream (image tokens come before the question: their activations are the same for every one)."""
    if picture is None:
        raise ValueError(
            "find_sinks(lab, ...) asks questions about a picture: pass it, find_sinks(lab, picture=picture)"
        )
    if isinstance(image, bool) or image != 0:
        raise ValueError(
            f"find_sinks(lab, picture=...) asks about one picture, image 0; got image={image!r}: drop image="
        )
    questions = DEFAULT_QUESTIONS if questions is None else questions
    questions = check_sequence(
        "questions", questions, item="questions (strings)", example="questions=['What colour is the square?']"
    )
    if not questions:
        raise ValueError("questions is empty: pass at least two, or leave it out for DEFAULT_QUESTIONS")
    steps = check_int("max_new_tokens", max_new_tokens, minimum=1)
    prompts = [q if "<|image_" in q else f"<|image_1|>\n{q}" for q in (check_text("a question", q) for q in questions)]
    caches = [
        lab.generate_with_cache(
            p, [picture], max_new_tokens=steps, sites=("pattern",), positions="last", num_crops=num_crops
        )[1]
        for p in prompts
    ]
    _, residual = lab.run_with_cache(prompts[0], [picture], sites=("resid_post",), num_crops=num_crops)
    return caches, [residual]


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
