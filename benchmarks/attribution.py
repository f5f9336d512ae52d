"""FeatureAblation scores: phi3lab.attribution against plain captum, and the memory bound of "ig".

    python3 tasks.py bench benchmarks/attribution.py

The embedded text model, a two-turn chat with a system prompt (20 words), the model's own answer
as the target; the same units (words), the same baseline (every token of a removed word becomes
``<unk>``) and the same teacher-forced log-probabilities, measured side by side in one run,
interleaved, median of 3:

  (a) plain captum: ``LLMAttribution(FeatureAblation(model), tokenizer)`` over the prompt's tokens
      (a ``TextTokenInput`` whose interpretable tokens are the words' tokens, grouped by a
      ``feature_mask``), decoding the target token by token (``use_cached_outputs=False``: on
      transformers 5 captum 0.9's cached decoding never advances ``cache_position`` and returns
      wrong log-probabilities, shown on the first line)
  (b) plain captum, one forward per perturbation (``forward_in_tokens=False``), its fastest mode
  (c) phi3lab ``attribute(..., method="ablation")``: 16 perturbations per call, each batch
      reusing the KV cache of the unperturbed prefix before its first removed word
  (d) the same, one perturbation per call (the prefix cache alone)

The last line is the ratio of (a) — LLMAttribution as it is called, decoding token by token — to (c),
with the largest score difference between either plain run and (c); the line before gives the ratio
to (b).  Most of the gain is fewer model calls (four per perturbation in (a), one per 16 in (c)) and
fewer positions run (each batch starts at its first removed word); on one thread, where the tiny
model is compute-bound, the ratio to (b) shrinks towards the share of positions the prefix saves
(``--threads 1``).  Then the peak resident memory (above the level before the call) of
``method="ig"`` on the embedded vision model, 32 steps, with and without ``internal_batch_size``.
Target: speed-up ≥ 3×, max |Δ| ≤ 1e-4.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

import torch
from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput

import phi3lab
from phi3lab.attribution import attribute

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_capture import PeakRSS  # noqa: E402  one memory sampler for the benchmarks

REPEATS = 3
CHAT = [
    {"role": "system", "content": "You are a friendly assistant. Answer briefly."},
    {"role": "user", "content": "Hi! My name is Ada."},
    {"role": "assistant", "content": "Nice to meet you, Ada!"},
    {"role": "user", "content": "What is my name?"},
]


def plain_captum(lab, inputs, units, target, **kwargs) -> torch.Tensor:
    """captum's own LLMAttribution over the same prompt ids, units and baseline: ``[T, units]``."""
    positions = sorted(p for u in units for p in u.positions)
    inp = TextTokenInput("", lab.tokenizer, baselines=lab.tokenizer.unk_token_id)
    inp.inp_tensor = inputs.input_ids.cpu()
    inp.itp_mask = torch.zeros_like(inp.inp_tensor, dtype=torch.bool)
    inp.itp_mask[0, positions] = True
    inp.itp_tensor = inp.inp_tensor[inp.itp_mask][None]
    inp.n_itp_features, inp.values = len(positions), [str(p) for p in positions]
    group = {p: i for i, u in enumerate(units) for p in u.positions}
    mask = torch.tensor([[group[p] for p in positions]])
    result = LLMAttribution(FeatureAblation(lab.model), lab.tokenizer).attribute(
        inp, target=torch.tensor(target), feature_mask=mask, **kwargs
    )
    return result.token_attr[:, [positions.index(u.positions[0]) for u in units]]


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def ig_memory() -> tuple[int, list[tuple[str, int, float]]]:
    from phi3lab.tiny import vision_data

    vision = phi3lab.load("tiny-vision", verbose=False)
    star = vision_data.shapes(random.Random(3), "test")
    prompt = "<|image_1|>\n" + star.question
    rows = []
    for bound in (8, None):
        with PeakRSS() as peak:
            seconds, _ = timed(
                lambda: attribute(
                    vision,
                    prompt,
                    [star.image],
                    units=["words", "image-regions"],
                    method="ig",
                    target=star.answer,
                    n_steps=32,
                    internal_batch_size=bound,
                    progress=False,
                )
            )
        rows.append((f"internal_batch_size={bound}", peak.extra, seconds))
    return vision.encode(prompt, [star.image]).num_tokens, rows


def main(argv: list[str]) -> None:
    if argv[:1] == ["--threads"]:
        torch.set_num_threads(int(argv[1]))
    lab = phi3lab.load("tiny", verbose=False)
    first = attribute(lab, CHAT, units="words", progress=False)  # also warms up
    units, target = first.units, first.target_ids
    inputs = lab.encode(CHAT)
    print(
        f"embedded text model, {inputs.num_tokens} prompt tokens, {len(units)} words, target "
        f"{first.target_text!r} ({len(target)} tokens), CPU, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, median of {REPEATS}"
    )
    cached = plain_captum(lab, inputs, units, target)  # captum's defaults
    uncached = plain_captum(lab, inputs, units, target, use_cached_outputs=False)
    print(
        f"  captum's default use_cached_outputs=True differs from its own uncached decoding by up to "
        f"{float((cached - uncached).abs().max()):.3f} (wrong on transformers 5; not used below)"
    )
    cases = {
        "(a) captum, token by token": lambda: plain_captum(lab, inputs, units, target, use_cached_outputs=False),
        "(b) captum, one forward each": lambda: plain_captum(lab, inputs, units, target, forward_in_tokens=False),
        "(c) phi3lab, batch 16 + prefix": lambda: (
            attribute(lab, CHAT, units="words", target=target, progress=False).scores
        ),
        "(d) phi3lab, batch 1 + prefix": lambda: (
            attribute(lab, CHAT, units="words", target=target, batch_size=1, progress=False).scores
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    scores: dict[str, torch.Tensor] = {}
    for _ in range(REPEATS):
        for name, case in cases.items():
            seconds, scores[name] = timed(case)
            times[name].append(seconds)
    median = {name: statistics.median(t) for name, t in times.items()}
    ours = scores["(c) phi3lab, batch 16 + prefix"]
    for name in cases:
        delta = float((scores[name] - ours).abs().max())
        print(
            f"  {name:<32} {median[name] * 1000:8.1f} ms  × {median[name] / median[list(cases)[0]]:.2f}"
            f"   max |Δ| vs (c) {delta:.1e}"
        )
    fastest = median["(b) captum, one forward each"] / median["(c) phi3lab, batch 16 + prefix"]
    print(f"  (c) is {fastest:.1f}x faster than captum's one-forward mode (b)")
    tokens, rows = ig_memory()
    print(f'"ig" on the embedded vision model ({tokens} tokens, words + 9 image regions, 4 target tokens, 32 steps):')
    for name, extra, seconds in rows:
        print(f"  {name:<24} peak memory {extra / 2**20:7.1f} MiB above the call's start   {seconds:.2f} s")
    plain = [name for name in cases if name.startswith(("(a)", "(b)"))]
    worst = max(float((scores[name] - ours).abs().max()) for name in plain)
    speedup = median["(a) captum, token by token"] / median["(c) phi3lab, batch 16 + prefix"]
    print(f"attribution: speed-up {speedup:.1f}x vs plain captum, max |Δ| {worst:.1e}")


if __name__ == "__main__":
    main(sys.argv[1:])
