"""Causal image maps and sink detection: phi3lab against the plain loop, on a 16-crop picture.

    python3 tasks.py bench benchmarks/causal_map.py

The embedded vision model, a 1,344 × 1,344 picture of shapes at ``num_crops=16`` (4 × 4 crops: 2,509
image tokens, about 2.5k positions with the question), every region of 4 × 4 cells (144 regions), the
``"mean"`` baseline, the model's own answer teacher-forced; measured side by side in one run, median of 3:

  (a) a loop: for every region one forward of the whole prompt with that region's image tokens replaced
      (one ``Hooks`` edit per region);
  (b) ``phi3lab.inspect.causal.causal_map(...)`` as called by default (one region per forward on a CPU);
  (c) the same with ``batch_size=16``: 16 regions per forward (the default on an accelerator).

Then the cost of reading the picture's attention-sink evidence from the cache of one ``generate_with_cache``,
beside that call itself (one question: the tokens that pass are candidates unless their activations are
massive; the count printed says which).  The last lines say whether the maps are the same numbers
(max |Δ| ≤ 1e-4) with the speed-up of (b) over (a) (target ≥ 3×; (c) shows what batching does here), and
the sink detection's cost as a
multiple of the call it reads (target ≤ 1.2×).  On a CUDA machine the model runs there, in float32 (so the
maps can be compared at 1e-4), and (b) batches 16 regions per forward; ``benchmarks/gpu_check.py`` runs
this script there.
"""

from __future__ import annotations

import os
import random
import statistics
import time

import torch
from PIL import Image, ImageDraw

import phi3lab
from phi3lab.inspect.causal import causal_map
from phi3lab.inspect.hooks import Hooks
from phi3lab.inspect.kernel import embed_inputs
from phi3lab.inspect.sinks import find_sinks

REPEATS = int(os.environ.get("PHI3LAB_BENCH_REPEATS", "3"))  # median of this many runs
QUESTION = "<|image_1|>\nWhat colour is the triangle?"


def picture(size: int = 1344) -> Image.Image:
    rng = random.Random(0)
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for colour in ("purple", "green", "orange", "blue"):
        x, y = rng.randrange(0, size - 300), rng.randrange(0, size - 300)
        draw.ellipse((x, y, x + 280, y + 280), fill=colour)
    draw.polygon([(600, 300), (900, 800), (300, 800)], fill="purple")
    return image


def loop(lab, image, cm) -> torch.Tensor:
    """One plain forward per region, nothing batched or reused."""
    inputs = lab.encode(QUESTION, [image], num_crops=16)
    span = inputs.image(0)
    target = list(cm.answer_ids)
    device = inputs.input_ids.device
    ids = torch.cat([inputs.input_ids, torch.tensor([target[:-1]], device=device)], dim=1)
    with torch.inference_mode():
        embeds = embed_inputs(lab.model, ids, inputs["pixel_values"], inputs["image_sizes"])
        mean = embeds[0, span.start : span.end].mean(0)
        drops = []
        for region in cm.regions:
            positions = [span.start + t for t in region.tokens]

            def put(value, at, positions=positions):
                value = value.clone()
                value[:, positions] = mean
                return value

            with Hooks(lab.model).edit("embed", put):
                logits = lab.model(inputs_embeds=embeds, logits_to_keep=len(target)).logits[0]
            wanted = torch.tensor(target, device=logits.device)
            score = torch.log_softmax(logits.float(), -1)[torch.arange(len(target), device=logits.device), wanted].sum()
            drops.append(cm.base - float(score))
    return torch.tensor(drops)


def _device(lab) -> str:
    device = lab.attention.device
    if str(device).startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, {lab.attention.dtype}"
    return f"CPU, {torch.get_num_threads()} threads"


def main() -> None:
    lab = phi3lab.load("tiny-vision", dtype="float32", verbose=False)  # float32 on a GPU too: "same numbers" at 1e-4
    image = picture()
    tokens = lab.encode(QUESTION, [image], num_crops=16).num_tokens
    times = {"loop": [], "map": [], "batched": [], "cache": [], "sinks": []}
    for _ in range(REPEATS):
        started = time.perf_counter()
        cm = causal_map(lab, QUESTION, [image], num_crops=16)
        times["map"].append(time.perf_counter() - started)
        started = time.perf_counter()
        batched = causal_map(lab, QUESTION, [image], num_crops=16, batch_size=16)
        times["batched"].append(time.perf_counter() - started)
        started = time.perf_counter()
        looped = loop(lab, image, cm)
        times["loop"].append(time.perf_counter() - started)
        started = time.perf_counter()
        _, cache = lab.generate_with_cache(QUESTION, [image], num_crops=16, max_new_tokens=8)
        times["cache"].append(time.perf_counter() - started)
        started = time.perf_counter()
        sinks = find_sinks([cache])
        times["sinks"].append(time.perf_counter() - started)
    diff = float((looped - torch.tensor(cm.drops)).abs().max())
    diff_batched = float((looped - torch.tensor(batched.drops)).abs().max())
    median = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"embedded vision model, {image.width}×{image.height} picture at num_crops=16: {tokens} positions, "
        f"{len(cm.regions)} regions, {_device(lab)}, median of {REPEATS}"
    )
    print(f"  (a) one forward per region     {median['loop']:8.2f} s", flush=True)
    print(f"  (b) causal_map() (default)     {median['map']:8.2f} s   max |Δ| {diff:.1e}", flush=True)
    print(f"  (c) causal_map(batch_size=16)  {median['batched']:8.2f} s   max |Δ| {diff_batched:.1e}", flush=True)
    print(f"  generate_with_cache            {median['cache']:8.2f} s", flush=True)
    print(
        f"  find_sinks on its cache        {median['sinks']:8.2f} s   ({len(sinks)} sink token(s), "
        f"{len(sinks.candidates)} candidate(s): one question)",
        flush=True,
    )
    same = "identical" if max(diff, diff_batched) <= 1e-4 else f"differs by {max(diff, diff_batched):.1e}"
    ratio = (median["cache"] + median["sinks"]) / median["cache"]
    print(f"sinks: detection costs {ratio:.2f}x the generate_with_cache it reads", flush=True)
    print(f"causal map: {same}, speed-up {median['loop'] / median['map']:.1f}x", flush=True)


if __name__ == "__main__":
    main()
