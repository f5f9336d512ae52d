"""Sweeps: every probe under every transform, answered in batches, judged, and saved as it goes.

    >>> import phi3lab, tempfile, pathlib
    >>> from phi3lab.safety import sweep
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "results.jsonl"
    >>> results = sweep(lab, "tiny", ["story"], out=out, progress=False)
    >>> len(results)                   # 60 probes as asked + the distinct harmful tasks in a story
    80
    >>> len(sweep(lab, "tiny", ["story"], out=out, progress=False))   # resumes: nothing to do
    80

:func:`sweep` plans (probe, transform) pairs — the ``none`` transform for every probe, the attack
transforms for the harmful ones (``benign_transforms=True`` also wraps the benign twins) — and skips
every pair whose content key the results file already holds.  The rest are answered in batches by
the target (:class:`~phi3lab.safety.targets.LabTarget` wraps a Lab: left-padded, greedy unless
told to sample, seeded when sampling), judged by :func:`~phi3lab.safety.refusal.refusal`, and
appended one row at a time (:mod:`phi3lab.safety.results`) with its verdict — ``declined``,
``off-topic`` or ``complied``.  Kill it at any moment and run it again: it picks up where it stopped.
An ``out`` path that holds anything but results is refused and left untouched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from phi3lab.errors import Phi3LabError
from phi3lab.safety.probes import DEFAULT_PROBES, Probe, real_sets, resolve
from phi3lab.safety.refusal import DETECTOR_VERSION, judge_row, refusal
from phi3lab.safety.results import Appender, Results, _parse, check_same_experiment, content_key
from phi3lab.safety.transforms import Transform, resolve_transforms

__all__ = ["sweep", "plan", "SafetyGuardError"]


class SafetyGuardError(Phi3LabError, ValueError):
    """Real harmful behaviours (HarmBench) sent under CI to a model that could answer them."""


def _as_target(target, **kwargs):
    from phi3lab.runtime.lab import Lab
    from phi3lab.safety.targets import LabTarget

    if isinstance(target, Lab):
        return LabTarget(target, **kwargs)
    if kwargs:
        raise TypeError(f"generation settings ({', '.join(kwargs)}) are a LabTarget's; set them on your target")
    for attr in ("name", "settings", "answer"):
        if not hasattr(target, attr):
            raise TypeError(
                f"a sweep target needs name, settings and answer(conversations); {type(target).__name__} "
                f"has no {attr!r} (wrap a Lab with LabTarget, see phi3lab.safety.targets)"
            )
    return target


def plan(probes: Sequence[Probe], transforms: Sequence[Transform], *, benign_transforms: bool = False):
    """The (probe, transform, messages) triples a sweep runs, in order.

    A transform that rewrites only the probe's task (``story``: "Write a story where a hero explains
    how to {task}.") gives the same conversation for every phrasing of that task; it is sent once, for
    the first such probe, so attack-success counts are counts of distinct conversations.
    """
    items = []
    for t in transforms:
        seen: set[str] = set()
        for p in probes:
            if t.name == "none" or p.kind == "harmful" or benign_transforms:
                messages = t(p)
                text = repr(messages)
                if t.name != "none" and text in seen:
                    continue
                seen.add(text)
                items.append((p, t, messages))
    return items


def _tokens(messages: Sequence[dict]) -> int:
    """A rough prompt length in tokens (characters / 4, plus the template's tokens per turn)."""
    return sum(len(m["content"]) for m in messages) // 4 + 6 * len(messages)


def batches(todo: Sequence, rows: int, tokens: int | None) -> list[list]:
    """Consecutive items (sorted by length) grouped into batches of at most ``rows`` conversations and,
    when ``tokens`` is given, at most ``tokens`` padded prompt tokens (rows × the longest)."""
    out: list[list] = []
    current: list = []
    longest = 0
    for item in todo:
        size = _tokens(item[2])
        if current and (len(current) >= rows or (tokens and (len(current) + 1) * max(longest, size) > tokens)):
            out.append(current)
            current, longest = [], 0
        current.append(item)
        longest = max(longest, size)
    if current:
        out.append(current)
    return out


def _progress(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="sweep", unit="answer", disable=os.environ.get("TQDM_DISABLE") == "1")


def sweep(
    target,
    probes=DEFAULT_PROBES,
    transforms=None,
    *,
    out,
    benign_transforms: bool = False,
    progress: bool = True,
    detector: Callable = refusal,
    first_token: bool = False,
    **target_settings,
) -> Results:
    """Run probes under transforms against a target, appending judged rows to ``out``; resumes.

    Args:
        target: a :class:`~phi3lab.Lab` (wrapped in a :class:`~phi3lab.safety.targets.LabTarget`,
            which takes ``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``batch_size``
            as keyword arguments here) or any :class:`~phi3lab.safety.targets.Target`.
        probes: probe set names, :class:`~phi3lab.safety.probes.ProbeSet` objects or probes
            (default ``("tiny", "over-refusal")``).
        transforms: transform names or :class:`~phi3lab.safety.transforms.Transform` objects
            (default: all built-in ones; ``none`` is always included).
        out: the JSONL results file; an existing one is resumed (same model and settings only); a file
            that is not a results file is refused (:class:`~phi3lab.safety.results.ResultsFileError`), never
            rewritten.
        benign_transforms: also wrap benign probes in the attack transforms.
        progress: show a progress bar.
        detector: ``detector(response, request) -> Verdict`` judging each answer (a detector that returns
            only ``refused`` gives two-way rows without ``verdict``).
        first_token: store the target's first-token refusal score when it has one.

    Returns:
        :class:`~phi3lab.safety.results.Results` of the whole file.
    """
    if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise TypeError(
            f"out must be the path of the results file (e.g. out='results.jsonl'), got {type(out).__name__} {out!r:.40}"
        )
    for name, value in (("benign_transforms", benign_transforms), ("progress", progress), ("first_token", first_token)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r:.40}")
    if not callable(detector):
        raise TypeError(f"detector must be a function detector(response, request), got {type(detector).__name__}")
    target = _as_target(target, **target_settings)
    chosen = resolve(probes)
    chosen_transforms = resolve_transforms(transforms)
    real = real_sets(chosen)
    if real and os.environ.get("CI") and getattr(target, "can_answer", True):
        raise SafetyGuardError(
            f"probe set(s) {real} are real harmful behaviours; they are not run under CI against "
            f"{target.name!r}, a model that could answer them. Run them by hand, outside CI."
        )
    out = Path(out)
    name, settings = target.name, dict(target.settings)
    rows_per_batch = int(getattr(target, "batch_size", 32))
    tokens_per_batch = getattr(target, "batch_tokens", None)
    scorer = getattr(target, "first_token_scores", None) if first_token else None
    with Appender(out) as appender:
        existing = Results(_parse(out)[0], out)
        check_same_experiment(existing, name, settings)
        done = existing.keys
        items = [
            (p, t, m, content_key(p.id, t.name, m, name, settings))
            for p, t, m in plan(chosen, chosen_transforms, benign_transforms=benign_transforms)
        ]
        todo = [it for it in items if it[3] not in done]
        todo.sort(key=lambda it: _tokens(it[2]))  # similar lengths share a batch
        bar = _progress(len(items), len(items) - len(todo), progress)
        try:
            for chunk in batches(todo, rows_per_batch, tokens_per_batch):
                conversations = [it[2] for it in chunk]
                began = time.perf_counter()
                answers = target.answer(conversations)
                if len(answers) != len(chunk):
                    raise RuntimeError(
                        f"{type(target).__name__}.answer returned {len(answers)} answers for {len(chunk)} conversations"
                    )
                scores = scorer(conversations) if scorer else [None] * len(chunk)
                seconds = (time.perf_counter() - began) / len(chunk)
                for (p, t, m, key), text, first in zip(chunk, answers, scores):
                    request = t.request(p, m)
                    row = {
                        "key": key,
                        "probe_set": p.set,
                        "probe": p.id,
                        "category": p.category,
                        "kind": p.kind,
                        "transform": t.name,
                        "family": t.family,
                        "model": name,
                        "settings": settings,
                        "messages": m,
                        "request": request,
                        "response": text,
                        **judge_row(detector, text, request),
                        "detector": getattr(detector, "__name__", "custom")
                        if detector is not refusal
                        else DETECTOR_VERSION,
                        "seconds": round(seconds, 4),
                    }
                    if first is not None:
                        row["first_token"] = round(float(first), 4)
                    for extra in ("twin", "split", "type"):
                        if getattr(p, extra):
                            row[extra] = getattr(p, extra)
                    appender.write(row)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    rows, problems, _ = _parse(out)
    return Results(rows, out, problems)
