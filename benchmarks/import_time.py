"""Time of ``import phi3lab`` against ``import torch, transformers``, in fresh interpreters.

    python3 tasks.py bench benchmarks/import_time.py

Each statement runs in a new ``python -c`` process (so nothing is cached in the interpreter), the
two interleaved, after one unmeasured warm-up of each (so both find the files in the OS cache);
the figures are medians of the wall time of the whole process, and of its CPU time (user + system,
which other work on a shared machine disturbs less).  ``import phi3lab`` imports neither torch nor
transformers: its names load on first use, and Phi-3-vision is registered with transformers'
Auto classes when those are imported (:mod:`phi3lab.models`).  Target: ≤ 1.2× ``import torch,
transformers``.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPEATS = 9
BASELINE = "import torch, transformers"
PHI3LAB = "import phi3lab"
GOAL = 1.2


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(statement: str, cwd: str) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of one fresh ``python -c statement``."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    cpu, start = _child_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], cwd=cwd, env=env, check=True)
    return time.perf_counter() - start, _child_cpu() - cpu


def measure(repeats: int = REPEATS) -> dict[str, tuple[float, float]]:
    """Median ``(wall, cpu)`` seconds of each statement over ``repeats`` interleaved fresh processes."""
    runs: dict[str, list[tuple[float, float]]] = {BASELINE: [], PHI3LAB: []}
    with tempfile.TemporaryDirectory() as cwd:  # not the checkout: no stray module shadows anything
        for statement in runs:
            run_once(statement, cwd)  # warm-up
        for _ in range(repeats):
            for statement in runs:
                runs[statement].append(run_once(statement, cwd))
    return {
        statement: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        for statement, values in runs.items()
    }


def main() -> None:
    medians = measure()
    (base, base_cpu), (ours, ours_cpu) = medians[BASELINE], medians[PHI3LAB]
    print(f"fresh processes, median of {REPEATS}, python {sys.version.split()[0]}")
    for statement, (wall, cpu) in medians.items():
        print(f"  {statement:<28} {wall:5.2f} s wall  {cpu:5.2f} s cpu")
    print(f"cpu time: {ours_cpu / base_cpu:.2f}x")
    ratio = ours / base
    verdict = "met" if ratio <= GOAL else "NOT met"
    print(f"import: phi3lab {ours:.1f} s vs torch+transformers {base:.1f} s → {ratio:.2f}x (goal ≤ {GOAL}x, {verdict})")


if __name__ == "__main__":
    main()
