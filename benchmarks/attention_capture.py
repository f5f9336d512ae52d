"""Attention capture under sdpa versus eager ``output_attentions``, at Phi-3's real width.

    python3 tasks.py bench benchmarks/attention_capture.py

A random Phi-3 with hidden 3072, 32 heads, 2 layers and the real vocabulary, on the CPU, one
forward of N = 2,048 tokens (logits for the last position only), measured side by side in one
run, each case repeated and the median taken:

  (a) plain sdpa forward
  (b) sdpa + capture of one layer, all heads, all rows
  (c) sdpa + capture of the last row in all layers
  (d) eager with output_attentions=True
  (e) sdpa + rollout of the last row: rotated queries and keys read per layer (the ``q`` and ``k`` sites,
      as ``run_with_cache(..., rollout=True)`` keeps them), then vector–matrix
      products from the top layer down, 256 query rows at a time (no N × N matrix per layer)

Time is wall clock; extra memory is the peak resident memory above the process's level before
the call, sampled every millisecond.  Targets: (b) ≤ 1.3× the time of (a), (c) ≤ 1.05×, and
the extra memory of (b) ≤ half that of (d); (e) ≤ 1.5× the time of (a) and ≤ 0.1× the memory of (d).

"""

from __future__ import annotations

import gc
import statistics
import threading
import time

import psutil
import torch
from transformers import Phi3Config, Phi3ForCausalLM

from phi3lab.inspect.capture import capture
from phi3lab.inspect.hooks import Hooks
from phi3lab.inspect.maps import qk_rows, rollout_rows

N = 2048
REPEATS = 3


class PeakRSS:
    def __init__(self):
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        gc.collect()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def extra(self) -> int:
        return self.peak - self.base


def _share(part: float, whole: float) -> float:
    """``part / whole``, or NaN where nothing was measured (a short run can stay within the baseline)."""
    return part / whole if whole > 0 else float("nan")


def main() -> None:
    torch.manual_seed(0)
    config = Phi3Config(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=2,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
    )
    model = Phi3ForCausalLM(config).eval()
    ids = torch.randint(0, 32000, (1, N))

    def forward(output_attentions=False):
        with torch.inference_mode():
            out = model(input_ids=ids, logits_to_keep=1, use_cache=False, output_attentions=output_attentions)
        return out

    def case_a():
        model.set_attn_implementation("sdpa")
        forward()

    def case_b():
        model.set_attn_implementation("sdpa")
        with capture(model, layers=[0], positions="all") as cap:
            forward()
        return cap

    def case_c():
        model.set_attn_implementation("sdpa")
        with capture(model, layers="all", positions="last") as cap:
            forward()
        return cap

    def case_d():
        model.set_attn_implementation("eager")
        out = forward(output_attentions=True)
        model.set_attn_implementation("sdpa")
        return out

    def case_e():
        model.set_attn_implementation("sdpa")
        with Hooks(model) as hooks:  # what run_with_cache(..., rollout=True) keeps: every layer's q and k
            hooks.read("q")
            hooks.read("k")
            forward()
        layers = []
        for i, layer in enumerate(model.model.layers):
            q, k = hooks["q", i][0].transpose(0, 1), hooks["k", i][0].transpose(0, 1)  # [heads, N, d]
            layers.append(qk_rows(q, k, layer.self_attn.scaling, layer.self_attn.num_key_value_groups))
        return rollout_rows(layers, [N - 1], N)

    cases = {
        "(a) sdpa forward": case_a,
        "(b) capture 1 layer, all rows": case_b,
        "(c) capture last row, all layers": case_c,
        "(d) eager output_attentions": case_d,
        "(e) rollout of the last row": case_e,
    }
    times = {k: [] for k in cases}
    memory = {k: [] for k in cases}
    case_a()  # warm-up
    for i in range(REPEATS):
        names = list(cases)
        names = names[i % len(names) :] + names[: i % len(names)]  # rotate the order
        for name in names:
            with PeakRSS() as peak:
                start = time.perf_counter()
                result = cases[name]()
                elapsed = time.perf_counter() - start
            del result
            times[name].append(elapsed)
            memory[name].append(peak.extra)
    t = {k: statistics.median(v) for k, v in times.items()}
    m = {k: statistics.median(v) for k, v in memory.items()}
    base = t["(a) sdpa forward"]
    print(
        f"Phi-3 width (hidden 3072, 32 heads), 2 layers, N = {N}, CPU, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, median of {REPEATS}"
    )
    for name in cases:
        print(f"  {name:<34} {t[name]:6.2f} s  ×{t[name] / base:5.2f}   extra memory {m[name] / 2**20:7.0f} MiB")
    b, d, e = m["(b) capture 1 layer, all rows"], m["(d) eager output_attentions"], m["(e) rollout of the last row"]
    a = m["(a) sdpa forward"]
    print(
        f"targets: (b) ≤ 1.30× → {t['(b) capture 1 layer, all rows'] / base:.2f}×; "
        f"(c) ≤ 1.05× → {t['(c) capture last row, all layers'] / base:.2f}×; "
        f"memory (b)/(d) ≤ 0.50 → {_share(b, d):.2f} (above the baseline), "
        f"{_share(b - a, d - a):.2f} (above the plain forward's own peak)"
    )
    print(
        f"rollout (e): time ≤ 1.50× (a) → {t['(e) rollout of the last row'] / base:.2f}×; "
        f"memory (e)/(d) ≤ 0.10 → {_share(e - a, d - a):.2f} above the plain forward's own peak "
        f"({_share(e, d):.2f} above the baseline, where the forward alone is already {_share(a, d):.2f})"
    )


if __name__ == "__main__":
    main()
