"""One training step of the embedded vision model: the plain step against phi3lab's.

    python3 tasks.py bench benchmarks/training_step.py

Eight training pictures (``num_crops=1``: a global view plus one crop, 313 image tokens each),
their multi-turn conversations, forward + backward + AdamW on the tiny Phi-3-vision, measured
side by side in one run (interleaved, median of the repeats):

  (a) plain: CLIP on every crop, the model's own loss (the output head over every position)
  (b) CLIP once per distinct crop (the global view of a one-crop picture is that crop)
  (c) (b) + the output head only where an answer token is predicted (:func:`answer_loss`)

The aids of training (part read-outs, routing) are left out, so the three compute the same
loss.  Target: (c) ≤ 0.8× the time of (a).
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from phi3lab.models.phi3_v import Phi3VForCausalLM, Phi3VProcessor
from phi3lab.tiny import build, train_vision, vision_data

REPEATS = 8


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(train_vision.THREADS)
    folder = train_vision.write_vision_files(Path(tempfile.mkdtemp()) / "tiny-vision")
    processor = Phi3VProcessor.from_pretrained(folder)
    model = Phi3VForCausalLM(train_vision.vision_config()).train()
    model.set_attn_implementation("sdpa")
    order = random.Random(0)
    items = [
        train_vision.training_item(processor, ex, order, dense=False, route=False)
        for ex in vision_data.training_examples(8, 0)
    ]
    batch = train_vision.collate(items, build.pad_id())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(share_views: bool, head_at_answers: bool) -> float:
        model.model.vision_embed_tokens.share_identical_views = share_views
        start = time.perf_counter()
        if head_at_answers:
            hidden = model.model(
                input_ids=batch["input_ids"],
                pixel_values=batch["pixel_values"],
                image_sizes=batch["image_sizes"],
                use_cache=False,
            ).last_hidden_state
            loss = train_vision.answer_loss(model, hidden, batch["labels"])
        else:
            loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    cases = [
        ("(a) plain", lambda: step(False, False)),
        ("(b) CLIP once per crop", lambda: step(True, False)),
        ("(c) (b) + head at answers", lambda: step(True, True)),
    ]
    for _, fn in cases:  # warm-up
        fn()
    times = {name: [] for name, _ in cases}
    for i in range(REPEATS):  # interleaved and rotated
        for name, fn in cases[i % 3 :] + cases[: i % 3]:
            times[name].append(fn())
    width = batch["input_ids"].shape[1]
    print(
        f"tiny Phi-3-vision, 8 pictures, {width} tokens a row, CPU, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, median of {REPEATS}"
    )
    base = statistics.median(times["(a) plain"])
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"  {name:<28} {1000 * median:7.0f} ms  × {median / base:.2f}")
    print("target: (c) ≤ 0.8× (a)")


if __name__ == "__main__":
    main()
