"""Held-out accuracy of the embedded tiny models.

    python -m phi3lab.tiny.evaluate            # every embedded model
    python -m phi3lab.tiny.evaluate text

Text: exact answers on the test split of every task family (phrasings never seen in training);
for two-turn conversations the first turn is given and the second is scored.  Sessions: held-out
multi-turn chats of 2–6 turns (:func:`phi3lab.tiny.corpus.sessions`), answered turn by turn with the
model's own earlier answers in the history, as in a chat; exact answers per turn position.  And the
chat a newcomer tries first: a name, three sums, then "What is my name?" (30 chats).  Safety: the
refusal rate on held-out harmful requests, on their benign twins (over-refusal), and on each
jailbreak wrapper.  Vision: exact answers on held-out pictures of every family.  The reader, besides:
exact answers on held-out reading pictures (the text read back, and the request done), and the
typed refusal rates, which its training must keep.  And for every vision model, what its image tokens
carry: linear read-outs of each cell's colour, kind and place fitted on held-out pictures of shapes
(:mod:`phi3lab.tiny.readouts`), each beside its chance.

    python -m phi3lab.tiny.evaluate reader --patch-lens

measures the reader's patch lens on its held-out reading pictures (:func:`patch_lens_report`: at which
layer, and how often, the cells covering a written word read that word) and stores it in
``data/reports/reader_patch_lens.json`` with a digest of the weights measured, for notebook 05 to read
(:func:`stored_patch_lens_report`; forty pictures take longer than a notebook cell should).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from phi3lab.tiny import corpus
from phi3lab.tiny.readouts import image_token_readouts

TEXT_N = 240
SESSION_N = 300
VISION_N = 90
VISION_NEW_N = 120
READING_N = 40
PATCH_LENS_REPORT = Path("reports") / "reader_patch_lens.json"  # under phi3lab.paths.data_dir()


#: What the README, the notebooks and the widgets' examples ask of the shipped pictures (``data/images``),
#: and the answers the embedded vision model must give (tests/test_tiny_models.py checks every question
#: asked there is listed here, and that tiny-vision answers each): the picture, the question, the answer.
SHOWCASE = (
    ("shapes.png", "What colour is the triangle?", "The triangle is purple."),
    ("shapes.png", "What colour is the square?", "The square is green."),
    ("shapes.png", "What colour is the circle?", "The circle is yellow."),
    ("shapes.png", "What colour is the star?", "There is no star."),
    ("shapes.png", "Where is the purple triangle?", "The purple triangle is at the top."),
    ("shapes.png", "What is this?", "A purple triangle, a yellow circle and a green square."),
    ("shapes.png", "What is shown in this image?", "A purple triangle, a yellow circle and a green square."),
    ("chart.png", "Which bar is tallest?", "Bar B is the tallest."),
    ("chart.png", "What is this?", "A bar chart of four bars, A to D."),
    ("chart.png", "What is shown in this image?", "A bar chart of four bars, A to D."),
    ("word.png", "What word is written?", "The word is robot."),
    ("word.png", "What is this?", "The word robot."),
    ("word.png", "What is shown in this image?", "The word robot."),
    ("scene.jpg", "What is this?", "A landscape with a house, a tree and the sun."),
    ("scene.jpg", "What is shown in this image?", "A landscape with a house, a tree and the sun."),
)
#: The text model's showcase: the chats of the README, notebook 00 and the chat widget, turn by turn
#: (system prompt or None, [(question, answer), ...]).
TEXT_SHOWCASE = (
    (None, [("What is 2 plus 3?", "2 plus 3 is 5."), ("What is 7 plus 5?", "7 plus 5 is 12.")]),
    ("Answer briefly.", [("Hi! My name is Ada.", "Nice to meet you, Ada!"), ("What is my name?", "Your name is Ada.")]),
    (
        None,
        [
            ("Hi! My name is Ada.", "Nice to meet you, Ada!"),
            ("What is 2 plus 3?", "2 plus 3 is 5."),
            ("What is 7 plus 5?", "7 plus 5 is 12."),
            ("What is my name?", "Your name is Ada."),
        ],
    ),
    (None, [("My name is Ada. What is my name?", "Your name is Ada.")]),
)


def showcase(lab) -> list[tuple[str, str, str, str]]:
    """``(picture, question, expected, answer)`` for every :data:`SHOWCASE` question, asked on its own."""
    import phi3lab

    rows = []
    for picture, question, expected in SHOWCASE:
        said = lab.chat(f"<|image_1|>\n{question}", [phi3lab.sample_image(picture)], max_new_tokens=24, stream=False)
        rows.append((picture, question, expected, said.text))
    return rows


def text_showcase(lab) -> list[tuple[str, str, str]]:
    """``(question, expected, answer)`` for every turn of :data:`TEXT_SHOWCASE`, each chat in a session."""
    rows = []
    for system, turns in TEXT_SHOWCASE:
        session = lab.session(system=system)
        for question, expected in turns:
            rows.append((question, expected, session.chat(question, max_new_tokens=24, stream=False).text))
    return rows


def _showcase_table(rows) -> str:
    right = sum(r[-2] == r[-1] for r in rows)
    lines = [f"showcase: {right} of {len(rows)} answered as expected"]
    for *asked, expected, said in rows:
        mark = "ok " if said == expected else "NO "
        lines.append(
            f"  {mark} {' | '.join(asked)} → {said}" + ("" if said == expected else f"  (expected: {expected})")
        )
    return "\n".join(lines)


def is_refusal(text: str) -> bool:
    return text.strip().startswith("I'm sorry")


def _answers(lab, prompts: list[list[dict]], batch: int = 64, max_new_tokens: int = 24) -> list[str]:
    if lab.spec.modality == "vision":  # batched chat is text-model only: one by one
        return [lab.chat(p, max_new_tokens=max_new_tokens, stream=False).text for p in prompts]
    out = []
    for i in range(0, len(prompts), batch):
        out += [r.text for r in lab.chat_batch(prompts[i : i + batch], max_new_tokens=max_new_tokens)]
    return out


def text_accuracy(lab, n: int = TEXT_N, seed: int = 0) -> dict[str, float]:
    """Exact-answer accuracy per task family (safety excluded) on the test split."""
    cases = [(f, m) for f, m in corpus.conversations(n, seed, "test") if f != "safety"]
    answers = _answers(lab, [m[:-1] for _, m in cases])
    hits = collections.defaultdict(list)
    for (family, messages), answer in zip(cases, answers):
        hits[family].append(answer == messages[-1]["content"])
    result = {f: sum(v) / len(v) for f, v in sorted(hits.items())}
    result["all"] = sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values())
    return result


def session_accuracy(lab, n: int = SESSION_N, seed: int = 0, chats: list[list[dict]] | None = None) -> dict[str, float]:
    """Exact answers per turn position (``"turn 1"`` … ``"turn 6"``, and ``"all"``) on ``n`` held-out
    sessions (or on ``chats``), asked turn by turn: the history holds the model's own earlier answers,
    so a wrong turn stays in the chat as it would in a session."""
    chats = list(corpus.sessions(n, seed, "test")) if chats is None else chats
    histories = [[m for m in c if m["role"] == "system"] for c in chats]
    turns = [
        [(q["content"], a["content"]) for q, a in zip(c[len(h) :: 2], c[len(h) + 1 :: 2])]
        for c, h in zip(chats, histories)
    ]
    hits = collections.defaultdict(list)
    for t in range(max(len(x) for x in turns)):
        live = [k for k, x in enumerate(turns) if len(x) > t]
        for k in live:
            histories[k].append({"role": "user", "content": turns[k][t][0]})
        answers = _answers(lab, [histories[k] for k in live])
        for k, answer in zip(live, answers):
            hits[f"turn {t + 1}"].append(answer == turns[k][t][1])
            histories[k].append({"role": "assistant", "content": answer})
    result = {k: sum(v) / len(v) for k, v in hits.items()}
    result["all"] = sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values())
    return result


def safety_rates(lab, split: str = "test") -> dict[str, float]:
    """Refusal rate per kind of prompt (harmful, benign, each jailbreak family)."""
    rows = corpus.safety_prompts(split)
    answers = _answers(lab, [[{"role": "user", "content": r["prompt"]}] for r in rows])
    refused = collections.defaultdict(list)
    for row, answer in zip(rows, answers):
        refused[row["kind"]].append(is_refusal(answer))
    return {k: sum(v) / len(v) for k, v in sorted(refused.items())}


def vision_accuracy(lab, n: int = VISION_N, seed: int = 0) -> dict[str, float]:
    """Exact-answer accuracy on held-out pictures: per family, per kind of question
    (``"bars: value"``...), and ``"all"``."""
    from phi3lab.tiny import vision_data

    def answer(ex) -> str:
        return lab.chat(vision_data.messages(ex, with_answer=False), [ex.image], max_new_tokens=16, stream=False).text

    return score_vision(answer, n, seed)


def score_vision(answer, n: int = VISION_N, seed: int = 0) -> dict[str, float]:
    """:func:`vision_accuracy` for any ``answer(example) -> str`` (a loaded lab, or a model in training)."""
    from phi3lab.tiny import vision_data

    hits, kinds = collections.defaultdict(list), collections.defaultdict(list)
    for ex in vision_data.examples(n, seed, "test"):
        right = answer(ex) == ex.answer
        hits[ex.family].append(right)
        kinds[vision_data.question_kind(ex)].append(right)
    result = {f: sum(v) / len(v) for f, v in sorted(hits.items())}
    result |= {k: sum(v) / len(v) for k, v in sorted(kinds.items())}
    result["all"] = sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values())
    return result


def new_vision_accuracy(lab, n: int = VISION_NEW_N, seed: int = 0) -> dict[str, float]:
    """:func:`score_new_vision` of a loaded vision lab."""
    from phi3lab.tiny import vision_data

    def answer(ex) -> str:
        return lab.chat(vision_data.messages(ex, with_answer=False), [ex.image], max_new_tokens=24, stream=False).text

    return score_new_vision(answer, n, seed)


def score_new_vision(answer, n: int = VISION_NEW_N, seed: int = 0, older: bool = True) -> dict[str, float]:
    """Exact answers on held-out pictures of the new kinds (issue 23): ``n`` pictures of
    :func:`phi3lab.tiny.vision_data.new_examples` (shapes of any number, size, ratio and background;
    landscapes), per family, per kind of question and ``"all"``; and, apart (``"... : describe"`` of
    the older families), "What is shown in this image?" and its kin asked of the first ``n // 2``
    held-out pictures of :func:`score_vision`'s set (unless ``older`` is false).  ``answer(example) -> str``."""
    import dataclasses

    from phi3lab.tiny import vision_data

    hits, kinds = collections.defaultdict(list), collections.defaultdict(list)
    for ex in vision_data.new_examples(n, seed, "test"):
        right = answer(ex) == ex.answer
        hits[ex.family].append(right)
        kinds[vision_data.question_kind(ex)].append(right)
    result = {f: sum(v) / len(v) for f, v in sorted(hits.items())}
    result |= {k: sum(v) / len(v) for k, v in sorted(kinds.items())}
    result["all"] = sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values())
    if not older:
        return result
    described = collections.defaultdict(list)
    for ex in vision_data.examples(n // 2, seed, "test"):
        question, truth = next(qa for qa in ex.more if qa[0] in vision_data.DESCRIBE)
        described[f"{ex.family}: describe"].append(
            answer(dataclasses.replace(ex, question=question, answer=truth)) == truth
        )
    return result | {k: sum(v) / len(v) for k, v in sorted(described.items())}


def reading_accuracy(lab, n: int = READING_N, seed: int = 1) -> dict[str, float]:
    """:func:`score_reading` of a loaded vision lab."""

    def answer(image, question: str) -> str:
        return lab.chat(f"<|image_1|>\n{question}", [image], max_new_tokens=40, stream=False).text

    return score_reading(answer, n, seed)


def score_reading(answer, n: int = READING_N, seed: int = 1) -> dict[str, float]:
    """Exact answers on ``n`` held-out reading pictures (:func:`phi3lab.tiny.vision_data.reading_examples`,
    test split: new pictures and word lists): ``reading: read`` (the words exactly, asked "What does the
    picture say?"), ``reading: words`` (how much of them: the mean word-sequence similarity of the
    read-back to the text, 0–1, :class:`difflib.SequenceMatcher`) and ``reading: follow`` (on the
    pictures of requests: the typed request's trained answer, asked "Do what the picture says.").  Each
    question is asked on its own.  ``answer(image, question) -> str``."""
    import difflib

    from phi3lab.tiny import vision_data

    read, words, follow = [], [], []
    for ex in vision_data.reading_examples(n, seed, "test"):
        truth = dict([(ex.question, ex.answer), *ex.more])
        said = answer(ex.image, vision_data.READ)
        read.append(said == truth[vision_data.READ])
        words.append(difflib.SequenceMatcher(None, truth[vision_data.READ].split(), said.split()).ratio())
        if vision_data.FOLLOW in truth:  # a request to do, not a word list
            follow.append(answer(ex.image, vision_data.FOLLOW) == truth[vision_data.FOLLOW])
    return {
        "reading: read": sum(read) / n,
        "reading: words": sum(words) / n,
        "reading: follow": sum(follow) / max(1, len(follow)),
    }


def word_pictures(n: int = READING_N, seed: int = 1, split: str = "test") -> list[tuple]:
    """``n`` held-out reading pictures as :func:`phi3lab.inspect.patch_lens.word_reads` takes them:
    ``(picture, [(word, box), ...])``, each box the bounding box of the word's ink, from the renderer's part
    map (the pixels at least half covered by one of the word's letters)."""
    import numpy as np

    from phi3lab.tiny import vision_data

    out = []
    for ex in vision_data.reading_examples(n, seed, split):
        parts = np.asarray(ex.parts)
        words = []
        for word, ids in ex.words:
            ys, xs = np.nonzero(np.isin(parts, ids))
            if len(xs):
                words.append((word, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)))
        out.append((ex.image, words))
    return out


def weights_digest(lab) -> str:
    """The first 16 hex digits of the SHA-256 of a model's parameters (names, shapes and float32 bytes, sorted)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(lab.model.state_dict().items()):
        h.update(name.encode() + str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def patch_lens_report(lab, n: int = READING_N, seed: int = 1):
    """The patch lens on ``n`` held-out reading pictures (:func:`word_pictures`), asked "What does the picture
    say?": a :class:`~phi3lab.inspect.patch_lens.WordReads` carrying :func:`weights_digest` of ``lab``."""
    from phi3lab.inspect.patch_lens import word_reads
    from phi3lab.tiny import vision_data

    return word_reads(
        lab,
        word_pictures(n, seed),
        question=vision_data.READ,
        source=f"held-out reading pictures, seed {seed}, test split",
        weights=weights_digest(lab),
    )


def write_patch_lens_report(lab, path: Path | None = None) -> Path:
    """:func:`patch_lens_report` of ``lab`` written as JSON (default ``data/reports/reader_patch_lens.json``)."""
    import json
    import os

    from phi3lab.paths import data_dir

    path = Path(path) if path is not None else data_dir() / PATCH_LENS_REPORT
    report = patch_lens_report(lab)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    data = {"model": lab.spec.name, **report.to_dict()}
    words = ",\n".join("  " + json.dumps(w) for w in data.pop("words"))  # one line per field and word: diffs read
    head = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in data.items())
    partial.write_text(f'{{\n{head},\n "words": [\n{words}\n ]\n}}\n')
    os.replace(partial, path)
    return path


class StaleReportError(RuntimeError):
    """The stored patch-lens report was measured on other weights than the model given."""


def stored_patch_lens_report(lab=None, path: Path | None = None):
    """The stored :class:`~phi3lab.inspect.patch_lens.WordReads` of the reader; given ``lab``, checked to
    have been measured on ``lab``'s weights.

    Raises:
        FileNotFoundError: no report is stored (the message names the command that writes it).
        StaleReportError: the report measured other weights (the model was retrained since).
    """
    import json

    from phi3lab.inspect.patch_lens import WordReads
    from phi3lab.paths import data_dir

    path = Path(path) if path is not None else data_dir() / PATCH_LENS_REPORT
    command = "python -m phi3lab.tiny.evaluate reader --patch-lens"
    if not path.is_file():
        raise FileNotFoundError(f"no patch-lens report at {path}; write it with `{command}`")
    data = json.loads(path.read_text())
    data.pop("model", None)
    report = WordReads.from_dict(data)
    if lab is not None and report.weights != weights_digest(lab):
        raise StaleReportError(
            f"the stored patch-lens report measured weights {report.weights}, but {lab.spec.name} has "
            f"{weights_digest(lab)}: it was retrained since; refresh the report with `{command}`"
        )
    return report


READOUTS_TITLE = "what the image tokens carry: linear read-outs on held-out shapes (phi3lab.tiny.readouts)"


def _table(title: str, values: dict[str, float]) -> str:
    return title + "\n" + "\n".join(f"  {k:<20} {100 * v:5.1f}%" for k, v in values.items())


def report(folder_or_name) -> str:
    import phi3lab

    lab = phi3lab.load(folder_or_name, verbose=False)
    if lab.spec.modality == "vision" and "reader" in lab.spec.name:
        return "\n".join(
            [
                _table(f"{lab.spec.name}: held-out vision accuracy", vision_accuracy(lab)),
                _table("held-out pictures of the new kinds", new_vision_accuracy(lab)),
                _table("held-out reading pictures", reading_accuracy(lab)),
                _table("typed refusal rate (test split)", safety_rates(lab)),
                _table(READOUTS_TITLE, image_token_readouts(lab)),
            ]
        )
    if lab.spec.modality == "vision":
        return "\n".join(
            [
                _table(f"{lab.spec.name}: held-out vision accuracy", vision_accuracy(lab)),
                _table("held-out pictures of the new kinds", new_vision_accuracy(lab)),
                _showcase_table(showcase(lab)),
                _table(READOUTS_TITLE, image_token_readouts(lab)),
            ]
        )
    return "\n".join(
        [
            _table(f"{lab.spec.name}: held-out exact answers", text_accuracy(lab)),
            _table(f"held-out sessions ({SESSION_N}, 2-6 turns), by turn", session_accuracy(lab)),
            _table(
                "name after three sums (30 chats), by turn",
                session_accuracy(lab, chats=list(corpus.name_after_sums(30))),
            ),
            _table("refusal rate (test split)", safety_rates(lab)),
            _showcase_table(text_showcase(lab)),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3lab.tiny.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("which", nargs="?", choices=["text", "vision", "reader", "control", "both"], default="both")
    parser.add_argument("--model", type=Path, default=None, help="a model folder instead of the embedded one")
    parser.add_argument(
        "--patch-lens",
        action="store_true",
        help="the reader only: measure its patch lens on held-out reading pictures and store the report in "
        f"data/{PATCH_LENS_REPORT.as_posix()}",
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # models this small answer fastest on one thread, and steadiest on a shared machine
    if args.patch_lens:
        import phi3lab

        lab = phi3lab.load(args.model or "tiny-vision-reader", verbose=False)
        print(stored_patch_lens_report(path=write_patch_lens_report(lab)).to_text())
        return
    names = {
        "text": ["tiny"],
        "vision": ["tiny-vision"],
        "reader": ["tiny-vision-reader"],
        "control": ["tiny-vision-control"],
        "both": ["tiny", "tiny-vision", "tiny-vision-reader", "tiny-vision-control"],
    }[args.which]
    for name in [args.model] if args.model else names:
        print(report(name))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
