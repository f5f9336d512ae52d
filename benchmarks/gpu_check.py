"""GPU readiness: decode speed of a Phi-3-mini-sized model against the memory-bandwidth bound.

    python3 tasks.py bench benchmarks/gpu_check.py

On a CUDA machine it builds a Phi-3-mini-4k-sized model (3.8 B parameters, random weights, bf16,
nothing downloaded) on GPU 0 and measures, for batch 1 and a 128-token prompt:

* the memory bandwidth the GPU really gives (a device-to-device copy of 2 GiB), and from it the
  bound on decode speed: every new token reads every weight once, so tokens/s ≤ bandwidth / weight bytes;
* greedy decode tokens/s through ``generate`` under sdpa and, where ``flash_attn`` imports,
  flash_attention_2 (the time of 257 new tokens minus the time of 1, so prefill is left out);
* the overhead of phi3lab's attention capture during decode (:func:`phi3lab.inspect.capture.capture`,
  the last row of every layer, all heads; and one layer) against the plain decode;
* a 4-bit load: a Phi-3-mini-width stand-in (8 of its 32 layers, random bf16 weights written to a
  temporary folder by :func:`phi3lab.runtime.standins.write_standin`) loaded through ``phi3lab.load`` in
  bfloat16 and with ``quantize="nf4"`` (bitsandbytes), each in a fresh process: the memory plan's
  estimate against the GPU memory really allocated (``torch.cuda.max_memory_allocated``, load plus a
  128-token chat), and decode tokens/s;
* the causal image map on the accelerator: ``benchmarks/causal_map.py`` run in a fresh process on GPU 0,
  where ``causal_map`` batches 16 regions per forward (issue 24's goal of ≥ 3× over one forward per
  region counts on that batching; on a CPU it measures 1.3×).

On a machine without a CUDA GPU it says so (for the 4-bit load too) and exits 0.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEW_TOKENS = 256
PROMPT = 128
REPEATS = 3


def mini_config(attn: str):
    from transformers import Phi3Config

    config = Phi3Config(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=32000,
        eos_token_id=32000,
    )
    config._attn_implementation = attn
    return config


def bandwidth(torch) -> float:
    """Bytes per second of a device-to-device copy (read + write), best of 5."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # 1 GiB read, 1 GiB written
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    del src, dst
    return 2 * 2**30 / best


def timed_generate(torch, model, ids, new_tokens: int) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=32000,
    )
    torch.cuda.synchronize()
    return time.perf_counter() - t


def decode_rate(torch, model, ids, context=None) -> float:
    """New tokens per second after the first (median of REPEATS)."""
    import contextlib

    rates = []
    for _ in range(REPEATS):
        with context() if context else contextlib.nullcontext():
            one = timed_generate(torch, model, ids, 1)
        with context() if context else contextlib.nullcontext():
            many = timed_generate(torch, model, ids, NEW_TOKENS + 1)
        rates.append(NEW_TOKENS / (many - one))
    return statistics.median(rates)


FOUR_BIT_CHILD = r"""
import json, sys, time, torch
import phi3lab
folder, quantize = sys.argv[1], (sys.argv[2] if sys.argv[2] != "none" else None)
torch.cuda.reset_peak_memory_stats()
lab = phi3lab.load(folder, device="cuda", quantize=quantize, context=256, verbose=False)
loaded = torch.cuda.max_memory_allocated()
ids = torch.randint(10, 2000, (1, 128), device="cuda")
def run(n):
    torch.cuda.synchronize(); t = time.perf_counter()
    lab.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, pad_token_id=0)
    torch.cuda.synchronize(); return time.perf_counter() - t
with torch.inference_mode():
    run(4)
    rate = 128 / (run(129) - run(1))
print(json.dumps(dict(weights=lab.memory.weights_name, estimate=lab.memory.estimate.total,
                      estimate_weights=lab.memory.estimate.weights, loaded=loaded,
                      peak=torch.cuda.max_memory_allocated(), rate=rate, modules=len(lab.quantized_modules()))))
"""


def four_bit_load() -> None:
    """bf16 against NF4 through phi3lab.load, in fresh processes (see the module docstring)."""
    from phi3lab.runtime.hardware import probe
    from phi3lab.runtime.standins import write_standin

    if not probe().bitsandbytes:
        print("4-bit load: bitsandbytes is not installed (pip install -e '.[quant]'); skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_standin(
            Path(tmp) / "mini-8", "microsoft/Phi-3-mini-4k-instruct", layers=8, width="full", dtype="bfloat16"
        )
        for quantize in ("none", "nf4"):
            done = subprocess.run(
                [sys.executable, "-c", FOUR_BIT_CHILD, str(folder), quantize],
                capture_output=True,
                text=True,
                timeout=900,
            )
            if done.returncode != 0:
                print(f"4-bit load ({quantize}): failed — {done.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"4-bit load: Phi-3-mini width x8 layers as {r['weights']:<20} plan {r['estimate'] / 2**30:5.2f} GiB "
                f"(weights {r['estimate_weights'] / 2**30:5.2f}) | allocated after load {r['loaded'] / 2**30:5.2f} GiB, "
                f"peak with a 128-token chat {r['peak'] / 2**30:5.2f} GiB (plan/peak {r['estimate'] / r['peak']:.2f}) | "
                f"decode {r['rate']:6.1f} tokens/s | {r['modules']} quantized modules"
            )


def causal_map_on_gpu() -> None:
    """``benchmarks/causal_map.py`` in a fresh process (it loads the embedded vision model onto the GPU)."""
    script = Path(__file__).with_name("causal_map.py")
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        print("causal map on the GPU: did not finish in 900 s")
        return
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0:
        print(f"causal map on the GPU: failed — {done.stderr.strip().splitlines()[-1:]}")
        return
    print("causal map on the GPU (benchmarks/causal_map.py):")
    for line in lines:
        print(f"  {line}")


def main() -> int:
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed; nothing to measure")
        return 0
    if not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA GPU here (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
            "nothing to measure (decode speed, capture overhead, the 4-bit NF4 load, the batched causal map) — run it "
            "on an NVIDIA machine"
        )
        return 0
    from transformers import Phi3ForCausalLM

    from phi3lab.inspect.capture import capture
    from phi3lab.runtime.hardware import probe

    props = torch.cuda.get_device_properties(0)
    kernels = ["sdpa"]
    try:
        import flash_attn  # noqa: F401

        kernels.append("flash_attention_2")
    except ImportError:
        pass
    bw = bandwidth(torch)
    print(
        f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}; "
        f"torch {torch.__version__}; measured copy bandwidth {bw / 1e12:.2f} TB/s; phi3lab probes: {probe()}"
    )
    torch.manual_seed(0)
    ids = torch.randint(0, 32000, (1, PROMPT), device="cuda")
    rows = []
    for attn in kernels:
        with torch.device("cuda"):
            model = Phi3ForCausalLM(mini_config(attn)).to(torch.bfloat16).eval()
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        bound = bw / weight_bytes
        with torch.inference_mode():
            timed_generate(torch, model, ids, 8)  # warm-up
            plain = decode_rate(torch, model, ids)
            last_rows = decode_rate(torch, model, ids, lambda m=model: capture(m, positions="last"))
            one_layer = decode_rate(torch, model, ids, lambda m=model: capture(m, layers=[16], positions="last"))
        rows.append((attn, plain, bound, last_rows, one_layer))
        print(
            f"{attn:18s} decode {plain:7.1f} tokens/s = {plain / bound:5.1%} of the bound {bound:7.1f} "
            f"({weight_bytes / 1e9:.2f} GB of bf16 weights); with capture of every layer's last row "
            f"{last_rows:7.1f} tokens/s ({plain / last_rows:.2f}x), of one layer {one_layer:7.1f} "
            f"({plain / one_layer:.2f}x)"
        )
        del model
        torch.cuda.empty_cache()
    if len(rows) == 2:
        print(f"flash_attention_2 vs sdpa decode: {rows[1][1] / rows[0][1]:.2f}x")
    else:
        print("flash_attn is not installed (pip install -e '.[gpu]'); sdpa only")
    four_bit_load()
    causal_map_on_gpu()
    return 0


if __name__ == "__main__":
    sys.exit(main())
