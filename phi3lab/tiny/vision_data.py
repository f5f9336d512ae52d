"""Synthetic pictures and questions for the embedded tiny vision model, drawn with PIL.

Three families, each picture returned with the regions that answer the question (so tests and
notebooks can check *where* the model looks):

* **shapes** — one or two coloured shapes in a 3×3 layout: "What colour is the triangle?",
  "Where is the red circle?";
* **bars** — a bar chart of four bars A–D: "Which bar is tallest?", "What is the value of B?";
* **words** — one of eight words written large: "What word is written?".

And a fourth, **reading**, for the reader (``phi3lab-tiny-vision-reader``, trained further from the
vision model): words written large in black on white — lists of words, and the key words of benign
requests — asked "What does the picture say?" (the words) and "Do what the picture says." (the answer
the text model gives to the request typed).  No harmful request is ever written (:func:`reading`).

Pictures vary in size and aspect ratio, so the HD transform pads them differently.  The test
split draws new pictures (other seeds) with the same question phrasings.

Each example also lists every other question its picture answers (``more``): training asks them
as one multi-turn conversation (:func:`conversation`), which gives the vision tower several answers
per picture.  And
each carries a **part map**: a label image of the picture's size whose pixel value says which part
(shape, bar, bar label, letter) is drawn there, with the parts' attributes (:data:`ATTRIBUTES`) —
the renderer's own ground truth, which training uses as dense per-patch targets.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from phi3lab.prompts import images
from phi3lab.prompts.images import text_lines, text_size  # noqa: F401  (re-exported for the training code)
from phi3lab.safety.image_probes import key_words
from phi3lab.tiny.corpus import COLOURS, SHAPES

WORDS = ["apple", "river", "cloud", "tiger", "house", "robot", "lemon", "music"]  # written in the pictures

PLACES = {
    (0, 0): "top left",
    (0, 1): "top",
    (0, 2): "top right",
    (1, 0): "left",
    (1, 1): "centre",
    (1, 2): "right",
    (2, 0): "bottom left",
    (2, 1): "bottom",
    (2, 2): "bottom right",
}
RGB = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "green": (40, 170, 60),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 20),
    "black": (0, 0, 0),
}  # black: words only
BARS = "ABCD"
LETTERS = "abcdefghijklmnopqrstuvwxyz"

#: What a part map says about each part; value ``k`` (1-based) names ``ATTRIBUTES[name][k - 1]``, 0 is "none".
ATTRIBUTES = {
    "colour": COLOURS + ["black"],
    "kind": SHAPES + ["bar", "letter"] + ["house", "tree", "sun"],
    "letter": list(LETTERS),
    "bar": list(BARS),
    "value": [str(v) for v in range(1, 8)],
    "place": list(PLACES.values()),
    "word": WORDS,
}


@dataclasses.dataclass(frozen=True)
class VisionExample:
    """A picture, a question about it, the answer, and the boxes (x0, y0, x1, y1) that answer it."""

    family: str
    image: Image.Image
    question: str
    answer: str
    boxes: tuple[tuple[int, int, int, int], ...]
    more: tuple[tuple[str, str], ...] = ()  # the picture's other (question, answer) pairs
    parts: Image.Image | None = dataclasses.field(default=None, compare=False, repr=False)  # "L": part id, 0 = none
    part_attributes: tuple[dict[str, int], ...] = ()  # part id k → part_attributes[k - 1]
    words: tuple[tuple[str, tuple[int, ...]], ...] = ()  # reading pictures: each written word and its part ids


class _Parts:
    """A label image drawn alongside a picture, and the attributes of each part drawn into it."""

    def __init__(self, size: tuple[int, int]):
        self.image = Image.new("L", size, 0)
        self.draw = ImageDraw.Draw(self.image)
        self.attributes: list[dict[str, int]] = []
        self.words: list[tuple[str, tuple[int, ...]]] = []  # text pictures: each word and its part ids

    def add(self, **attrs: str) -> int:
        self.attributes.append({k: ATTRIBUTES[k].index(v) + 1 for k, v in attrs.items()})
        return len(self.attributes)

    def letters(self, xy, text: str, font, anchor: str, **attrs: str) -> None:
        """One part per character of ``text``, where ``draw.text(xy, text, font=font, anchor=anchor)``
        puts it in the picture.  Each prefix of ``text`` is rendered anti-aliased, as the picture is
        (non-anti-aliased text is hinted and lands a few pixels off), longest first; a pixel at least
        half covered takes the id of the prefix's last character."""
        ids = [self.add(letter=ch.lower(), kind="letter", **attrs) for ch in text]
        drawn = self.draw.textbbox(xy, text, font=font, anchor=anchor)
        start = self.draw.textbbox((0, 0), text, font=font, anchor="l" + anchor[1])
        origin = (drawn[0] - start[0], xy[1])  # where the pen starts, so every prefix lines up with the text
        self._paint_prefixes(origin, text, ids, font, "l" + anchor[1])

    def _paint_prefixes(self, origin, text: str, ids: list[int], font, anchor: str) -> None:
        """Paint each prefix of ``text`` (pen at ``origin``), longest first, with the id of its last
        character: a pixel at least half covered by that character's ink keeps its id (0 paints none)."""
        for k in range(len(text), 0, -1):
            coverage = Image.new("L", self.image.size, 0)
            ImageDraw.Draw(coverage).text(origin, text[:k], fill=255, font=font, anchor=anchor)
            self.image.paste(ids[k - 1], mask=coverage.point(lambda v: 255 if v >= 128 else 0))

    def text(self, xy, text: str, font) -> list[tuple[str, tuple[int, ...]]]:
        """Letters a–z and digits of one line drawn at ``xy`` (anchor "la"), one part per character (kind
        "letter", black; digits without a ``letter`` attribute); spaces and punctuation get none.  Returns
        the line's words (split at spaces) with the part ids of their characters."""
        ids = []
        for ch in text:
            if ch.lower() in LETTERS:
                ids.append(self.add(letter=ch.lower(), kind="letter", colour="black"))
            elif ch.isdigit():
                ids.append(self.add(kind="letter", colour="black"))
            else:
                ids.append(0)
        self._paint_prefixes(xy, text, ids, font, "la")
        words, at = [], 0
        for word in text.split(" "):
            if word:
                words.append((word, tuple(i for i in ids[at : at + len(word)] if i)))
            at += len(word) + 1
        return words


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
        pts = [
            (
                cx + (r_out if k % 2 == 0 else r_in) * math.sin(k * math.pi / 5),
                cy - (r_out if k % 2 == 0 else r_in) * math.cos(k * math.pi / 5),
            )
            for k in range(10)
        ]
        draw.polygon(pts, fill=colour)


def shapes(rng: random.Random, split: str) -> VisionExample:
    w, h = rng.randint(280, 420), rng.randint(280, 420)
    image = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cells = rng.sample(sorted(PLACES), rng.choice([1, 2]))
    kinds = rng.sample(SHAPES, len(cells))
    colours = rng.sample(COLOURS, len(cells))
    boxes, parts = [], _Parts((w, h))
    for (r, c), shape, colour in zip(cells, kinds, colours):
        cw, ch = w / 3, h / 3
        size = int(min(cw, ch) * rng.uniform(0.6, 0.8))
        x0 = int(c * cw + (cw - size) / 2 + rng.uniform(-4, 4))
        y0 = int(r * ch + (ch - size) / 2 + rng.uniform(-4, 4))
        box = (x0, y0, x0 + size, y0 + size)
        _draw_shape(draw, shape, box, RGB[colour])
        _draw_shape(parts.draw, shape, box, parts.add(colour=colour, kind=shape, place=PLACES[(r, c)]))
        boxes.append(box)
    qas = [qa for s, c, cell in zip(kinds, colours, cells) for qa in _shape_questions(s, c, PLACES[cell])]
    k = rng.randrange(len(cells))
    (question, answer), box = qas[2 * k + (rng.random() >= 0.5)], boxes[k]
    in_order = [(c, s) for cell, s, c in sorted(zip(cells, kinds, colours))]
    qas.append((_describe_question(w, h), describe_shapes(in_order)))
    return VisionExample(
        "shapes", image, question, answer, (box,), _others(qas, question), parts.image, tuple(parts.attributes)
    )


def _shape_questions(shape: str, colour: str, place: str) -> list[tuple[str, str]]:
    return [
        (f"What colour is the {shape}?", f"The {shape} is {colour}."),
        (f"Where is the {colour} {shape}?", f"The {colour} {shape} is at the {place}."),
    ]


def _others(qas: list[tuple[str, str]], question: str) -> tuple[tuple[str, str], ...]:
    return tuple(qa for qa in qas if qa[0] != question)


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
    boxes, parts = [], _Parts((w, h))
    colour_name = rng.choice(COLOURS)
    colour = RGB[colour_name]
    for i, (name, v) in enumerate(zip(BARS, values)):
        x0 = int(left + i * slot + slot * 0.2)
        x1 = int(left + (i + 1) * slot - slot * 0.2)
        y0 = int(bottom - v * unit)
        draw.rectangle((x0, y0, x1, bottom), fill=colour)
        parts.draw.rectangle(
            (x0, y0, x1, bottom), fill=parts.add(colour=colour_name, kind="bar", bar=name, value=str(v))
        )
        draw.text(((x0 + x1) / 2, bottom + 6), name, fill=(0, 0, 0), font=_font(22), anchor="mt")
        parts.letters(((x0 + x1) / 2, bottom + 6), name, _font(22), "mt", colour="black", bar=name)
        boxes.append((x0, y0, x1, bottom))
    best = max(range(4), key=lambda i: values[i])
    unique = values.count(values[best]) == 1
    qas = [(f"What is the value of {name}?", f"{name} is {v}.") for name, v in zip(BARS, values)]
    qas += [("Which bar is tallest?", f"Bar {BARS[best]} is the tallest.")] if unique else []
    qas.append((_describe_question(w, h), "A bar chart of four bars, A to D."))
    maps = (parts.image, tuple(parts.attributes))
    if unique and rng.random() < 0.5:
        return VisionExample("bars", image, *qas[-2], (boxes[best],), _others(qas, qas[-2][0]), *maps)
    i = rng.randrange(4)
    return VisionExample("bars", image, *qas[i], (boxes[i],), _others(qas, qas[i][0]), *maps)


def words(rng: random.Random, split: str) -> VisionExample:
    w, h = rng.randint(300, 440), rng.randint(160, 320)
    image = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    word = rng.choice(WORDS)
    colour_name = "black" if rng.random() < 0.6 else rng.choice(COLOURS)
    xy = (w / 2 + rng.uniform(-20, 20), h / 2 + rng.uniform(-20, 20))
    font = _font(rng.randint(56, 72))
    draw.text(xy, word, fill=RGB[colour_name], font=font, anchor="mm")
    box = tuple(int(v) for v in draw.textbbox(xy, word, font=font, anchor="mm"))
    parts = _Parts((w, h))
    parts.letters(xy, word, font, "mm", colour=colour_name, word=word)
    describe = ((_describe_question(w, h), f"The word {word}."),)
    return VisionExample(
        "words",
        image,
        "What word is written?",
        f"The word is {word}.",
        (box,),
        describe,
        parts.image,
        tuple(parts.attributes),
    )


DESCRIBE = [
    "What is shown in this image?",
    "What is this?",
    "What is in the picture?",
    "Describe the picture.",
    "What do you see?",
]
BACKGROUNDS = [(255, 255, 255)] * 4 + [
    (235, 235, 235),
    (225, 235, 250),
    (250, 245, 220),
    (230, 245, 230),
    (250, 230, 235),
    (70, 70, 80),
]  # mostly white, light tints, a dark grey


def _listing(items: list[str]) -> str:
    """``["a red circle", "a blue star", "a green square"]`` → ``"a red circle, a blue star and a green square"``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def describe_shapes(shapes_in_order: list[tuple[str, str]]) -> str:
    """The answer to "What is shown in this image?" for shapes ``(colour, kind)`` in reading order."""
    text = _listing([f"a {colour} {kind}" for colour, kind in shapes_in_order]) + "."
    return text[0].upper() + text[1:]


def _describe_question(w: int, h: int) -> str:
    """One of :data:`DESCRIBE`, picked from the picture's size (so the older families draw no random number)."""
    return DESCRIBE[(w + 2 * h) % len(DESCRIBE)]


def picture_size(
    rng: random.Random, aspects: tuple[float, float] = (1 / 3, 3), sides: tuple[int, int] = (200, 1600)
) -> tuple[int, int]:
    """A size whose longer side is in ``sides`` and whose aspect ratio (width / height) is in ``aspects``,
    the ratio drawn evenly on a log scale (1:3, 1:1 and 3:1 equally likely to be crossed)."""
    import math

    aspect = math.exp(rng.uniform(math.log(aspects[0]), math.log(aspects[1])))
    side = rng.randint(*sides)
    return (side, max(1, round(side / aspect))) if aspect >= 1 else (max(1, round(side * aspect)), side)


def layouts(rng: random.Random, split: str) -> VisionExample:
    """One to four shapes (different kinds and colours) anywhere on a picture of any size from 200 to
    1,600 pixels and any aspect ratio from 1:3 to 3:1, on a white, tinted or dark background.

    Each shape lies inside one cell of the picture's 3×3 grid (so "Where is the red circle?" has one
    answer), at any size from 55% to 90% of the cell's shorter side; on pictures wider than 2:1 the
    shapes sit in the middle row (left, centre, right: a row's cells are too flat for a legible shape)
    and on pictures taller than 1:2 in the middle column.  The questions: each shape's colour and place,
    the colour of one shape that is not there ("There is no star."), and what the picture shows (the
    shapes in reading order, :func:`describe_shapes`).  The first question is a colour (35%), a place
    (25%), the description (25%) or an absent shape (15%)."""
    w, h = picture_size(rng)
    background = rng.choice(BACKGROUNDS)
    image = Image.new("RGB", (w, h), background)
    draw = ImageDraw.Draw(image)
    if w >= 2 * h:
        free = [(1, 0), (1, 1), (1, 2)]
    elif h >= 2 * w:
        free = [(0, 1), (1, 1), (2, 1)]
    else:
        free = sorted(PLACES)
    cells = rng.sample(free, rng.randint(1, min(4, len(free))))
    kinds = rng.sample(SHAPES, len(cells))
    colours = rng.sample(COLOURS, len(cells))
    parts = _Parts((w, h))
    cw, ch = w / 3, h / 3
    boxes, qas = [], []
    for (r, c), shape, colour in zip(cells, kinds, colours):
        size = int(min(cw, ch) * rng.uniform(0.55, 0.9))
        x0 = int(c * cw + rng.uniform(0, cw - size))
        y0 = int(r * ch + rng.uniform(0, ch - size))
        box = (x0, y0, x0 + size, y0 + size)
        _draw_shape(draw, shape, box, RGB[colour])
        _draw_shape(parts.draw, shape, box, parts.add(colour=colour, kind=shape, place=PLACES[(r, c)]))
        boxes.append(box)
        qas.append(_shape_questions(shape, colour, PLACES[(r, c)]))
    absent = [k for k in SHAPES if k not in kinds]
    missing = rng.choice(absent) if absent else None
    in_order = [(c, k) for cell, k, c in sorted(zip(cells, kinds, colours))]
    describe = (rng.choice(DESCRIBE), describe_shapes(in_order))
    roll = rng.random()
    k = rng.randrange(len(cells))
    if roll < 0.25:
        first, box = describe, None
    elif roll < 0.4 and missing:
        first, box = (f"What colour is the {missing}?", f"There is no {missing}."), None
    elif roll < 0.65:
        first, box = qas[k][1], boxes[k]
    else:
        first, box = qas[k][0], boxes[k]
    everything = [qa for pair in qas for qa in pair] + [describe]
    everything += [(f"What colour is the {missing}?", f"There is no {missing}.")] if missing else []
    return VisionExample(
        "layouts",
        image,
        *first,
        tuple(boxes) if box is None else (box,),
        _others(everything, first[0]),
        parts.image,
        tuple(parts.attributes),
    )


SCENE_THINGS = ("house", "tree", "sun")


def describe_scene(things: list[str]) -> str:
    """``["house", "sun"]`` → ``"A landscape with a house and the sun."``"""
    return "A landscape with " + _listing([("the " if t == "sun" else "a ") + t for t in things]) + "."


def scenes(rng: random.Random, split: str) -> VisionExample:
    """A photo-like landscape in the manner of :func:`scene` (sky, hills, grain) with some of a house, a
    tree and the sun, of any size from 200 to 1,600 pixels and aspect ratio from 3:4 to 3:1, asked what it
    shows ("A landscape with a house, a tree and the sun.")."""
    import numpy as np

    w, h = picture_size(rng, aspects=(3 / 4, 3))
    things = [t for t in SCENE_THINGS if rng.random() < 0.6] or [rng.choice(SCENE_THINGS)]
    top = np.array([rng.randint(80, 140), rng.randint(130, 190), rng.randint(200, 250)])
    bottom = np.array([rng.randint(180, 220), rng.randint(205, 240), rng.randint(235, 255)])
    y = np.linspace(0, 1, h)[:, None, None]
    image = Image.fromarray(np.broadcast_to((1 - y) * top + y * bottom, (h, w, 3)).astype("uint8"))
    draw, parts = ImageDraw.Draw(image), _Parts((w, h))
    unit = min(w, h / 0.66) / 640  # the scene's 640 × 420 layout, scaled to fit
    ground = h * rng.uniform(0.5, 0.62)
    ridge = [(0, ground + h * rng.uniform(-0.06, 0.06))]
    ridge += [(w * x, ground + h * rng.uniform(-0.1, 0.06)) for x in (0.3, 0.65)] + [
        (w, ground + h * rng.uniform(-0.08, 0.04))
    ]
    green = (rng.randint(50, 90), rng.randint(120, 160), rng.randint(50, 90))
    draw.polygon(ridge + [(w, h), (0, h)], fill=green)
    if "sun" in things:
        r = 35 * unit * rng.uniform(0.8, 1.3)
        cx, cy = w * rng.uniform(0.55, 0.92), h * rng.uniform(0.08, 0.25)
        box = (cx - r, cy - r, cx + r, cy + r)
        draw.ellipse(box, fill=(250, rng.randint(200, 225), rng.randint(60, 100)))
        parts.draw.ellipse(box, fill=parts.add(kind="sun"))
    slots = [0.08, 0.5] if rng.random() < 0.5 else [0.5, 0.08]  # the house and the tree apart
    if "house" in things:
        s = unit * rng.uniform(0.8, 1.25)
        hx, hy = w * (slots[0] + rng.uniform(0, 0.25)), ground - 15 * s
        body, roof = (
            (hx, hy, hx + 110 * s, hy + 90 * s),
            [(hx - 10 * s, hy), (hx + 55 * s, hy - 55 * s), (hx + 120 * s, hy)],
        )
        door = (hx + 42 * s, hy + 45 * s, hx + 68 * s, hy + 90 * s)
        draw.rectangle(body, fill=(rng.randint(170, 210), rng.randint(80, 110), rng.randint(50, 80)))
        draw.polygon(roof, fill=(rng.randint(100, 140), rng.randint(40, 60), rng.randint(30, 50)))
        draw.rectangle(door, fill=(80, 50, 30))
        house = parts.add(kind="house")
        parts.draw.rectangle(body, fill=house)
        parts.draw.polygon(roof, fill=house)
    if "tree" in things:
        s = unit * rng.uniform(0.8, 1.3)
        tx, ty = w * (slots[1] + rng.uniform(0, 0.3)), ground - 40 * s
        trunk, crown = (tx + 38 * s, ty + 60 * s, tx + 52 * s, ty + 120 * s), (tx, ty, tx + 90 * s, ty + 80 * s)
        draw.rectangle(trunk, fill=(100, 70, 40))
        draw.ellipse(crown, fill=(rng.randint(30, 50), rng.randint(95, 125), rng.randint(40, 60)))
        tree = parts.add(kind="tree")
        parts.draw.rectangle(trunk, fill=tree)
        parts.draw.ellipse(crown, fill=tree)
    grain = np.random.default_rng(rng.randrange(2**31)).standard_normal((h, w, 1), dtype=np.float32)
    pixels = np.asarray(image, dtype=np.float32) + grain * np.float32(rng.uniform(0, 8))  # grey grain, like a photo's
    image = Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8))
    box = parts.image.getbbox() or (0, 0, w, h)
    return VisionExample(
        "scenes", image, rng.choice(DESCRIBE), describe_scene(things), (box,), (), parts.image, tuple(parts.attributes)
    )


READ = "What does the picture say?"
FOLLOW = "Do what the picture says."  # the text turn of phi3lab.safety.image_probes


def text_picture(
    text: str, *, width: int = 448, font_size: int = 58, margin: int = 24, parts: _Parts | None = None
) -> Image.Image:
    """:func:`phi3lab.prompts.images.text_picture` (the pictures the image-borne probes draw); with
    ``parts``, every letter and digit is also drawn into that part map (:meth:`_Parts.text`) (its
    ``_Parts`` must be of the picture's size: see :func:`text_size`)."""

    def mark(xy, line, font):
        parts.words += parts.text(xy, line, font)

    return images.text_picture(
        text, width=width, font_size=font_size, margin=margin, on_line=None if parts is None else mark
    )


@lru_cache(maxsize=1)
def reading_vocabulary() -> tuple[str, ...]:
    """The words reading pictures list: the key words of every task of the safety slice (harmful and
    benign, as single words), the instruction words, colours and shapes of the text model's corpus."""
    from phi3lab.tiny import corpus

    tasks = [t for harmful, benign in corpus.UNSAFE.values() for t in harmful + benign]
    words = {w for t in tasks for w in key_words(t, 99).split()} | set(corpus.WORDS) | set(COLOURS) | set(SHAPES)
    return tuple(sorted(words))


@lru_cache(maxsize=1)
def _harmful_keys() -> tuple[frozenset, ...]:
    from phi3lab.tiny import corpus

    return tuple(frozenset(key_words(t, 99).split()) for tasks, _ in corpus.UNSAFE.values() for t in tasks)


def _word_list(rng: random.Random) -> str:
    """2–4 words of :func:`reading_vocabulary` in random order, never two key words of one harmful task
    (so no list spells out a harmful request, even in part)."""
    vocabulary = reading_vocabulary()
    while True:
        picked = rng.sample(vocabulary, rng.randint(2, 4))
        if not any(len(key & set(picked)) >= 2 for key in _harmful_keys()):
            return " ".join(picked)


def reading(rng: random.Random, split: str) -> VisionExample:
    """Words written large in a picture (:func:`text_picture`, 52–64 px, width and margin varied).

    Half the pictures list 2–4 words (:func:`_word_list`), asked :data:`READ` ("What does the picture
    say?") → the words.  The other half write the key words of a benign twin of the safety slice
    (:func:`~phi3lab.safety.image_probes.key_words`: "fix lock own door"), asked :data:`FOLLOW` ("Do what the picture says.") → the
    text model's trained answer to the request, and :data:`READ` → the key words, in either order.  No
    harmful request, nor its key words, is ever written."""
    from phi3lab.tiny import corpus

    if rng.random() < 0.5:
        text = _word_list(rng)
        qas = [(READ, text)]
    else:
        category = rng.choice(sorted(corpus.UNSAFE))
        task = rng.choice(corpus.UNSAFE[category][1])  # [1]: the benign twins
        text = key_words(task)
        qas = [(FOLLOW, f"Sure! To {task}, plan it, gather what you need, and go step by step."), (READ, text)]
        if rng.random() < 0.5:
            qas.reverse()
    width, font_size, margin = rng.randint(400, 480), rng.randint(52, 64), rng.randint(16, 32)
    parts = _Parts(text_size(text, width=width, font_size=font_size, margin=margin))
    image = text_picture(text, width=width, font_size=font_size, margin=margin, parts=parts)
    box = parts.image.getbbox() or (0, 0, *image.size)
    return VisionExample(
        "reading", image, *qas[0], (box,), tuple(qas[1:]), parts.image, tuple(parts.attributes), tuple(parts.words)
    )


FAMILIES = {"shapes": shapes, "bars": bars, "words": words}
NEW_FAMILIES = {"layouts": layouts, "scenes": scenes}  # issue 23: any size, ratio, background; what is shown


def examples(n: int, seed: int = 0, split: str = "train") -> Iterator[VisionExample]:
    """``n`` examples, families drawn evenly, reproducible from ``seed`` and ``split``."""
    rng = random.Random(f"vision-{split}-{seed}")
    names = sorted(FAMILIES)
    for i in range(n):
        yield FAMILIES[names[i % len(names)]](rng, split)


def new_examples(n: int, seed: int = 0, split: str = "test") -> Iterator[VisionExample]:
    """``n`` examples of the new kinds (:data:`NEW_FAMILIES`: three layouts of shapes for every scene),
    reproducible from ``seed`` and ``split``."""
    rng = random.Random(f"vision-new-{split}-{seed}")
    schedule = ["layouts", "layouts", "scenes", "layouts"]
    for i in range(n):
        yield NEW_FAMILIES[schedule[i % len(schedule)]](rng, split)


def question_kind(example: VisionExample, question: str | None = None, answer: str | None = None) -> str:
    """``"bars: tallest"``, ``"bars: value"``, ``"shapes: colour"``, ``"shapes: where"``, ``"words: word"``,
    ``"layouts: absent"`` (the colour of a shape that is not there), ``"...: describe"``, ``"reading: read"``
    or ``"reading: follow"`` — of the example's question, or of another of its ``(question, answer)``."""
    question, answer = (example.question, example.answer) if question is None else (question, answer)
    if question in DESCRIBE:
        return f"{example.family}: describe"
    if answer.startswith("There is no"):
        return f"{example.family}: absent"
    kind = {
        "Which": "tallest",
        "What is": "value",
        "What colour": "colour",
        "Where": "where",
        "What word": "word",
        READ: "read",
        FOLLOW: "follow",
    }
    return f"{example.family}: " + next(v for k, v in kind.items() if question.startswith(k))


def question_parts(example: VisionExample, question: str) -> list[int]:
    """The ids of the parts (in ``example.parts``) that ``question`` asks about: the named shape, the
    named bar, every bar for "tallest", every letter for the word."""

    def having(**wanted: str) -> list[int]:
        codes = {k: ATTRIBUTES[k].index(v) + 1 for k, v in wanted.items()}
        return [
            i
            for i, attrs in enumerate(example.part_attributes, start=1)
            if all(attrs.get(k) == v for k, v in codes.items())
        ]

    if question in DESCRIBE:
        return list(range(1, len(example.part_attributes) + 1))
    if question.startswith("What word") or question in (READ, FOLLOW):
        return having(kind="letter")
    if question.startswith("Which bar"):
        return having(kind="bar")
    if question.startswith("What is the value of "):
        return having(kind="bar", bar=question.removeprefix("What is the value of ").rstrip("?"))
    return having(kind=question.rstrip("?").split()[-1])  # "... the triangle?", "... the red circle?"


def messages(example: VisionExample, with_answer: bool = True) -> list[dict]:
    out = [{"role": "user", "content": f"<|image_1|>\n{example.question}"}]
    if with_answer:
        out.append({"role": "assistant", "content": example.answer})
    return out


def conversation(example: VisionExample, rng: random.Random, describe_first: float = 0.0) -> list[dict]:
    """The example's question first (or, with probability ``describe_first``, "What is shown in this
    image?" and its kin, when the picture has that question), then the picture's other questions in a
    shuffled order, each answered: one multi-turn conversation for training.

    No question is asked after the conversation has given its answer away: "Where is the red
    circle?" names the circle's colour, so colour questions come before place questions, and the
    circle's colour question is left out when the first question already named it; a description
    names every shape's colour (and whether a star is there) and the written word, so after one no
    colour or word question is asked, and it is not asked after them (a chart's description gives
    nothing away)."""
    qas = [(example.question, example.answer), *example.more]
    described = [qa for qa in qas if qa[0] in DESCRIBE]
    first = qas[0]
    if described and first not in described and describe_first and rng.random() < describe_first:
        first = described[0]
    more = [qa for qa in qas if qa != first]
    rng.shuffle(more)
    more.sort(key=lambda qa: 2 if qa[0] in DESCRIBE else not qa[0].startswith("What colour"))  # stable: colours first
    said = [first]
    for question, answer in more:
        if not _given_away(question, answer, said):
            said.append((question, answer))
    out = []
    for k, (question, answer) in enumerate(said):
        out += [
            {"role": "user", "content": f"<|image_1|>\n{question}" if k == 0 else question},
            {"role": "assistant", "content": answer},
        ]
    return out


def _given_away(question: str, answer: str, said: list[tuple[str, str]]) -> bool:
    """Whether the conversation so far (``said``) gives ``answer`` away (see :func:`conversation`)."""
    asked = [q for q, _ in said]
    if question in DESCRIBE:
        return any(q.startswith(("What colour", "Where", "What word")) for q in asked)
    if question.startswith(("What colour", "What word")) and any(q in DESCRIBE for q in asked):
        return True
    if question.startswith("What colour") and not answer.startswith("There is no"):
        shape, colour = answer.removeprefix("The ").rstrip(".").split(" is ")  # "The circle is red."
        return any(q == f"Where is the {colour} {shape}?" for q in asked)
    return False


TRAINING_SCHEDULE = ("bars", "shapes", "words", "layouts", "words", "layouts", "shapes", "layouts", "scenes", "layouts")


def training_examples(n: int, seed: int = 0) -> Iterator[VisionExample]:
    """``n`` training examples in a fixed family schedule (:data:`TRAINING_SCHEDULE`): layouts of one to
    four shapes (the hardest, with up to nine questions a picture) four times in ten, shapes in the 3×3
    layout and written words twice, charts and landscapes once."""
    rng = random.Random(f"vision-train-{seed}")
    families = FAMILIES | NEW_FAMILIES
    for i in range(n):
        yield families[TRAINING_SCHEDULE[i % len(TRAINING_SCHEDULE)]](rng, "train")


def reading_examples(n: int, seed: int = 0, split: str = "train") -> Iterator[VisionExample]:
    """``n`` :func:`reading` examples, reproducible from ``seed`` and ``split`` (the test split uses the
    corpus's held-out phrasings and other pictures)."""
    rng = random.Random(f"reading-{split}-{seed}")
    for _ in range(n):
        yield reading(rng, split)


def reader_training_examples(n: int, seed: int = 0) -> Iterator[VisionExample]:
    """The reader's pictures: reading half the time, and the vision model's families replayed so it
    keeps them (reading, layouts, reading, shapes, reading, words, reading, bars, reading, layouts,
    reading, scenes)."""
    rng = random.Random(f"reader-train-{seed}")
    schedule = [
        "reading",
        "layouts",
        "reading",
        "shapes",
        "reading",
        "words",
        "reading",
        "bars",
        "reading",
        "layouts",
        "reading",
        "scenes",
    ]
    families = FAMILIES | NEW_FAMILIES | {"reading": reading}
    for i in range(n):
        yield families[schedule[i % len(schedule)]](rng, "train")


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
    draw.polygon(
        [(0, h * 0.62), (w * 0.3, h * 0.5), (w * 0.65, h * 0.6), (w, h * 0.52), (w, h), (0, h)], fill=(70, 140, 70)
    )
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
    """Sample pictures in the style of those shipped in ``data/images``.

    ``chart.png`` and ``scene.jpg`` are rebuilt exactly; the shipped ``shapes.png`` (three shapes)
    and ``word.png`` were drawn by an earlier version of the generators and are kept as they are,
    so the notebooks' pictures stay put while the training data evolves."""
    rng = random.Random("samples")
    chart = bars(rng, "train")
    while "tallest" not in chart.answer:
        chart = bars(rng, "train")
    shapes_example = shapes(random.Random("samples-shapes"), "train")
    word = words(random.Random("samples-words"), "train")
    return {"chart.png": chart.image, "shapes.png": shapes_example.image, "scene.jpg": scene(), "word.png": word.image}
