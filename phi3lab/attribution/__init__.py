"""Attributions with captum: which words, turns and picture regions an answer came from.

    >>> import phi3lab
    >>> from phi3lab.attribution import attribute
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> attr = attribute(lab, "My name is Ada. What is my name?", units="words")  # its own answer, FeatureAblation
    >>> attr.target_text, attr.top(1, token="Ada.")[0][0].name
    ('Your name is Ada.', "'Ada.' (user 1)")

:func:`attribute` encodes the conversation once (:meth:`phi3lab.Lab.encode`), cuts it into units
people think in (:mod:`phi3lab.attribution.units`: tokens, words, turns, roles, and for Phi-3-vision
regions of the HD crop grid, crops and whole pictures — never the chat template's own tokens) and
hands captum a forward function over them (:mod:`phi3lab.attribution.forward`):

* ``"ablation"`` — captum's ``FeatureAblation``: each unit replaced by its baseline, one at a time;
  score = the fall in the target's log-probability;
* ``"shapley"`` — ``ShapleyValueSampling``: the unit's average marginal contribution over
  ``n_samples`` random orders (each order's scores add up exactly to the full-minus-empty difference);
* ``"ig"`` — ``LayerIntegratedGradients`` on the merged input embeddings (text and image features),
  from the all-baseline prompt to the real one in ``n_steps`` steps, at most ``internal_batch_size``
  of them at once, so memory stays bounded; score = attribution summed over the unit's positions.

The target is the model's own greedy answer (its stop token left out), or a string or token ids
you give; the scores are per target token (teacher-forced, as captum's LLMAttribution computes
them).  Perturbations run ``batch_size`` at a time, and each batch reuses the KV cache of the
unperturbed prefix before its first removed unit, so the numbers equal plain captum's while
costing a fraction of its time (``benchmarks/attribution.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from phi3lab.attribution.forward import GradientForward, Scorer
from phi3lab.attribution.result import Attribution, Curve, compare, score_colour
from phi3lab.attribution.units import (
    IMAGE_UNITS,
    TEXT_UNITS,
    UNIT_KINDS,
    Unit,
    build_units,
    check_kinds,
    image_fill,
    text_baseline_id,
)
from phi3lab.colours import SCORE_FLOOR, noise_floor
from phi3lab.errors import Phi3LabError

__all__ = [
    "attribute",
    "Attribution",
    "Curve",
    "Unit",
    "compare",
    "score_colour",
    "METHODS",
    "UNIT_KINDS",
    "TEXT_UNITS",
    "IMAGE_UNITS",
    "TargetError",
]

METHODS = ("ablation", "shapley", "ig")


class TargetError(Phi3LabError, ValueError):
    """A target the model cannot produce from this prompt (empty, past a stop token, too long)."""


def _count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int ≥ {minimum}, got {value!r}")
    return value


def _target(lab, inputs, target, max_new_tokens: int) -> torch.Tensor:
    """The target's token ids: the greedy answer without its stop token, or the given text or ids."""
    stops = set(lab.spec.stop_ids)
    if target is None:
        from phi3lab.runtime.generation import generate_kwargs

        with torch.no_grad():
            out = lab.model.generate(**inputs, **generate_kwargs(lab, max_new_tokens, 0.0, 1.0))
        ids = [int(i) for i in out[0, inputs.num_tokens :]]
        while ids and ids[-1] in stops:
            ids.pop()
        if not ids:
            raise TargetError(
                "the model's answer to this prompt is empty (it stops at once); pass target='…' "
                "with the answer to attribute"
            )
    elif isinstance(target, str):
        if not target.strip():
            raise TargetError("target is empty; give the answer text to attribute, or target=None for the model's own")
        ids = lab.tokenizer.encode(target, add_special_tokens=False)
    elif isinstance(target, (list, tuple, torch.Tensor)):
        ids = [int(i) for i in torch.as_tensor(target).reshape(-1).tolist()]
        vocab = lab.model.config.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab]
        if not ids or bad:
            raise TargetError(
                f"target ids must be a non-empty list of ids in 0..{vocab - 1}" + (f"; {bad} are not" if bad else "")
            )
    else:
        raise TypeError(
            f"target must be None (the model's own answer), a string or token ids, got {type(target).__name__}"
        )
    early = [i for i, t in enumerate(ids[:-1]) if t in stops]
    if early:
        piece = lab.tokenizer.convert_ids_to_tokens(ids[early[0]])
        raise TargetError(
            f"target is not reachable: its token {early[0]} is {piece!r}, a stop token, where the "
            "model ends its answer; attribute the text up to it"
        )
    if inputs.num_tokens + len(ids) > lab.spec.context_length:
        raise TargetError(
            f"target is not reachable: {inputs.num_tokens} prompt + {len(ids)} target tokens exceed "
            f"the model's context of {lab.spec.context_length}"
        )
    return torch.tensor(ids, device=inputs.device)


@contextlib.contextmanager
def _progress(scorer: Scorer, total: int, desc: str, progress):
    """A tqdm bar (notebook-aware) counting the rows the model runs: ``progress=None`` shows it once
    a run has lasted a second (unless ``TQDM_DISABLE`` is set), ``True`` at once, ``False`` never."""
    if progress is False:
        yield None
        return
    from tqdm.auto import tqdm

    forced = {"disable": False, "delay": 0} if progress else {"delay": 1.0}
    bar = tqdm(total=total, desc=desc, unit="row", leave=False, **forced)
    scorer.on_rows = bar.update
    try:
        yield bar
    finally:
        scorer.on_rows = None
        bar.close()


def _baselines(units, tokenizer, baseline_id: int, image_baseline) -> str:
    parts = []
    if any(u.image is None for u in units):
        parts.append(
            f"a removed text unit's tokens become {tokenizer.convert_ids_to_tokens(baseline_id)!r} "
            f"(id {baseline_id}); template tokens are kept"
        )
    if any(u.image is not None for u in units):
        parts.append(f"a removed image unit's pixels become {image_baseline} in the crop and global views")
    return "; ".join(parts)


def attribute(
    lab,
    conversation,
    images: Sequence | None = None,
    *,
    target=None,
    units="words",
    method: str = "ablation",
    baseline="unk",
    image_baseline="white",
    region_size: int = 4,
    include_template: bool = False,
    batch_size: int = 16,
    n_samples: int = 10,
    n_steps: int = 32,
    internal_batch_size: int | None = 8,
    max_new_tokens: int = 64,
    num_crops: int | None = None,
    progress: bool | None = None,
    seed: int = 0,
) -> Attribution:
    """Attribute an answer to the units of its prompt with captum.

    Args:
        lab: a :class:`~phi3lab.Lab` (text or vision).
        conversation: a string (one user turn) or HF messages.
        images: pictures for the ``<|image_N|>`` tags (vision models).
        target: ``None`` (the model's greedy answer, without its stop token), a string, or token ids.
        units: one of :data:`UNIT_KINDS`, or a text kind and an image kind together
            (e.g. ``["messages", "images"]``).  See :mod:`phi3lab.attribution.units`.
        method: ``"ablation"``, ``"shapley"`` or ``"ig"``.
        baseline: what a removed text unit's tokens become: ``"unk"`` (default), a one-token string
            or a token id.
        image_baseline: what a removed image unit's pixels become: ``"white"`` (default; the padding
            colour), ``"mean"`` (CLIP's mean, 0 after normalisation), ``"black"`` or ``(r, g, b)``.
        region_size: side of an image region in 28-px cells (1, 2, 3, 4, 6 or 12). Default: 4.
        include_template: also score the template's special tokens (one unit each).
        batch_size: perturbations per model call (captum's ``perturbations_per_eval``).
        n_samples: random orders for ``"shapley"``.
        n_steps, internal_batch_size: integration steps for ``"ig"`` and how many run at once
            (``None``: all at once, more memory).
        max_new_tokens: length limit of the model's own answer when ``target`` is ``None``.
        num_crops: crop budget for the pictures (default the processor's).
        progress: a tqdm bar: ``None`` shows it when a run lasts over a second, ``True`` always,
            ``False`` never.
        seed: seed of the Shapley orders.

    Returns:
        An :class:`~phi3lab.attribution.result.Attribution`.

    Raises:
        ValueError: an unknown ``units`` or ``method``, image units without pictures, an empty
            conversation or one with nothing outside the template; :class:`TargetError` for a
            target the model cannot produce.
    """
    from captum.attr import FeatureAblation, LayerIntegratedGradients, ShapleyValueSampling

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    kinds = check_kinds(units)
    for name, value in (
        ("batch_size", batch_size),
        ("n_samples", n_samples),
        ("n_steps", n_steps),
        ("max_new_tokens", max_new_tokens),
    ):
        _count(name, value)
    if internal_batch_size is not None:
        _count("internal_batch_size", internal_batch_size)
    if (
        conversation is None
        or (isinstance(conversation, str) and not conversation.strip())
        or (isinstance(conversation, (list, tuple)) and not conversation)
    ):
        raise ValueError("the conversation is empty; give a question, e.g. attribute(lab, 'What is 2 plus 3?')")
    vision = lab.spec.modality == "vision"
    inputs = lab.encode(conversation, images, num_crops=num_crops)
    unit_list = build_units(inputs, kinds, region_size=region_size, include_template=include_template, vision=vision)
    target_ids = _target(lab, inputs, target, max_new_tokens)
    baseline_id = text_baseline_id(lab.tokenizer, baseline)
    pictured = any(u.image is not None for u in unit_list)
    fill = image_fill(lab.processor.image_processor, image_baseline) if pictured else None
    scorer = Scorer(lab.model, inputs, unit_list, target_ids, baseline_id, fill)
    n, steps = len(unit_list), int(target_ids.numel())
    present = torch.ones(1, n, device=inputs.device)
    mask = torch.arange(n, device=inputs.device)[None]
    delta = None
    if method == "ablation":
        explainer = FeatureAblation(scorer)
        with _progress(scorer, n + 1, "FeatureAblation", progress):
            raw = explainer.attribute(present, baselines=0.0, feature_mask=mask, perturbations_per_eval=batch_size)
        scores = raw.reshape(steps, n)
    elif method == "shapley":
        explainer = ShapleyValueSampling(scorer)
        with _progress(scorer, n * n_samples + 1, "ShapleyValueSampling", progress), torch.random.fork_rng():
            torch.manual_seed(seed)
            raw = explainer.attribute(
                present, baselines=0.0, feature_mask=mask, n_samples=n_samples, perturbations_per_eval=batch_size
            )
        scores = raw.reshape(steps, n)
    else:
        scores, raw, explainer, delta = _integrated(
            lab, scorer, steps, n_steps, internal_batch_size, progress, LayerIntegratedGradients
        )
    return Attribution(
        units=unit_list,
        scores=scores,
        target_ids=target_ids.tolist(),
        tokenizer=lab.tokenizer,
        log_prob=scorer.log_prob,
        method=method,
        kinds=kinds,
        inputs=inputs,
        scorer=scorer,
        baselines=_baselines(unit_list, lab.tokenizer, baseline_id, image_baseline),
        raw=raw,
        explainer=explainer,
        delta=delta,
        batch_size=batch_size,
        noise_floor=_noise_floor(lab.model),
    )


def _noise_floor(model) -> float:
    """The rounding-noise floor of Δ log p in the model's dtype (float32's for a dtype it does not know)."""
    try:
        return noise_floor(getattr(model, "dtype", "float32"))
    except ValueError:
        return SCORE_FLOOR


def _integrated(lab, scorer: Scorer, steps: int, n_steps: int, internal_batch_size, progress, lig_class):
    """LayerIntegratedGradients once per target token; scores summed over each unit's positions."""
    forward = GradientForward(lab.model, scorer)
    explainer = lig_class(forward, forward.tap)
    device = scorer.ids.device
    one, zero = torch.ones(1, 1, device=device), torch.zeros(1, 1, device=device)
    raws, deltas = [], []
    with _progress(scorer, steps, "LayerIntegratedGradients", progress) as bar, torch.enable_grad():
        for t in range(steps):
            raw, delta = explainer.attribute(
                (one,),
                baselines=(zero,),
                target=t,
                n_steps=n_steps,
                internal_batch_size=internal_batch_size,
                return_convergence_delta=True,
            )
            raws.append(raw.detach()[0].sum(-1))  # [L]: summed over the hidden size
            deltas.append(float(delta.reshape(-1)[0]))
            if bar is not None:
                bar.update(1)
    raw = torch.stack(raws)  # [T, L]
    scores = torch.stack([raw[:, list(u.positions)].sum(1) for u in scorer.units], dim=1)
    return scores, raw, explainer, torch.tensor(deltas)
