"""Time of ``import phi3lab`` against ``import torch, transformers``, in fresh interpreters.

    python3 tasks.py bench benchmarks/import_time.py

Each statement runs in a new ``python -c`` process (so nothing is cached in the interpreter), the
two interleaved, after one unmeasured warm-up of each (so both find the files in the OS cache);
the figures are medians of the wall time of the whole process.  ``import phi3lab`` imports torch
and transformers' configuration code (to register Phi-3-vision's config with ``AutoConfig``) and
nothing else; its names, the model code and the processors load on first use.
Target: ≤ 1.2× ``import torch, transformers``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

REPEATS = 9
BASELINE = "import torch, transformers"
PHI3LAB = "import phi3lab"
GOAL = 1.2


def run_once(statement: str, cwd: str) -> float:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], cwd=cwd, env=env, check=True)
    return time.perf_counter() - start


def measure(repeats: int = REPEATS) -> dict[str, float]:
    """Median seconds of each statement over ``repeats`` interleaved fresh processes."""
    times: dict[str, list[float]] = {BASELINE: [], PHI3LAB: []}
    with tempfile.TemporaryDirectory() as cwd:  # not the checkout: no stray module shadows anything
        for statement in times:
            run_once(statement, cwd)  # warm-up
        for _ in range(repeats):
            for statement in times:
                times[statement].append(run_once(statement, cwd))
    return {statement: statistics.median(values) for statement, values in times.items()}


def main() -> None:
    medians = measure()
    base, ours = medians[BASELINE], medians[PHI3LAB]
    print(f"fresh processes, median of {REPEATS}, python {sys.version.split()[0]}")
    for statement, seconds in medians.items():
        print(f"  {statement:<28} {seconds:5.2f} s")
    ratio = ours / base
    verdict = "met" if ratio <= GOAL else "NOT met"
    print(f"import: phi3lab {ours:.1f} s vs torch+transformers {base:.1f} s → {ratio:.2f}x "
          f"(goal ≤ {GOAL}x, {verdict})")


if __name__ == "__main__":
    main()
