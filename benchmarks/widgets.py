"""What each widget sends to the browser, and the Python time of each interaction.

    python3 tasks.py bench benchmarks/widgets.py

The case is the issue's: a 16-crop Phi-3-vision prompt (a 1344 × 1344 picture at num_crops 16,
about 2,500 tokens) on the embedded vision model, captured with every query row, answered greedily.
For each widget: the bytes of its initial state as the browser first receives it (JSON), and for
each interaction the bytes of the messages it sends (recorded on its comm, as a kernel would send
them) and the Python time from the browser's change arriving to the reply being sent (median of
``REPEATS``).  Goals: initial state ≤ 512 KiB; an interaction ≤ 64 KiB and ≤ 50 ms of Python.
Rollout is computed once, for every row the widget can show, at its first request (listed apart).
"""

from __future__ import annotations

import statistics
import time

import torch
from PIL import Image

import phi3lab
from phi3lab.paths import data_dir
from phi3lab.views.widgets import AttentionExplorer, AttributionView, ChatWidget, PatchExplorer
from phi3lab.views.widgets._base import MessageLog, state_bytes

REPEATS = 20
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


def main() -> None:
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


if __name__ == "__main__":
    main()
