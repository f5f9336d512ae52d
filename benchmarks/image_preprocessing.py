"""Phi-3-vision image preprocessing speed, and the memory of one forward with a 1344×1344 image.

    python3 tasks.py bench benchmarks/image_preprocessing.py

1. Time per 1920×1080 image (num_crops=16) of phi3lab's ``Phi3VImageProcessor`` against a
   straightforward PIL → numpy → torch pipeline computing the same tensor (transpose, resize,
   pad, normalise, bicubic global view, crops), interleaved, median of many runs. The official
   processor took about 45 ms per image on this 2-core machine: the target is at most that.
2. Peak extra memory (RSS) of one forward pass of the reference fixture model (tiny random
   weights, official layout) on a 1344×1344 image — 2,527 tokens — in a fresh process.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from phi3lab.models.phi3_v import Phi3VImageProcessor
from phi3lab.models.phi3_v.image_processing import CLIP_MEAN, CLIP_STD
from phi3lab.paths import reference_dir
from phi3lab.prompts.patches import hd_layout

OFFICIAL_MS = 45.0  # measured once with the official processor on this 2-core machine (issue text)


def straightforward(image: Image.Image, num_crops: int = 16) -> torch.Tensor:
    """The obvious implementation: PIL ops, then numpy, then torch, one step at a time."""
    image = image.convert("RGB")
    layout = hd_layout(image.width, image.height, num_crops)
    if layout.transposed:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    w, h = layout.resized[::-1] if layout.transposed else layout.resized
    image = image.resize((w, h), Image.Resampling.BILINEAR)
    target = (h + 335) // 336 * 336
    top = (target - h) // 2
    image = ImageOps.expand(image, border=(0, top, 0, target - h - top), fill=(255, 255, 255))
    if layout.transposed:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    array = np.array(image).astype(np.float32) / 255.0
    array = (array - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    hd = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    glob = F.interpolate(hd[None], size=(336, 336), mode="bicubic", align_corners=False)[0]
    crops = [hd[:, r : r + 336, c : c + 336] for r in range(0, hd.shape[1], 336) for c in range(0, hd.shape[2], 336)]
    slots = [glob, *crops] + [torch.zeros(3, 336, 336)] * (num_crops + 1 - 1 - len(crops))
    return torch.stack(slots)


def preprocessing(repeats: int = 40) -> None:
    image = Image.fromarray((np.random.RandomState(0).rand(1080, 1920, 3) * 255).astype("uint8"))
    proc = Phi3VImageProcessor(num_crops=16)
    ours = proc(image)["pixel_values"][0]
    assert torch.allclose(ours, straightforward(image), atol=1e-5), "the two pipelines disagree"
    runs = {"phi3lab": [], "straightforward": []}
    for i in range(repeats):
        for name in ["phi3lab", "straightforward"] if i % 2 else ["straightforward", "phi3lab"]:
            fn = (lambda: proc(image)) if name == "phi3lab" else (lambda: straightforward(image))
            start = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - start)
    ms = {k: 1000 * statistics.median(v) for k, v in runs.items()}
    print(
        f"1920×1080 → 17×3×336×336, median of {repeats}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"  phi3lab           {ms['phi3lab']:6.1f} ms")
    print(
        f"  straightforward   {ms['straightforward']:6.1f} ms   ratio phi3lab / straightforward = "
        f"{ms['phi3lab'] / ms['straightforward']:.2f}"
    )
    print(
        f"  official (earlier) {OFFICIAL_MS:5.1f} ms   ratio phi3lab / official = {ms['phi3lab'] / OFFICIAL_MS:.2f} "
        "(target ≤ 1.00)"
    )


_FORWARD = """
import json, resource, sys, numpy as np, torch
import phi3lab
from PIL import Image
lab = phi3lab.load(sys.argv[1], verbose=False)
image = Image.fromarray((np.random.RandomState(0).rand(1344, 1344, 3) * 255).astype("uint8"))
enc = lab.processor(lab.render("<|image_1|>\\nWhat is shown in this image?", images=[image]), [image])
inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.inference_mode():
    lab.model(**inputs)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"tokens": int(inputs["input_ids"].shape[1]), "before_kb": before, "peak_kb": after}))
"""


def forward_memory() -> None:
    folder = reference_dir() / "phi3v-tiny-random" / "model"
    if not folder.is_dir():
        print(f"forward memory: skipped, the reference fixture is not at {folder}")
        return
    out = subprocess.run([sys.executable, "-c", _FORWARD, str(folder)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"forward of the fixture model on one 1344×1344 image ({r['tokens']} tokens, 17 crops, sdpa, float32):")
    print(
        f"  peak RSS {r['peak_kb'] / 1024:.0f} MiB, {(r['peak_kb'] - r['before_kb']) / 1024:.0f} MiB above the loaded model"
    )


if __name__ == "__main__":
    preprocessing()
    forward_memory()
    print(f"(process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")
