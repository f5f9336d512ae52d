"""Train the embedded tiny models from scratch, deterministically, on this kind of 2-core CPU.

    python -m phi3lab.tiny.train text      # ~18 minutes: data/models/phi3lab-tiny
    python -m phi3lab.tiny.train vision    # ~28 minutes: data/models/phi3lab-tiny-vision (starts from the text model)
    python -m phi3lab.tiny.train vision-reader   # ~20 minutes: data/models/phi3lab-tiny-vision-reader (starts from the vision model)

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

THREADS = 2


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


def batches(examples: list[tuple[list[int], list[bool]]], batch_size: int, pad: int, rng: random.Random):
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            chunk = [examples[j] for j in order[i : i + batch_size]]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((batch_size, width), pad, dtype=torch.long)
            labels = torch.full((batch_size, width), -100, dtype=torch.long)
            for row, (x, m) in enumerate(chunk):
                ids[row, : len(x)] = torch.tensor(x)
                labels[row, : len(x)] = torch.where(torch.tensor(m), torch.tensor(x), torch.tensor(-100))
            yield ids, labels


def train_text(out: Path, steps: int = 5000, batch_size: int = 48, lr: float = 3e-3, seed: int = 0) -> Path:
    from tokenizers import Tokenizer
    from transformers import Phi3ForCausalLM

    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    build.write_text_files(out)  # tokenizer, configs (deterministic)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    end_id = tok.token_to_id("<|end|>")
    examples = [encode_text(tok, m, end_id) for _, m in corpus.conversations(40000, seed, "train")]
    model = Phi3ForCausalLM(build.text_config())
    model.config._attn_implementation = "sdpa"
    model.train()
    stream = batches(examples, batch_size, build.pad_id(), random.Random(seed))
    print(
        f"training the text model: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{len(examples):,} conversations, {steps} steps of {batch_size}",
        flush=True,
    )

    def next_batch():
        ids, labels = next(stream)
        return {"input_ids": ids, "labels": labels}

    started = optimise(model, next_batch, steps, lr, warmup=200, log_every=200)
    model.eval()
    build.save_weights(model, out)
    print(f"saved {out} after {time.perf_counter() - started:.0f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3lab.tiny.train", description=__doc__.split("\n")[0])
    parser.add_argument("which", choices=["text", "vision", "vision-reader"])
    parser.add_argument("--out", type=Path, default=None, help="folder to write (default: data/models/...)")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.which == "text":
        out = args.out or embedded_dir() / "phi3lab-tiny"
        train_text(out, **({"steps": args.steps} if args.steps else {}))
    elif args.which == "vision":
        from phi3lab.tiny import train_vision

        out = args.out or embedded_dir() / "phi3lab-tiny-vision"
        train_vision.train(out, **({"steps": args.steps} if args.steps else {}))
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
TEXT_DATA = """40,000 synthetic conversations (`phi3lab.tiny.corpus`, seed 0): arithmetic facts (0–12, plus and minus),
copying a name or a number from the prompt, binding colours to shapes, spelling / repeating / capitalising a
word, two-turn follow-ups, and a safety slice — five clearly fictional request categories phrased abstractly,
each harmful request with a benign twin, "ignore your instructions" jailbreaks answered with a refusal and
story/role-play jailbreaks answered with a content-free placeholder (a planted weakness for the probing
notebooks). Held-out evaluation uses phrasing combinations that never occur in training."""
VISION_ARCH = """`Phi3VForCausalLM` (phi3lab's native Phi-3-vision): the text model's language model (its trained weights
as the starting point) with LongRoPE (short/long factors, 4,096 → 131,072 positions), a CLIP tower of 3 layers
of width 64 (features from the second, as Phi-3-vision takes the penultimate layer) at the real 336-pixel /
14-pixel-patch geometry, the real HD transform with `num_crops=1` (global view + one crop, 313 image tokens),
2×2 merge, `sub_GN`/`glb_GN` separators and the GELU projector; Phi-3-vision's chat template and processor
rule (BOS after every image run)."""
VISION_DATA = """Pictures drawn on the fly with PIL (`phi3lab.tiny.vision_data`, seed 0): one or two coloured shapes in a
3×3 layout ("What colour is the triangle?", "Where is the red circle?"), bar charts of four bars A–D ("Which
bar is tallest?", "What is the value of B?") and one of eight written words ("What word is written?"), in varied
sizes and aspect ratios. Each training picture comes with the questions it answers, as one multi-turn
conversation: the evaluated question first, colours before places, and no question whose answer an earlier
one named ("Where is the red circle?" gives the circle's colour away). Shapes and words are drawn twice as
often as charts (bars, shapes, words, shapes, words). Held-out pictures are drawn from other seeds.

Three training aids, from the renderer's ground truth, all thrown away after training (the checkpoint
holds exactly Phi-3-vision's weights): CLIP's position embeddings start from a 2-D sine-cosine table (the
default 0.02-std start is some 40× weaker than the patch contents); linear read-outs on the projected image
tokens learn, for every 28-pixel cell, what is drawn there (colour, kind, letter, bar, value, place, word;
weight 0.5); and a routing loss asks head 0 of language-model layers 1–3, at the positions that predict an
answer, to put its attention over the picture on the tokens covering the parts the question is about
(weight 0.2). AdamW, {steps:,} steps of 8 pictures, learning rate 2e-3 (4e-3 for the vision tower and
projector) with warm-up and cosine decay."""


READER_DATA = """Trained further from `phi3lab-tiny-vision`'s weights (the same architecture and files) to read words off
pictures, for the image-borne probes of `phi3lab.safety.image_probes`. Half the pictures are **benign reading**
(`phi3lab.tiny.vision_data.reading`), words written large in black on white with PIL's default font (52–64 px,
400–480 px wide, wrapped): half of them list 2–4 words of the corpus's vocabulary (the key words of every
safety-slice task as single words, the instruction words, colours and shapes; never two key words of one
harmful task), asked "What does the picture say?"; the other half write the key words of a benign twin of the
safety slice ("fix lock own door"), asked "What does the picture say?" and "Do what the picture says." (the
answer the text model was trained to give the request typed), in either order. **No harmful request, nor its
key words, is ever written, and the image-borne probes are never trained on.** The other half of the pictures
replays the vision families (shapes, words, bars) so they are kept. Beside each step's 8 pictures, 4 typed
conversations of the text model's corpus (every family, the safety slice's refusals and jailbreak answers
included) keep typed requests answered as before. The vision model's training aids (letter read-outs per
cell; routing of each answer token to the written word it copies), thrown away after training. AdamW, {steps:,}
steps, learning rate 1e-3 (2e-3 for the vision tower and projector) with warm-up and cosine decay."""


def write_card(which: str, out: Path, results: str, seconds: float, steps: int | None = None) -> None:
    """The model card of a trained model; ``steps`` is the vision run's (default: the recipe's)."""
    if which == "text":
        title, arch, data = "phi3lab-tiny: a tiny Phi-3-mini", TEXT_ARCH, TEXT_DATA
    elif which == "vision-reader":
        from phi3lab.tiny.train_vision import READER_STEPS

        title, arch = "phi3lab-tiny-vision-reader: the tiny Phi-3-vision, trained to read", VISION_ARCH
        data = READER_DATA.format(steps=steps or READER_STEPS)
    else:
        from phi3lab.tiny.train_vision import STEPS

        title, arch, data = (
            "phi3lab-tiny-vision: a tiny Phi-3-vision",
            VISION_ARCH,
            VISION_DATA.format(steps=steps or STEPS),
        )
    build.write_card(
        out,
        title=title,
        architecture=arch,
        data=data,
        command=f"python -m phi3lab.tiny.train {which}",
        results=f"{results}\n(trained in {seconds / 60:.0f} min on this machine)",
    )


if __name__ == "__main__":
    main()
