"""What each widget sends to the browser, the Python time of each interaction, and AttentionExplorer at scale.

    python3 tasks.py bench benchmarks/widgets.py            # both parts
    python3 tasks.py bench benchmarks/widgets.py scale      # only AttentionExplorer at Phi-3-mini width

The case is the issue's: a 16-crop Phi-3-vision prompt (a 1344 × 1344 picture at num_crops 16,
about 2,500 tokens) on the embedded vision model, captured with every query row, answered greedily.
For each widget: the bytes of its initial state as the browser first receives it (JSON), and for
each interaction the bytes of the messages it sends (recorded on its comm, as a kernel would send
them) and the Python time from the browser's change arriving to the reply being sent (median of
``REPEATS``).  Goals: initial state ≤ 512 KiB; an interaction ≤ 64 KiB and ≤ 50 ms of Python.
Rollout is computed once, for every row the widget can show, at its first request (listed apart).

**At scale** (issue 27): ``AttentionExplorer`` on a random Phi-3 of Phi-3-mini's width (hidden 3072,
32 heads, 2 layers) over a 2,048-token prompt with every row of every layer captured, beside the
embedded tiny model.  Build time, and the process's peak resident memory above its level before the
build (sampled every millisecond), measured twice: on a cache whose layers were never read (the build
then also pays :meth:`Cache.attention` assembling each layer's map, the cache's own cost) and again
on the same cache (the explorer's own cost).  Goals: build ≤ 2 s and ≤ 0.5 GiB per layer of
32 heads × 2,048 tokens.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import statistics
import sys
import threading
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # captum's progress bar would garble the table

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import phi3lab
from phi3lab.paths import data_dir
from phi3lab.views.widgets import AttentionExplorer, AttributionView, ChatWidget, PatchExplorer
from phi3lab.views.widgets._base import MessageLog, state_bytes

REPEATS = 20
GIB = 2**30
BUILD_GOAL_S, MEMORY_GOAL_PER_LAYER = 2.0, 0.5 * GIB
QUESTION = "<|image_1|>\nWhat colour is the triangle?"
INITIAL_GOAL, SENT_GOAL, TIME_GOAL = 512 * 1024, 64 * 1024, 0.050


def kib(n: int) -> str:
    return f"{n / 1024:7.1f} KiB"


def interact(widget, changes: list[dict], once: bool = False) -> tuple[int, float]:
    """Apply browser-side changes in turn (cycling); the largest message and the median Python time."""
    log = MessageLog(widget)
    sizes, times = [], []
    for k in range(1 if once else REPEATS):
        log.clear()
        start = time.perf_counter()
        widget.set_state(changes[k % len(changes)])
        times.append(time.perf_counter() - start)
        sizes.append(log.bytes())
        if widget.error:
            raise RuntimeError(f"{type(widget).__name__}: {widget.error}")
    return max(sizes), statistics.median(times)


def report(name: str, build: float, widget, rows: list[tuple[str, int, float]], initial: int | None = None) -> bool:
    initial = state_bytes(widget) if initial is None else initial
    ok = initial <= INITIAL_GOAL
    print(f"{name:<18} initial state {kib(initial)}   built in {build * 1000:6.0f} ms")
    for what, sent, seconds in rows:
        mark = "" if sent <= SENT_GOAL and seconds <= TIME_GOAL else "   (over the goal)"
        ok &= not mark or what.endswith("(first)")
        print(f"  {what:<34} sent {kib(sent)}   Python {seconds * 1000:7.2f} ms{mark}")
    return ok


class PeakRSS:
    """Peak resident memory of this process above its level at entry (sampled every millisecond)."""

    def __enter__(self):
        import psutil

        gc.collect()
        try:  # hand freed memory back to the system, so the peak counts new memory, not reused pages
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
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


def wide_lab(tiny, layers: int = 2):
    """The tiny model's tokenizer and spec around a random Phi-3 of Phi-3-mini's width."""
    from transformers import Phi3Config, Phi3ForCausalLM

    small = tiny.model.config
    torch.manual_seed(0)
    config = Phi3Config(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=small.vocab_size,
        max_position_embeddings=4096,
        bos_token_id=small.bos_token_id,
        eos_token_id=small.eos_token_id,
        pad_token_id=small.pad_token_id,
    )
    return dataclasses.replace(tiny, model=Phi3ForCausalLM(config).eval())


def prompt_of(lab, tokens: int) -> str:
    """A user turn that renders to exactly ``tokens`` tokens (or one fewer)."""
    words = tokens
    while len(lab.tokens("word " * words)) > tokens:
        words -= max(1, (len(lab.tokens("word " * words)) - tokens) // 2)
    return "word " * words


def build(cache) -> tuple[float, int, AttentionExplorer]:
    with PeakRSS() as peak:
        start = time.perf_counter()
        explorer = AttentionExplorer(cache)
        seconds = time.perf_counter() - start
    return seconds, peak.extra, explorer


def scale() -> bool:
    """AttentionExplorer beside the tiny model and at Phi-3-mini's width; ratios to the goals."""
    torch.set_num_threads(2)
    tiny = phi3lab.load("tiny", verbose=False)
    rows = []
    for name, lab in (("tiny (4 layers × 4 heads)", tiny), ("Phi-3-mini width (2 × 32)", wide_lab(tiny))):
        text = prompt_of(lab, 2048)
        _, cache = lab.run_with_cache(text, sites=("pattern",), layers="all", positions="all")
        config = lab.model.config
        first = build(cache)[:2]  # the cache's maps are assembled on this first read
        again = build(cache)
        explorer = again[2]
        hover = interact(explorer, [{"row": r} for r in explorer.view.rows[:: max(1, len(explorer.view.rows) // 40)]])
        rows.append((name, cache.num_tokens, config, first, again[:2], hover, explorer))
        del cache
    print(f"\nAttentionExplorer over a {rows[0][1]}-token prompt, every row of every layer captured; 2 threads")
    print(
        f"{'':28}{'build':>9}{'× goal':>8}{'extra memory':>15}{'per layer':>11}{'× goal':>8}   first build (maps assembled)"
    )
    ok = True
    for name, _tokens, config, (t1, m1), (t2, m2), (sent, hover_s), explorer in rows:
        layers = config.num_hidden_layers
        per_layer = m2 / layers
        ratio_t, ratio_m = t2 / BUILD_GOAL_S, per_layer / MEMORY_GOAL_PER_LAYER
        ok &= ratio_t <= 1 and ratio_m <= 1
        print(
            f"{name:28}{t2:8.2f}s{ratio_t:7.2f}×{m2 / 2**20:11.0f} MiB{per_layer / 2**20:7.0f} MiB{ratio_m:7.2f}×"
            f"   {t1:.2f} s, +{m1 / 2**20:.0f} MiB ({m1 / layers / MEMORY_GOAL_PER_LAYER:.2f}× per layer)"
        )
        print(
            f"{'':28}initial state {kib(state_bytes(explorer))}, offline rows {len(explorer.offline['rows'])} of "
            f"{explorer.offline['rows_captured']}; hover another token: sent {kib(sent)}, Python {hover_s * 1000:.1f} ms"
        )
    wide, small = rows[1], rows[0]
    print(
        f"Phi-3-mini width / tiny: build ×{wide[4][0] / max(small[4][0], 1e-9):.1f}, "
        f"extra memory ×{wide[4][1] / max(small[4][1], 1):.1f}"
    )
    print("scale goals met" if ok else "a scale goal was missed (see above)")
    return ok


def main() -> None:
    if sys.argv[1:] == ["scale"]:
        scale()
        return
    torch.set_num_threads(2)
    vision = phi3lab.load("tiny-vision", verbose=False)
    vision.processor.image_processor.num_crops = 16
    picture = Image.open(data_dir() / "images" / "shapes.png").convert("RGB").resize((1344, 1344))
    _, cache = vision.generate_with_cache(QUESTION, [picture], max_new_tokens=8)
    config = vision.model.config
    print(
        f"{cache.prompt_tokens} prompt + {len(cache.answer_ids)} answer tokens, 1344×1344 picture, num_crops 16 "
        f"({cache.inputs.images[0].layout.grid[0]}×{cache.inputs.images[0].layout.grid[1]} crops), "
        f"{config.num_hidden_layers} layers × {config.num_attention_heads} heads, every row captured; "
        f"2 threads, median of {REPEATS}"
    )
    ok = True

    start = time.perf_counter()
    explorer = AttentionExplorer(cache)
    build = time.perf_counter() - start
    rows = explorer.view.rows
    ok &= report(
        "AttentionExplorer",
        build,
        explorer,
        [
            ("hover / click another token", *interact(explorer, [{"row": r} for r in rows])),
            ("aggregation mean ↔ max", *interact(explorer, [{"agg": "max"}, {"agg": "mean"}])),
            (
                "focus one head",
                *interact(explorer, [{"focus": [layer, head]} for layer in explorer.layers for head in explorer.heads]),
            ),
            ("rollout (first)", *interact(explorer, [{"agg": "rollout"}], once=True)),
            ("rollout, another token", *interact(explorer, [{"row": r} for r in rows])),
        ],
    )

    start = time.perf_counter()
    patches = PatchExplorer(cache)
    build = time.perf_counter() - start
    targets = range(len(patches.targets))
    ok &= report(
        "PatchExplorer",
        build,
        patches,
        [
            ("click another answer token", *interact(patches, [{"target": t} for t in targets])),
            ("one layer", *interact(patches, [{"layer": layer} for layer in patches.layers])),
            ("rollout (first)", *interact(patches, [{"layer": -1, "source": "rollout"}], once=True)),
            ("rollout, another answer token", *interact(patches, [{"target": t} for t in targets])),
        ],
    )

    from phi3lab.attribution import attribute

    attribution = attribute(vision, QUESTION, [picture], units=["messages", "crops"])
    start = time.perf_counter()
    view = AttributionView(attribution)
    build = time.perf_counter() - start
    ok &= report(
        "AttributionView",
        build,
        view,
        [
            ("another target token", *interact(view, [{"token": t} for t in range(-1, len(view.targets))])),
        ],
    )
    start = time.perf_counter()
    with_attr = PatchExplorer(cache, attribution=attribution)
    build = time.perf_counter() - start
    ok &= report(
        "PatchExplorer+attr",
        build,
        with_attr,
        [
            (
                "attribution, another answer token",
                *interact(with_attr, [{"source": "attribution", "target": t} for t in range(len(view.targets))]),
            ),
        ],
    )

    start = time.perf_counter()
    box = ChatWidget(vision, max_new_tokens=16)
    build, initial = time.perf_counter() - start, state_bytes(box)
    log = MessageLog(box)
    box.attach(picture)
    start = time.perf_counter()
    box._dispatch(box, {"type": "send", "text": "What colour is the triangle?"}, [])
    handled = time.perf_counter() - start
    box.wait()
    deltas = sum(1 for m in log.messages if m.get("method") == "custom")
    ok &= report(
        "ChatWidget",
        build,
        box,
        [
            (f"one turn with a picture, {deltas} pieces", log.bytes(), handled),
        ],
        initial,
    )
    print("goals met" if ok else "a goal was missed (see above)")
    del vision, cache, explorer, patches, with_attr, view, box
    scale()


if __name__ == "__main__":
    main()
