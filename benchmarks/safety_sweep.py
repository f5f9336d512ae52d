"""A batched in-process sweep against a loop of ``lab.chat`` on the same probes.

    python3 tasks.py bench benchmarks/safety_sweep.py

Both answer the default sweep of the embedded model (probe sets ``tiny`` and ``over-refusal``, every
built-in transform: 310 conversations, greedy, up to 64 new tokens) and judge each answer with the
refusal detector.  The sweep batches left-padded prompts (``LabTarget``) and appends every row to a
results file with ``fsync``; the loop calls ``lab.chat`` once per conversation and keeps the answers
in memory.  The answers must be identical; the ratio is the loop's median time over the sweep's,
in wall-clock time and in CPU time (the process's own).  On a shared machine whole runs seconds
apart see different loads, so the same comparison is also made batch by batch (the loop on one
batch's conversations, then the batch, alternating), which other work disturbs far less.
Goal: ≥ 4× on 2 cores.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

import phi3lab
from phi3lab.safety import LabTarget, refusal, sweep
from phi3lab.safety.probes import DEFAULT_PROBES, resolve
from phi3lab.safety.sweep import _tokens, batches, plan
from phi3lab.safety.transforms import resolve_transforms

REPEATS = 3
NEW_TOKENS = 64


CONFIGS = {"sweep (default)": {}, "sweep, 32 a batch": {"batch_size": 32, "batch_tokens": None}}


def run_sweep(lab, folder: Path, k: int, config: str) -> tuple[tuple[float, float], dict[str, str]]:
    out = folder / f"sweep-{len(config)}-{k}.jsonl"
    wall, cpu = time.perf_counter(), time.process_time()
    results = sweep(lab, DEFAULT_PROBES, None, out=out, progress=False, max_new_tokens=NEW_TOKENS, **CONFIGS[config])
    elapsed = (time.perf_counter() - wall, time.process_time() - cpu)
    by_key = {r["probe"] + "|" + r["transform"]: r["response"] for r in results.rows}
    return elapsed, by_key


def run_loop(lab, items) -> tuple[tuple[float, float], dict[str, str]]:
    wall, cpu = time.perf_counter(), time.process_time()
    answers = {}
    for probe, t, messages in items:
        text = lab.chat(messages, stream=False, max_new_tokens=NEW_TOKENS, special_tokens="allow").text
        refusal(text, t.request(probe, messages))
        answers[probe.id + "|" + t.name] = text
    return (time.perf_counter() - wall, time.process_time() - cpu), answers


def interleaved(lab, items) -> tuple[tuple[float, float], tuple[float, float]]:
    """(wall, cpu) of the loop and of batched answering + judging, summed over alternating batches."""
    target = LabTarget(lab, max_new_tokens=NEW_TOKENS)
    ordered = sorted(items, key=lambda it: _tokens(it[2]))  # as the sweep orders and groups them
    loop = [0.0, 0.0]
    batched = [0.0, 0.0]
    for chunk in batches(ordered, target.batch_size, target.batch_tokens):
        (wall, cpu), _ = run_loop(lab, chunk)
        loop[0] += wall
        loop[1] += cpu
        wall, cpu = time.perf_counter(), time.process_time()
        for (probe, t, messages), text in zip(chunk, target.answer([m for _, _, m in chunk])):
            refusal(text, t.request(probe, messages))
        batched[0] += time.perf_counter() - wall
        batched[1] += time.process_time() - cpu
    return tuple(loop), tuple(batched)


def main() -> None:
    torch.manual_seed(0)
    lab = phi3lab.load("tiny", verbose=False)
    items = plan(resolve(DEFAULT_PROBES), resolve_transforms(None))
    print(
        f"embedded model, default sweep: {len(items)} conversations, greedy, ≤ {NEW_TOKENS} new tokens; "
        f"median of {REPEATS} interleaved runs, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    times: dict[str, list[tuple[float, float]]] = {"loop of lab.chat": [], **{name: [] for name in CONFIGS}}
    mismatches = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run_sweep(lab, folder, -1, "sweep (default)")  # warm-up
        for k in range(REPEATS):
            loop_time, expected = run_loop(lab, items)
            times["loop of lab.chat"].append(loop_time)
            for config in CONFIGS:
                elapsed, got = run_sweep(lab, folder, k, config)
                times[config].append(elapsed)
                mismatches += sum(got[key] != text for key, text in expected.items()) + abs(len(got) - len(expected))
    medians = {
        name: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for name, v in times.items()
    }
    base_wall, base_cpu = medians["loop of lab.chat"]
    for name, (wall, cpu) in medians.items():
        print(
            f"  {name:<18} wall {wall:7.2f} s ({1000 * wall / len(items):5.1f} ms/answer) "
            f"× {base_wall / wall:5.2f}   "
            f"cpu {cpu:7.2f} s × {base_cpu / cpu:5.2f}"
        )
    print(f"answers identical to the loop's: {'yes' if not mismatches else f'NO ({mismatches} differ)'}")
    (lw, lc), (bw, bc) = interleaved(lab, items)
    print(
        f"  batch by batch (default batches, alternating): loop wall {lw:.2f} s, cpu {lc:.2f} s; "
        f"batched wall {bw:.2f} s, "
        f"cpu {bc:.2f} s → × {lw / bw:.2f} wall, × {lc / bc:.2f} cpu"
    )
    wall, cpu = medians["sweep (default)"]
    ok = base_wall / wall >= 4 and base_cpu / cpu >= 4
    print(
        f"goal: sweep (default batches) ≥ 4× the loop — {'met' if ok else 'not met'} "
        f"(wall {base_wall / wall:.2f}×, cpu {base_cpu / cpu:.2f}×)"
    )


if __name__ == "__main__":
    main()
