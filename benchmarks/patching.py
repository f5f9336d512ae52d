"""Activation patching: phi3lab's batched grid against a loop of single patched forwards.

    python3 tasks.py bench benchmarks/patching.py

The embedded text model, the name-recall task of notebook 03 ("My name is Ada. What is my name?"
against "…Ben…", the answer's "Your name is" teacher-forced), the ``resid_pre`` layer × position
grid, metric ``logit(▁Ada.) − logit(▁Ben.)`` at the last position, measured side by side in one run,
interleaved, median of 3:

  (a) a loop: for every (layer, position) cell one forward of the whole corrupted prompt with that
      cell's activation replaced by the clean run's (one ``Hooks`` edit per cell) — what notebook 03
      used to write by hand;
  (b) ``phi3lab.inspect.patching.patch(..., batch_size=16)``: 16 cells per forward, each batch reusing
      the corrupted run's keys and values before its first patched position.

The last line says whether the two grids are the same numbers (max |Δ| ≤ 1e-4) and the speed-up
of (b) over (a).  Target: ≥ 3×.
"""

from __future__ import annotations

import statistics
import time

import torch

import phi3lab
from phi3lab.inspect.hooks import Hooks
from phi3lab.inspect.patching import patch

REPEATS = 3
QUESTION = "My name is Ada. What is my name?"


def loop(lab, clean, corrupted, ada, ben) -> torch.Tensor:
    """One plainly patched forward per cell."""
    n_layers = lab.model.config.num_hidden_layers
    reads = Hooks(lab.model).read("resid_pre", "all")
    with reads, torch.inference_mode():
        lab.model(input_ids=torch.tensor([clean]))
    grid = torch.zeros(n_layers, len(clean))
    for layer in range(n_layers):
        value = reads["resid_pre", layer]
        for position in range(len(clean)):

            def put(v, at, position=position, value=value):
                v = v.clone()
                v[:, position] = value[:, position]
                return v

            with Hooks(lab.model).edit("resid_pre", put, layer), torch.inference_mode():
                logits = lab.model(input_ids=torch.tensor([corrupted])).logits[0, -1]
            grid[layer, position] = logits[ada] - logits[ben]
    return grid


def main() -> None:
    lab = phi3lab.load("tiny", verbose=False)
    start = lab.tokenizer.convert_tokens_to_ids(["▁Your", "▁name", "▁is"])
    clean = lab.encode(QUESTION).input_ids[0].tolist() + start
    corrupted = lab.encode(QUESTION.replace("Ada", "Ben")).input_ids[0].tolist() + start
    ada, ben = lab.tokenizer.convert_tokens_to_ids(["▁Ada.", "▁Ben."])
    times = {"loop": [], "patch": []}
    grids = {}
    for _ in range(REPEATS):
        started = time.perf_counter()
        grids["loop"] = loop(lab, clean, corrupted, ada, ben)
        times["loop"].append(time.perf_counter() - started)
        started = time.perf_counter()
        grids["patch"] = patch(lab, clean, corrupted, site="resid_pre", answer=ada, wrong=ben, batch_size=16).grid
        times["patch"].append(time.perf_counter() - started)
    cells = grids["loop"].numel()
    diff = float((grids["loop"] - grids["patch"]).abs().max())
    median = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"embedded text model, resid_pre grid of {grids['loop'].shape[0]} layers × {grids['loop'].shape[1]} "
        f"positions = {cells} cells, CPU, {torch.get_num_threads()} threads, median of {REPEATS}"
    )
    print(f"  (a) one forward per cell   {median['loop']:7.3f} s")
    print(f"  (b) patch(batch_size=16)   {median['patch']:7.3f} s   max |Δ| {diff:.1e}")
    same = "identical grid" if diff <= 1e-4 else f"grids differ by {diff:.1e}"
    print(f"patching: {same}, speed-up {median['loop'] / median['patch']:.1f}x vs one forward per cell")


if __name__ == "__main__":
    main()
