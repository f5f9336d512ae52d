"""Train the embedded tiny models from scratch, deterministically, on this kind of 2-core CPU.

    python -m phi3lab.tiny.train text      # ~15 minutes: data/models/phi3lab-tiny
    python -m phi3lab.tiny.train vision    # data/models/phi3lab-tiny-vision (starts from the text model)

Everything is seeded (data, initialisation, batch order) and the thread count is fixed, so a rerun
gives the same weights on the same software.  Progress and loss are printed as training goes;
the held-out accuracy is printed at the end (``python -m phi3lab.tiny.evaluate`` reports it again).
The loss is taken on the assistant's answers (and their ``<|end|>``) only.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import torch

from phi3lab.chat import build_prompt
from phi3lab.paths import embedded_dir
from phi3lab.tiny import build, corpus

THREADS = 2


def answer_mask(prompt: str, messages: list[dict], offsets: list[tuple[int, int]], ids: list[int],
                end_id: int) -> list[bool]:
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
            chunk = [examples[j] for j in order[i:i + batch_size]]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((batch_size, width), pad, dtype=torch.long)
            labels = torch.full((batch_size, width), -100, dtype=torch.long)
            for row, (x, m) in enumerate(chunk):
                ids[row, :len(x)] = torch.tensor(x)
                labels[row, :len(x)] = torch.where(torch.tensor(m), torch.tensor(x), torch.tensor(-100))
            yield ids, labels


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


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
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    stream = batches(examples, batch_size, build.pad_id(), random.Random(seed))
    started, smooth = time.perf_counter(), None
    print(f"training the text model: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(examples):,} conversations, {steps} steps of {batch_size}", flush=True)
    for step in range(steps):
        ids, labels = next(stream)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, 200)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        if step % 200 == 0 or step == steps - 1:
            print(f"  step {step:5d}/{steps}  loss {smooth:.4f}  lr {lr_at(step, steps, lr, 200):.2e}  "
                  f"{time.perf_counter() - started:6.0f} s", flush=True)
    model.eval()
    build.save_weights(model, out)
    print(f"saved {out} after {time.perf_counter() - started:.0f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3lab.tiny.train", description=__doc__.split("\n")[0])
    parser.add_argument("which", choices=["text", "vision"])
    parser.add_argument("--out", type=Path, default=None, help="folder to write (default: data/models/...)")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    if args.which == "text":
        out = args.out or embedded_dir() / "phi3lab-tiny"
        train_text(out, **({"steps": args.steps} if args.steps else {}))
    else:
        from phi3lab.tiny import train_vision

        out = args.out or embedded_dir() / "phi3lab-tiny-vision"
        train_vision.train(out, **({"steps": args.steps} if args.steps else {}))
    from phi3lab.tiny import evaluate

    print(evaluate.report(out))


if __name__ == "__main__":
    main()
