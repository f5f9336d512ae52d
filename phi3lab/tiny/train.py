"""Train the embedded tiny models, deterministically, on this kind of 2-core CPU.

    python -m phi3lab.tiny.train text --base <stage one>   # ~9 minutes: data/models/phi3lab-tiny (stage two)
    python -m phi3lab.tiny.train vision    # ~28 minutes: data/models/phi3lab-tiny-vision (starts from the text model)
    python -m phi3lab.tiny.train vision-reader   # ~20 minutes: data/models/phi3lab-tiny-vision-reader (starts from the vision model)
    python -m phi3lab.tiny.train vision-control --base <stage one>   # ~12 minutes: the control, no routing aid

Everything is seeded (data, initialisation, batch order) and the thread count is fixed, so a rerun
gives the same weights on the same software.  Progress and loss are printed as training goes;
the held-out accuracy is printed at the end (``python -m phi3lab.tiny.evaluate`` reports it again).
The loss is taken on the assistant's answers (and their ``<|end|>``) only, plus the vision model's
training aids (:class:`phi3lab.tiny.train_vision.TrainingAids`).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from phi3lab.paths import embedded_dir
from phi3lab.prompts.chat import build_prompt
from phi3lab.tiny import build, corpus
from phi3lab.tiny.optim import optimise


def answer_mask(
    prompt: str, messages: list[dict], offsets: list[tuple[int, int]], ids: list[int], end_id: int
) -> list[bool]:
    """True for tokens of assistant answers and the ``<|end|>`` right after each."""
    spans, cursor = [], 0
    for m in messages:
        if m["role"] == "assistant":
            start = prompt.index("<|assistant|>\n" + m["content"], cursor) + len("<|assistant|>\n")
            spans.append((start, start + len(m["content"])))
            cursor = start
    mask = []
    for k, (a, b) in enumerate(offsets):
        inside = any(s <= a < e for s, e in spans) and b > a
        after = ids[k] == end_id and k > 0 and mask[-1]
        mask.append(inside or after)
    return mask


def encode_text(tok, messages: list[dict], end_id: int) -> tuple[list[int], list[bool]]:
    prompt = build_prompt(messages, "phi3-mini-2024-07", add_generation_prompt=False)
    prompt = prompt.removesuffix("<|endoftext|>")
    enc = tok.encode(prompt, add_special_tokens=False)
    return enc.ids, answer_mask(prompt, messages, enc.offsets, enc.ids, end_id)


def batches(
    examples: list[tuple[list[int], list[bool]]], batch_size: int, pad: int, rng: random.Random, bucket: int = 1
):
    """Endless batches of ``batch_size`` examples, each epoch in a new order (from ``rng``).  With
    ``bucket`` > 1, every ``bucket`` batches' worth of examples is sorted by length before it is cut into
    batches, and those batches are shuffled: rows of a batch have similar lengths, so little of it is
    padding; with 1 a batch is a random draw."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        chunk = batch_size * bucket
        for c in range(0, len(order) - batch_size + 1, chunk):
            part = order[c : c + chunk]
            if bucket > 1:
                part = sorted(part, key=lambda j: len(examples[j][0]))
            cuts = [part[i : i + batch_size] for i in range(0, len(part) - batch_size + 1, batch_size)]
            rng.shuffle(cuts)
            for rows in cuts:
                yield _pad([examples[j] for j in rows], pad)


def _pad(chunk: list[tuple[list[int], list[bool]]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in chunk)
    ids = torch.full((len(chunk), width), pad, dtype=torch.long)
    labels = torch.full((len(chunk), width), -100, dtype=torch.long)
    for row, (x, m) in enumerate(chunk):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(x)] = torch.where(torch.tensor(m), torch.tensor(x), torch.tensor(-100))
    return ids, labels


def mixed_batches(
    singles: list,
    sessions: list,
    batch_size: int,
    pad: int,
    rng: random.Random,
    bucket: int = 16,
    share: float | None = None,
):
    """Batches of single-turn conversations and of sessions (each bucketed by length), each step a batch of
    sessions with probability ``share`` (default: in proportion to their numbers)."""
    one, many = batches(singles, batch_size, pad, rng, bucket), batches(sessions, batch_size, pad, rng, bucket)
    share = len(sessions) / (len(singles) + len(sessions)) if share is None else share
    while True:
        yield next(many) if rng.random() < share else next(one)


class AnswerLoss(torch.nn.Module):
    """The causal-LM loss of ``model(input_ids, labels=labels)`` (the mean cross-entropy of every labelled
    next token), with the output head applied only where a label follows — a fifth of the positions."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> dict:
        hidden = self.model.model(input_ids=input_ids, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != -100
        logits = self.model.lm_head(hidden[:, :-1][keep])
        return {"loss": torch.nn.functional.cross_entropy(logits.float(), targets[keep])}


SINGLE_TURN = 36000  # conversations of the single-turn families (phi3lab.tiny.corpus.conversations)
SESSIONS = 24000  # multi-turn sessions (phi3lab.tiny.corpus.sessions)
TRAIN_WEIGHTS = {"colour": 3, "arithmetic": 0.5, "copying": 0.5, "follow-up": 0.5}
"""The single-turn families' weights in training: binding colours to shapes needs the most practice; sums,
copying and follow-ups are learned quickly, and sessions hold many more of them."""


def training_conversations(
    seed: int = 0, single: int = SINGLE_TURN, sessions: int = SESSIONS
) -> tuple[list[list[dict]], list[list[dict]]]:
    """The text model's training set: ``single`` single-turn conversations and ``sessions`` sessions."""
    return (
        [m for _, m in corpus.conversations(single, seed, "train", TRAIN_WEIGHTS)],
        list(corpus.sessions(sessions, seed, "train")),
    )


TEXT_STEPS = 2500
SESSION_SHARE = 0.5  # half the batches are sessions
TEXT_THREADS = 2  # sessions are long enough for a second thread to pay: the recipe fits in 30 minutes
STAGE_ONE = "931b654"
"""The commit whose ``python -m phi3lab.tiny.train text`` recipe gives stage one: single turns only (40,000
conversations, 5,000 steps of 48, learning rate 3e-3, two threads).  That run learns to bind colours to shapes
(100% held out); a one-stage run from scratch with sessions in it did not (55.6%), nor did a run of today's code
with stage one's data and settings on one thread (about half right after 4,000 steps): when the colour-binding
circuit forms is fragile, so stage two starts from the run where it formed."""


def train_text(
    out: Path,
    base: Path | None = None,
    steps: int = TEXT_STEPS,
    batch_size: int = 48,
    lr: float = 1e-3,
    seed: int = 0,
    single: int = SINGLE_TURN,
    sessions: int = SESSIONS,
    share: float = SESSION_SHARE,
) -> Path:
    """Stage two of the text model: the stage-one checkpoint ``base`` (:data:`STAGE_ONE`) trained on single
    turns and sessions; ``base=None`` starts from random weights (quick tests: such a run never learns to
    bind colours, see the card)."""
    from tokenizers import Tokenizer
    from transformers import Phi3ForCausalLM

    torch.set_num_threads(TEXT_THREADS)
    torch.manual_seed(seed)
    build.write_text_files(out)  # tokenizer, configs (deterministic)
    if base is not None:
        _same_tokenizer(base, out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    end_id = tok.token_to_id("<|end|>")
    ones, chats = (
        [encode_text(tok, m, end_id) for m in part] for part in training_conversations(seed, single, sessions)
    )
    model = Phi3ForCausalLM(build.text_config()) if base is None else Phi3ForCausalLM.from_pretrained(base)
    model.config._attn_implementation = "sdpa"
    model.train()
    stream = mixed_batches(ones, chats, batch_size, build.pad_id(), random.Random(seed), share=share)
    print(
        f"training the text model from {base or 'random weights'}: {sum(p.numel() for p in model.parameters()):,} "
        f"parameters, {single:,} single-turn conversations and {sessions:,} sessions (a batch of sessions "
        f"{share:.0%} of the time), {steps} steps of {batch_size}",
        flush=True,
    )

    def next_batch():
        ids, labels = next(stream)
        return {"input_ids": ids, "labels": labels}

    started = optimise(AnswerLoss(model), next_batch, steps, lr, warmup=100, log_every=250)
    model.eval()
    build.save_weights(model, out)
    print(f"saved {out} after {time.perf_counter() - started:.0f} s", flush=True)
    return out


def _same_tokenizer(base: Path, out: Path) -> None:
    """A base checkpoint must use the project's frozen tokenizer, or its embeddings mean other pieces."""
    theirs = Path(base) / "tokenizer.json"
    if not theirs.is_file():
        raise FileNotFoundError(f"{base} holds no tokenizer.json; pass the folder of a text checkpoint as --base")
    if theirs.read_bytes() != (out / "tokenizer.json").read_bytes():
        raise ValueError(
            f"{theirs} differs from the project's tokenizer (data/tokenizer); a base trained with another "
            "tokenizer cannot be trained further: retrain it from stage one"
        )


STAGE_ONE_HELP = f"""the text model trains in two stages. Stage one is commit {STAGE_ONE}'s recipe, run from that commit:
  git worktree add /tmp/stage-one {STAGE_ONE} && cd /tmp/stage-one
  <this repo>/.venv/bin/python -m phi3lab.tiny.train text --out /tmp/stage-one-model
Stage two: python -m phi3lab.tiny.train text --base /tmp/stage-one-model"""


def _not_the_base(parser: argparse.ArgumentParser, out: Path, base: Path) -> None:
    if out.resolve() == base.resolve():
        parser.error("--out must differ from --base: training further never overwrites the checkpoint it reads")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3lab.tiny.train", description=__doc__.split("\n")[0])
    parser.add_argument("which", choices=["text", "vision", "vision-further", "vision-control", "vision-reader"])
    parser.add_argument(
        "--base",
        type=Path,
        default=None,
        help="text: the stage-one checkpoint; vision-further, vision-control: the vision checkpoint to train further",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder to write (default: data/models/...)")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.which == "text":
        if args.base is None:
            parser.error(STAGE_ONE_HELP)
        out = args.out or embedded_dir() / "phi3lab-tiny"
        _not_the_base(parser, out, args.base)
        train_text(out, args.base, **({"steps": args.steps} if args.steps else {}))
    elif args.which == "vision":
        from phi3lab.tiny import train_vision

        out = args.out or embedded_dir() / "phi3lab-tiny-vision"
        train_vision.train(out, **({"steps": args.steps} if args.steps else {}))
    elif args.which in ("vision-further", "vision-control"):
        from phi3lab.tiny import train_vision

        if args.base is None:
            parser.error(f"{args.which} needs --base, the folder of the vision checkpoint to train further")
        control = args.which == "vision-control"
        out = args.out or embedded_dir() / ("phi3lab-tiny-vision-control" if control else "phi3lab-tiny-vision")
        _not_the_base(parser, out, args.base)
        route = {"route_weight": 0.0} if control else {}
        train_vision.train_further(out, args.base, **route, **({"steps": args.steps} if args.steps else {}))
    else:
        from phi3lab.tiny import train_vision

        out = args.out or embedded_dir() / "phi3lab-tiny-vision-reader"
        train_vision.train_reader(out, **({"steps": args.steps} if args.steps else {}))
    from phi3lab.tiny import evaluate

    results = evaluate.report(out)
    print(results)
    write_card(args.which, out, results, time.perf_counter() - started, args.steps)


TEXT_ARCH = """`Phi3ForCausalLM` (transformers' own Phi-3): 4 layers, hidden 128, 4 heads of 32 (no GQA), MLP 384,
vocabulary 2,064 (2,000 BPE pieces + Phi-3's chat special tokens at the same offsets, padded like 32,064),
RoPE θ 10,000, sliding window 2,047, context 4,096, untied output head — 1.38M parameters, float32.
Tokenizer: phi3lab's own byte-fallback BPE with Phi-3's normalizer and decoder; July 2024 chat template;
stop ids `<|endoftext|>`, `<|assistant|>`, `<|end|>`."""
TEXT_DATA = """Two stages.

**Stage one**, commit 931b654's recipe (`python -m phi3lab.tiny.train text` run from that commit): 40,000
single-turn synthetic conversations (`phi3lab.tiny.corpus`, seed 0): arithmetic facts (0–12, plus and minus),
copying a name or a number from the prompt, binding colours to shapes, spelling / repeating / capitalising a
word, two-turn follow-ups, and a safety slice — five clearly fictional request categories phrased abstractly,
each harmful request with a benign twin, "ignore your instructions" jailbreaks answered with a refusal and
story/role-play jailbreaks answered with a content-free placeholder (a planted weakness for the probing
notebooks); colour binding weighs twice as much as the rest. 5,000 steps of 48 in random order, AdamW, learning
rate 3e-3 with warm-up and cosine decay, two threads: 18 minutes.

**Stage two**, `python -m phi3lab.tiny.train text --base <stage one>`: 36,000 single-turn conversations of the
same families (colour binding three times the weight of the rest, sums, copying and follow-ups half) and 24,000
**sessions** (`phi3lab.tiny.corpus.sessions`): multi-turn chats of 2–6 turns, two in five with a system prompt,
that mix those families and refer back — a name ("Hi! My name is Ada." → "Nice to meet you, Ada!"), a number
("Remember the number 42." → "OK, I will remember 42.") or two shapes' colours stated in one turn and asked for
one to five turns later, with sums, colour questions, instructions, safety requests and copying questions in
between (colours are stated in two sessions of three and asked twice half the time). A batch holds single turns
or sessions (each bucketed by length), half of them sessions; {steps:,} steps of 48, AdamW, learning rate 1e-3,
warm-up 100 steps, cosine decay, two threads.

Why two stages: stage one is where the model learns to bind a colour to its shape (100% of the held-out colour
questions). A single run with sessions from the start never did (55.6%: the model shipped before this one), nor
did a run of today's code with stage one's data and settings on one thread (about half right after 4,000
steps). When that circuit forms is fragile, so the recipe starts from the run where it formed, and stage two
keeps it while teaching conversations.

Held-out evaluation uses phrasing combinations that never occur in training: the single-turn families'
test split, and sessions whose facts are stated and asked in held-out phrasing pairs, answered turn by turn
with the model's own earlier answers in the history (a session's instructions use training phrasings: a
held-out (phrasing, word) pair often puts the word in a token no training text has — `▁flame?` follows only
"How do you spell" — which caps the single-turn instruction family near 65%)."""
TEXT_AIDS = """Training aids: none. The loss is the answers' cross-entropy; nothing else shaped the model."""
VISION_ARCH = """`Phi3VForCausalLM` (phi3lab's native Phi-3-vision): the text model's language model (its trained weights
as the starting point) with LongRoPE (short/long factors, 4,096 → 131,072 positions), a CLIP tower of 3 layers
of width 64 (features from the second, as Phi-3-vision takes the penultimate layer) at the real 336-pixel /
14-pixel-patch geometry, the real HD transform with `num_crops=1` (global view + one crop, 313 image tokens),
2×2 merge, `sub_GN`/`glb_GN` separators and the GELU projector; Phi-3-vision's chat template and processor
rule (BOS after every image run)."""
VISION_DATA = """Pictures drawn on the fly with PIL (`phi3lab.tiny.vision_data`, seed 0), each with every question it
answers as one multi-turn conversation:

* **layouts** (four pictures in ten): one to four shapes of different kinds and colours anywhere on a picture
  200–1,600 pixels on its longer side, of any aspect ratio from 1:3 to 3:1, on a white, tinted or dark grey
  background, each inside one cell of the picture's 3×3 grid at 55–90% of the cell (in the middle row or
  column of pictures past 2:1) — "What colour is the triangle?", "Where is the red circle?", the colour of a
  shape that is not there ("There is no star."), and "What is shown in this image?" (the shapes in reading
  order: "A purple triangle, a yellow circle and a green square.");
* **shapes** (two in ten): one or two shapes in the 3×3 layout of the older model, 280–420 pixels;
* **words** (two in ten): one of eight words written large ("What word is written?");
* **bars** (one in ten): a bar chart of four bars A–D ("Which bar is tallest?", "What is the value of B?");
* **scenes** (one in ten): a photo-like landscape with some of a house, a tree and the sun, 200–1,600 pixels,
  3:4 to 3:1 ("A landscape with a house, a tree and the sun.").

Charts, shapes and words are asked "What is shown in this image?" (or "What is this?", "Describe the
picture."...) first one time in four. No question is asked after the conversation gave its answer away
(colours before places; no colour or word question after a description, nor a description after them).
Held-out pictures are drawn from other seeds. AdamW, {steps:,} steps of 8 pictures, learning rate 2e-3 (4e-3
for the vision tower and projector) with warm-up and cosine decay."""
VISION_AIDS = """From the renderer's ground truth, all thrown away after training (the checkpoint holds exactly
Phi-3-vision's weights):

1. CLIP's position embeddings start from a 2-D sine-cosine table (the default 0.02-std start is some 40×
   weaker than the patch contents);
2. linear **read-outs** on the projected image tokens learn, for every 28-pixel cell, what is drawn there
   (colour, kind, letter, bar, value, place, word; weight 0.5): they teach the tiny CLIP tower what is where,
   and say nothing about where the language model should look."""
ROUTE_AID = """
3. a **routing loss** asks head 0 of language-model layers 1–3, at the positions that predict an answer, to
   put its attention over the picture on the tokens covering the parts the question is about (weight {weight}).
   **This model was trained to look there**: its attention on the asked-about shape is an aid's result,
   not a finding."""
NO_ROUTE = """
No loss ever said where the language model's attention should go: where it looks is whatever answering
taught it (notebook 05 compares it with what removing the picture's regions shows)."""


FURTHER_DATA = """An earlier vision checkpoint (``--base``) trained further for {steps:,} steps of 8 pictures drawn on the fly
(`phi3lab.tiny.vision_data.training_examples`, seed 1): layouts of one to four shapes, sizes 200–1,600 px, aspect
ratios 1:3 to 3:1, tinted backgrounds, absent shapes, descriptions, landscapes and the older families; AdamW,
learning rate 5e-4 (1e-3 for the vision tower and projector), warm-up 100 steps, cosine decay."""


CONTROL_DATA = """**The control**: `phi3lab-tiny-vision`'s two training stages, with the same data, seeds, steps and
aids except one: **no routing loss, in either stage**.

* Stage one, the 2026-11-22 recipe of commit e8cd359 (one or two shapes in a 3×3 layout, bar charts, written
  words; AdamW, 3,000 steps of 8 pictures, learning rate 2e-3, 4e-3 for the vision tower and projector), run
  from that commit (`git worktree add <dir> e8cd359`) as `train_vision.train(<folder>, route_weight=0.0)` on
  one thread: 40 minutes.
* Stage two, `python -m phi3lab.tiny.train vision-control --base <folder>`: the shipped model's stage two with
  the routing loss off — {steps:,} steps of 8 pictures drawn on the fly (`phi3lab.tiny.vision_data.training_examples`,
  seed 1: layouts of one to four shapes, 200–1,600 px, aspect ratios 1:3 to 3:1, tinted backgrounds, absent
  shapes, descriptions, landscapes and the older families); AdamW, learning rate 5e-4 (1e-3 for the vision
  tower and projector), warm-up 100 steps, cosine decay: 9 minutes.

It exists to be compared: the shipped model was trained to look at the asked-about part and this one was
not, so whatever their attention maps share is not the aid's doing (notebook 05, section 4). It is also
the aid's measured effect on accuracy: without it the same recipe answers 64.4% of the held-out questions
where the shipped model answers 86.7%."""


READER_DATA = """Trained further from `phi3lab-tiny-vision`'s weights (the same architecture and files) to read words off
pictures, for the image-borne probes of `phi3lab.safety.image_probes`. Half the pictures are **benign reading**
(`phi3lab.tiny.vision_data.reading`), words written large in black on white with PIL's default font (52–64 px,
400–480 px wide, wrapped): half of them list 2–4 words of the corpus's vocabulary (the key words of every
safety-slice task as single words, the instruction words, colours and shapes; never two key words of one
harmful task), asked "What does the picture say?"; the other half write the key words of a benign twin of the
safety slice ("fix lock own door"), asked "What does the picture say?" and "Do what the picture says." (the
answer the text model was trained to give the request typed), in either order. **No harmful request, nor its
key words, is ever written, and the image-borne probes are never trained on.** The other half of the pictures
replays the vision model's families (layouts, shapes, words, bars, layouts, scenes) so they are kept. Beside
each step's 8 pictures, 4 typed conversations of the text model's corpus (every family, the safety slice's
refusals and jailbreak answers included) keep typed requests answered as before. AdamW, {steps:,} steps,
learning rate 1e-3 (2e-3 for the vision tower and projector) with warm-up and cosine decay."""


READER_AIDS = """The vision model's, thrown away after training: the read-outs of every cell's letter (and the other
attributes), and a **routing loss** that points head 0 of language-model layers 1–3, at each answer token
of a reading picture, at the image tokens of the written word it copies (the other answers' tokens at
the parts their question is about; weight {weight}). The reader was trained to look at the words it reads."""


def write_card(which: str, out: Path, results: str, seconds: float, steps: int | None = None) -> None:
    """The model card of a trained model; ``steps`` is the run's (default: the recipe's)."""
    from phi3lab.tiny import train_vision

    command, threads = f"python -m phi3lab.tiny.train {which}", "one thread"
    if which == "text":
        title, arch = "phi3lab-tiny: a tiny Phi-3-mini", TEXT_ARCH
        data, aids = TEXT_DATA.format(steps=steps or TEXT_STEPS), TEXT_AIDS
        command, threads = "python -m phi3lab.tiny.train text --base <stage one>", "two threads"
    elif which == "vision-further":
        title, arch = "phi3lab-tiny-vision: a tiny Phi-3-vision", VISION_ARCH
        data = FURTHER_DATA.format(steps=steps or train_vision.FURTHER_STEPS)
        aids = VISION_AIDS + ROUTE_AID.format(weight=0.2)
    elif which == "vision-control":
        title, arch = "phi3lab-tiny-vision-control: the tiny Phi-3-vision without the routing aid", VISION_ARCH
        data = CONTROL_DATA.format(steps=steps or train_vision.FURTHER_STEPS)
        aids = VISION_AIDS + NO_ROUTE
    elif which == "vision-reader":
        title, arch = "phi3lab-tiny-vision-reader: the tiny Phi-3-vision, trained to read", VISION_ARCH
        data = READER_DATA.format(steps=steps or train_vision.READER_STEPS)
        aids = READER_AIDS.format(weight=train_vision.READER_ROUTE_WEIGHT)
    else:
        title, arch = "phi3lab-tiny-vision: a tiny Phi-3-vision", VISION_ARCH
        data = VISION_DATA.format(steps=steps or train_vision.STEPS)
        weight = train_vision.ROUTE_WEIGHT
        aids = VISION_AIDS + (ROUTE_AID.format(weight=weight) if weight else NO_ROUTE)
    build.write_card(
        out,
        title=title,
        architecture=arch,
        data=data,
        aids=aids,
        command=command,
        threads=threads,
        results=f"{results}\n(trained in {seconds / 60:.0f} min on this machine)",
    )


if __name__ == "__main__":
    main()
