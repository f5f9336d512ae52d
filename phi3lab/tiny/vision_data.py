"""Synthetic pictures and questions for the embedded tiny vision model, drawn with PIL.

Three families, each picture returned with the regions that answer the question (so tests and
notebooks can check *where* the model looks):

* **shapes** — one or two coloured shapes in a 3×3 layout: "What colour is the triangle?",
  "Where is the red circle?";
* **bars** — a bar chart of four bars A–D: "Which bar is tallest?", "What is the value of B?";
* **words** — one of eight words written large: "What word is written?".

Pictures vary in size and aspect ratio, so the HD transform pads them differently.  The test
split draws new pictures (other seeds) with the same question phrasings.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from phi3lab.tiny.corpus import COLOURS, SHAPES

WORDS = ["apple", "river", "cloud", "tiger", "house", "robot", "lemon", "music"]  # written in the pictures

PLACES = {(0, 0): "top left", (0, 1): "top", (0, 2): "top right", (1, 0): "left", (1, 1): "centre",
          (1, 2): "right", (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right"}
RGB = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60), "yellow": (235, 200, 30),
       "purple": (140, 60, 190), "orange": (245, 130, 20)}
BARS = "ABCD"


@dataclasses.dataclass(frozen=True)
class VisionExample:
    """A picture, a question about it, the answer, and the boxes (x0, y0, x1, y1) that answer it."""

    family: str
    image: Image.Image
    question: str
    answer: str
    boxes: tuple[tuple[int, int, int, int], ...]


@lru_cache(maxsize=8)
def _font(size: int):
    return ImageFont.load_default(size=size)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
    else:  # star
        import math

        r_out, r_in = (x1 - x0) / 2, (x1 - x0) / 5
        pts = [(cx + (r_out if k % 2 == 0 else r_in) * math.sin(k * math.pi / 5),
                cy - (r_out if k % 2 == 0 else r_in) * math.cos(k * math.pi / 5)) for k in range(10)]
        draw.polygon(pts, fill=colour)


def shapes(rng: random.Random, split: str) -> VisionExample:
    w, h = rng.randint(280, 420), rng.randint(280, 420)
    image = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cells = rng.sample(sorted(PLACES), rng.choice([1, 2]))
    kinds = rng.sample(SHAPES, len(cells))
    colours = rng.sample(COLOURS, len(cells))
    boxes = []
    for (r, c), shape, colour in zip(cells, kinds, colours):
        cw, ch = w / 3, h / 3
        size = int(min(cw, ch) * rng.uniform(0.6, 0.8))
        x0 = int(c * cw + (cw - size) / 2 + rng.uniform(-4, 4))
        y0 = int(r * ch + (ch - size) / 2 + rng.uniform(-4, 4))
        box = (x0, y0, x0 + size, y0 + size)
        _draw_shape(draw, shape, box, RGB[colour])
        boxes.append(box)
    k = rng.randrange(len(cells))
    shape, colour, place, box = kinds[k], colours[k], PLACES[cells[k]], boxes[k]
    if rng.random() < 0.5:
        return VisionExample("shapes", image, f"What colour is the {shape}?", f"The {shape} is {colour}.", (box,))
    q = "Where is the {c} {s}?"
    return VisionExample("shapes", image, q.format(c=colour, s=shape), f"The {colour} {shape} is at the {place}.",
                         (box,))


def bars(rng: random.Random, split: str) -> VisionExample:
    w, h = rng.randint(300, 420), rng.randint(260, 360)
    image = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    values = [rng.randint(1, 6) for _ in BARS]
    if rng.random() < 0.5:  # a unique tallest bar for "which is tallest"
        values[rng.randrange(4)] = 7
    top, bottom, left = 20, h - 40, 30
    unit = (bottom - top) / 7
    slot = (w - left - 10) / 4
    draw.line([(left, top), (left, bottom), (w - 10, bottom)], fill=(0, 0, 0), width=2)
    boxes = []
    colour = RGB[rng.choice(COLOURS)]
    for i, (name, v) in enumerate(zip(BARS, values)):
        x0 = int(left + i * slot + slot * 0.2)
        x1 = int(left + (i + 1) * slot - slot * 0.2)
        y0 = int(bottom - v * unit)
        draw.rectangle((x0, y0, x1, bottom), fill=colour)
        draw.text(((x0 + x1) / 2, bottom + 6), name, fill=(0, 0, 0), font=_font(22), anchor="mt")
        boxes.append((x0, y0, x1, bottom))
    best = max(range(4), key=lambda i: values[i])
    if values.count(values[best]) == 1 and rng.random() < 0.5:
        return VisionExample("bars", image, "Which bar is tallest?", f"Bar {BARS[best]} is the tallest.", (boxes[best],))
    i = rng.randrange(4)
    return VisionExample("bars", image, f"What is the value of {BARS[i]}?", f"{BARS[i]} is {values[i]}.", (boxes[i],))


def words(rng: random.Random, split: str) -> VisionExample:
    w, h = rng.randint(300, 440), rng.randint(160, 320)
    image = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    word = rng.choice(WORDS)
    colour = (0, 0, 0) if rng.random() < 0.6 else RGB[rng.choice(COLOURS)]
    xy = (w / 2 + rng.uniform(-20, 20), h / 2 + rng.uniform(-20, 20))
    font = _font(rng.randint(44, 60))
    draw.text(xy, word, fill=colour, font=font, anchor="mm")
    box = tuple(int(v) for v in draw.textbbox(xy, word, font=font, anchor="mm"))
    return VisionExample("words", image, "What word is written?", f"The word is {word}.", (box,))


FAMILIES = {"shapes": shapes, "bars": bars, "words": words}


def examples(n: int, seed: int = 0, split: str = "train") -> Iterator[VisionExample]:
    """``n`` examples, families drawn evenly, reproducible from ``seed`` and ``split``."""
    rng = random.Random(f"vision-{split}-{seed}")
    names = sorted(FAMILIES)
    for i in range(n):
        yield FAMILIES[names[i % len(names)]](rng, split)


def messages(example: VisionExample, with_answer: bool = True) -> list[dict]:
    out = [{"role": "user", "content": f"<|image_1|>\n{example.question}"}]
    if with_answer:
        out.append({"role": "assistant", "content": example.answer})
    return out


def tokenizer_texts() -> Iterator[str]:
    for split in ("train", "test"):
        for ex in examples(300, 0, split):
            for text in (ex.question, ex.answer):
                yield text
                yield "\n" + text


def scene(seed: int = 7, size: tuple[int, int] = (640, 420)) -> Image.Image:
    """A photo-like landscape (sky gradient, hills, sun, house, tree, grain) for the notebooks."""
    import numpy as np

    rng = np.random.RandomState(seed)
    w, h = size
    y = np.linspace(0, 1, h)[:, None, None]
    sky = (1 - y) * np.array([110, 160, 230]) + y * np.array([200, 225, 250])
    image = Image.fromarray(np.broadcast_to(sky, (h, w, 3)).astype("uint8"))
    draw = ImageDraw.Draw(image)
    draw.ellipse((w * 0.75, h * 0.08, w * 0.75 + 70, h * 0.08 + 70), fill=(250, 215, 80))
    draw.polygon([(0, h * 0.62), (w * 0.3, h * 0.5), (w * 0.65, h * 0.6), (w, h * 0.52), (w, h), (0, h)],
                 fill=(70, 140, 70))
    hx, hy = int(w * 0.18), int(h * 0.48)
    draw.rectangle((hx, hy, hx + 110, hy + 90), fill=(190, 90, 60))
    draw.polygon([(hx - 10, hy), (hx + 55, hy - 55), (hx + 120, hy)], fill=(120, 50, 40))
    draw.rectangle((hx + 42, hy + 45, hx + 68, hy + 90), fill=(80, 50, 30))
    tx, ty = int(w * 0.6), int(h * 0.42)
    draw.rectangle((tx + 18, ty + 60, tx + 32, ty + 120), fill=(100, 70, 40))
    draw.ellipse((tx - 20, ty, tx + 70, ty + 80), fill=(40, 110, 50))
    grain = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=float) + grain, 0, 255).astype("uint8"))


def sample_images() -> dict[str, Image.Image]:
    """The pictures shipped in ``data/images`` (rebuilt exactly by this function)."""
    rng = random.Random("samples")
    chart = bars(rng, "train")
    while "tallest" not in chart.answer:
        chart = bars(rng, "train")
    shapes_example = shapes(random.Random("samples-shapes"), "train")
    word = words(random.Random("samples-words"), "train")
    return {"chart.png": chart.image, "shapes.png": shapes_example.image, "scene.jpg": scene(),
            "word.png": word.image}
