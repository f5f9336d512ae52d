"""The memory plan's estimate against the measured peak, on the embedded models and Phi-3-mini-width stand-ins.

    python3 tasks.py bench benchmarks/memory_estimate.py            # every case (about 10 minutes on 2 cores)
    .venv/bin/python benchmarks/memory_estimate.py --quick          # the embedded models and one stand-in

Each case runs in a fresh process, which measures with the kernel's own peak counter (``VmHWM`` in
``/proc/self/status``, reset through ``/proc/self/clear_refs`` before each phase):

* **load** — resident memory once ``phi3lab.load`` built the model and every weight was read once (a
  checkpoint already in the compute dtype stays mapped from its file, which the kernel reads in only
  when a page is touched), minus the process before it, against the plan's weight estimate (the
  embedded models are loaded once first, so the code a first load imports is not counted); the peak
  while loading is printed beside it, resident (which counts the checkpoint file's pages transformers
  maps while converting dtypes) and private;
* **use** — peak while the model runs, minus the process after loading, against the plan's activation
  estimate: ``chat`` generates 8 tokens after a prompt of ``context - 8`` tokens (``lab.model.generate``),
  ``capture`` is ``lab.run_with_cache(..., sites=("embed", "resid_post"))`` over ``context`` tokens (one
  forward keeping the residual stream before and after every layer at every position, in float32, and
  every position's logits — what the plan's ``capture`` counts; attention rows are budgeted by the hook
  core itself and left out here).

The stand-ins (:func:`phi3lab.runtime.standins.write_standin`) have Phi-3-mini's published widths
(hidden 3072, 32 heads, MLP 8192, vocabulary 32,064) and 2 of its 32 layers, with random bf16 weights;
they are loaded in float32, bfloat16, int8 (torchao) and NF4 (bitsandbytes).  The ratio
estimate / measured should be at least 1 (the plan must not promise memory that is not there) and not
far above it.  Resident memory includes what the allocator keeps after freeing, so small activations
measure coarsely; the machine may be shared, so the absolute times printed are indicative only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, threading, time
from pathlib import Path

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

class Peak:
    # the kernel's resident peak (VmHWM, reset first) and the private-memory peak (RssAnon, sampled every ms)
    def __enter__(self):
        Path("/proc/self/clear_refs").write_text("5")
        self.rss, self.anon = status("VmRSS"), status("RssAnon")
        self.anon_peak, self.running = self.anon, True
        def sample():
            while self.running:
                self.anon_peak = max(self.anon_peak, status("RssAnon"))
                time.sleep(0.001)
        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        self.started = time.perf_counter()
        return self
    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        self.running = False
        self.thread.join()
        self.anon_peak = max(self.anon_peak, status("RssAnon"))
        self.resident = status("VmHWM") - self.rss
        self.private = self.anon_peak - self.anon
        self.after = status("VmRSS") - self.rss
        self.after_private = status("RssAnon") - self.anon
        self.after_file = self.after - self.after_private

case = json.loads(sys.argv[1])
import torch, transformers.modeling_utils  # imported before the baseline: not part of the model
import phi3lab
from phi3lab.runtime.quantization import quiet_imports
with quiet_imports():
    if case.get("quantize") == "nf4":
        import bitsandbytes  # noqa: F401
    if case.get("quantize") == "int8":
        import torchao  # noqa: F401
for warm in ("tiny", "tiny-vision"):  # the code a first load imports is not the model's memory
    phi3lab.load(warm, verbose=False)
import gc; gc.collect()
torch.manual_seed(0)
def touch(t):
    # read one element per 4 KiB page, so weights mapped from the checkpoint file are resident
    inner = getattr(t, "__tensor_flatten__", None)
    if inner is not None and type(t) not in (torch.Tensor, torch.nn.Parameter):
        for name in inner()[0]:
            touch(getattr(t, name))
    elif t.numel():
        t.detach().reshape(-1)[:: max(1, 4096 // t.element_size())].float().sum()

with Peak() as loading:
    lab = phi3lab.load(case["source"], dtype=case["dtype"], quantize=case.get("quantize"), use=case["use"],
                       context=case["context"], verbose=False)
    for tensor in [*lab.model.parameters(), *lab.model.buffers()]:
        touch(tensor)
vocab = min(lab.model.config.vocab_size, len(lab.tokenizer))
ids = torch.randint(10, vocab - 1, (1, case["context"] - 8))
per_word = len(lab.tokenizer(" apple" * 100)["input_ids"]) / 100
text = " apple" * int((case["context"] - 16) / per_word)  # a prompt of about `context` tokens
with torch.inference_mode(), Peak() as using:
    if case["use"] == "chat":
        lab.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8,
                           do_sample=False, pad_token_id=0)
    else:
        lab.run_with_cache(text, sites=("embed", "resid_post"))
plan = lab.memory
print(json.dumps(dict(load_resident=loading.resident, load_private=loading.private, load_after=loading.after,
                      load_after_private=loading.after_private, load_after_file=loading.after_file,
                      use_private=using.private, weights=plan.estimate.weights,
                      activations=plan.estimate.activations, load_s=loading.seconds, use_s=using.seconds,
                      weights_name=plan.weights_name)))
"""


def run_case(case: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(case)], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:7.1f}"


def main(argv: list[str]) -> None:
    from phi3lab.runtime.quantization import quiet_imports
    from phi3lab.runtime.standins import write_standin

    quick = "--quick" in argv
    work = Path(tempfile.mkdtemp(prefix="phi3lab-memory-"))
    with quiet_imports():
        mini = write_standin(
            work / "mini-width", "microsoft/Phi-3-mini-4k-instruct", layers=2, width="full", dtype="bfloat16"
        )
    cases = [
        dict(name="tiny", source="tiny", dtype="float32", use="chat", context=2048),
        dict(name="tiny", source="tiny", dtype="float32", use="capture", context=2048),
        dict(name="tiny-vision", source="tiny-vision", dtype="float32", use="chat", context=1024),
        dict(name="mini-width ×2 layers", source=str(mini), dtype="float32", use="chat", context=1024),
    ]
    if not quick:
        cases += [
            dict(name="mini-width ×2 layers", source=str(mini), dtype="float32", use="chat", context=2048),
            dict(name="mini-width ×2 layers", source=str(mini), dtype="float32", use="capture", context=1024),
            dict(name="mini-width ×2 layers", source=str(mini), dtype="bfloat16", use="chat", context=1024),
            dict(
                name="mini-width ×2 layers",
                source=str(mini),
                dtype="bfloat16",
                quantize="int8",
                use="chat",
                context=512,
            ),
            dict(
                name="mini-width ×2 layers", source=str(mini), dtype="bfloat16", quantize="nf4", use="chat", context=512
            ),
        ]
    print(
        "model                 weights as          use      context |  weights: estimate  resident after load "
        "(private + file)  ratio | load peak (resident, private) | activations: estimate  private peak  ratio"
        " | load s   use s"
    )
    for case in cases:
        r = run_case(case)
        if "error" in r:
            print(f"{case['name']:<21} {case['dtype']} {case.get('quantize')}: failed — {r['error']}")
            continue
        w_ratio = r["weights"] / r["load_after"] if r["load_after"] > 0 else float("inf")
        a_ratio = r["activations"] / r["use_private"] if r["use_private"] > 0 else float("inf")
        print(
            f"{case['name']:<21} {r['weights_name']:<19} {case['use']:<8} {case['context']:>7} | "
            f"{mib(r['weights'])} MiB {mib(r['load_after'])} MiB ({mib(r['load_after_private'])} + "
            f"{mib(r['load_after_file'])}) {w_ratio:5.2f} | ({mib(r['load_resident'])}, {mib(r['load_private'])}) | "
            f"{mib(r['activations'])} MiB {mib(r['use_private'])} MiB {a_ratio:5.2f} | "
            f"{r['load_s']:6.1f} {r['use_s']:7.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
