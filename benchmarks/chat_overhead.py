"""Overhead of ``lab.chat`` over a bare ``model.generate`` with the same settings.

    python3 tasks.py bench benchmarks/chat_overhead.py

Both produce the same greedy tokens from the same prompt on the embedded model; the ratio is
the median time of ``lab.chat`` (rendering, validation, tokenizing, streaming decode, result
bookkeeping) over the median time of ``generate`` alone. Target: ≤ 1.03 without streaming.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time

import torch

import phi3lab
from phi3lab.generation import _generate_kwargs, encode

REPEATS = 30
NEW_TOKENS = 64
PROMPT = "My name is Ada. What is my name?"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    torch.manual_seed(0)
    lab = phi3lab.load("tiny", verbose=False)
    kwargs = _generate_kwargs(lab, NEW_TOKENS, 0.0, 1.0)
    inputs = encode(lab, [{"role": "user", "content": PROMPT}])

    def bare():
        with torch.inference_mode():
            lab.model.generate(**inputs, **kwargs)

    def chat():
        lab.chat(PROMPT, max_new_tokens=NEW_TOKENS, stream=False)

    def chat_streamed():
        with contextlib.redirect_stdout(io.StringIO()):
            lab.chat(PROMPT, max_new_tokens=NEW_TOKENS, stream=True)

    runs = {"generate": [], "chat": [], "chat+stream": []}
    for fn in (bare, chat, chat_streamed):  # warm-up
        fn()
    order = [("generate", bare), ("chat", chat), ("chat+stream", chat_streamed)]
    for i in range(REPEATS):  # interleaved and rotated, so drift and warm caches hit all three alike
        for name, fn in order[i % 3:] + order[:i % 3]:
            runs[name].append(timed(fn))
    base = statistics.median(runs["generate"])
    tokens = lab.chat(PROMPT, max_new_tokens=NEW_TOKENS, stream=False).new_tokens
    print(f"embedded model, {tokens} new tokens, median of {REPEATS} interleaved runs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for name, times in runs.items():
        median = statistics.median(times)
        print(f"  {name:<12} {1000 * median:8.1f} ms   ratio {median / base:.3f}")
    print("target: chat / generate ≤ 1.03")


if __name__ == "__main__":
    main()
