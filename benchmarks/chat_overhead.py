"""Overhead of ``lab.chat`` over a bare ``model.generate`` with the same settings.

    python3 tasks.py bench benchmarks/chat_overhead.py

Both produce the same greedy tokens from the same prompt on the embedded model; the ratio is
the median time of ``lab.chat`` (rendering, validation, tokenizing, streaming decode, result
bookkeeping) over the median time of ``generate`` alone, for the model's own short answer and for
a 64-token answer. Target: ≤ 1.03.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import statistics
import time

import torch

import phi3lab
from phi3lab.runtime.generation import encode, generate_kwargs

REPEATS = 30
NEW_TOKENS = 64
PROMPT = "My name is Ada. What is my name?"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(lab, prompt: str, new_tokens: int) -> dict[str, float]:
    kwargs = generate_kwargs(lab, new_tokens, 0.0, 1.0)
    inputs = encode(lab, [{"role": "user", "content": prompt}])

    def bare():
        with torch.inference_mode():
            lab.model.generate(**inputs, **kwargs)

    def chat():
        lab.chat(prompt, max_new_tokens=new_tokens, stream=False)

    def chat_streamed():
        with contextlib.redirect_stdout(io.StringIO()):
            lab.chat(prompt, max_new_tokens=new_tokens, stream=True)

    order = [("generate", bare), ("chat", chat), ("chat+stream", chat_streamed)]
    runs = {name: [] for name, _ in order}
    for _, fn in order:  # warm-up
        fn()
    for i in range(REPEATS):  # interleaved and rotated, so drift and warm caches hit all three alike
        for name, fn in order[i % 3 :] + order[: i % 3]:
            runs[name].append(timed(fn))
    return {name: statistics.median(times) for name, times in runs.items()}


def report(title: str, medians: dict[str, float]) -> None:
    base = medians["generate"]
    print(title)
    for name, median in medians.items():
        print(f"  {name:<12} {1000 * median:8.1f} ms   ratio {median / base:.3f}   (+{1000 * (median - base):.1f} ms)")


def main() -> None:
    torch.manual_seed(0)
    lab = phi3lab.load("tiny", verbose=False)
    print(
        f"embedded model, median of {REPEATS} interleaved runs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    short = lab.chat(PROMPT, max_new_tokens=NEW_TOKENS, stream=False).new_tokens
    report(f"the model's own answer ({short} tokens, stops at <|end|>):", measure(lab, PROMPT, NEW_TOKENS))
    unused = lab.model.config.vocab_size - 1  # never generated: both run the full NEW_TOKENS
    lab.spec = dataclasses.replace(lab.spec, stop_ids=(unused,))
    report(f"a {NEW_TOKENS}-token answer (stop ids replaced by an unused id):", measure(lab, PROMPT, NEW_TOKENS))
    print("target: chat / generate ≤ 1.03 (the fixed cost is rendering, validation, tokenizing and decoding)")


if __name__ == "__main__":
    main()
