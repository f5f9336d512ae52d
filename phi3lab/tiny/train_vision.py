"""Train the embedded tiny Phi-3-vision (``python -m phi3lab.tiny.train vision``).

The architecture is the native Phi-3-vision of :mod:`phi3lab.models.phi3_v` with the real HD
transform and LongRoPE, shrunk: the language model is the tiny text model's (and starts from its
trained weights), the CLIP tower has 3 layers of width 64 (features from the second) at the real 336-pixel, 14-pixel-patch
geometry, and pictures use ``num_crops=1`` (a global view plus one crop: 313 image tokens).
Pictures and questions are drawn on the fly by :mod:`phi3lab.tiny.vision_data`; each picture
is one multi-turn conversation asking everything it answers.

The CLIP tower starts from scratch, which on its own takes thousands of steps to find "what is
where"; two aids shorten that: position embeddings that start from a sine-cosine table
(:func:`start_positions`) and a throw-away linear probe (:class:`DenseProbe`) that reads the
renderer's per-cell ground truth from the projected image tokens.  Every 400 steps a quick
held-out check prints the accuracy so far.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from phi3lab.paths import embedded_dir
from phi3lab.tiny import build, tokenizer, vision_data
from phi3lab.tiny.train import optimise

THREADS = 2
NUM_CROPS = 1
TEMPLATE_VISION = (
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{- '<|assistant|>\n' -}}"
    "{% endif %}"
)


def vision_config():
    from phi3lab.models.phi3_v import Phi3VConfig

    text = build.text_config().to_dict()
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    half = head_dim // 2
    for key in ("rope_parameters", "transformers_version", "model_type", "architectures", "dtype"):
        text.pop(key, None)
    return Phi3VConfig(
        **text | dict(max_position_embeddings=131072, original_max_position_embeddings=4096, sliding_window=131072),
        rope_scaling={"type": "su", "short_factor": [1.0 + 0.1 * i / half for i in range(half)],
                      "long_factor": [1.0 + 7.0 * i / half for i in range(half)]},
        embd_layer={"embedding_cls": "image", "hd_transform_order": "sub_glb", "projection_cls": "mlp",
                    "use_hd_transform": True, "with_learnable_separator": True},
        img_processor={"name": "clip_vision_model", "model_name": "openai/clip-vit-large-patch14-336",
                       "image_dim_out": 64, "num_img_tokens": 144,
                       "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                                         "num_hidden_layers": 3, "image_size": 336, "patch_size": 14,
                                         "num_channels": 3, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}},
        image_token_id=tokenizer.special_id("<|image|>"),
        architectures=["Phi3VForCausalLM"],
    )


def write_vision_files(folder: Path) -> Path:
    from transformers import GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    vision_config().save_pretrained(folder)
    stops = [tokenizer.special_id("<|end|>"), tokenizer.special_id("<|endoftext|>")]
    GenerationConfig(bos_token_id=1, eos_token_id=stops, pad_token_id=build.pad_id(), do_sample=False).save_pretrained(folder)
    build.write_tokenizer(folder, add_bos=True, template=TEMPLATE_VISION, max_length=131072)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "num_crops": NUM_CROPS, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Phi3VImageProcessor",
        "processor_class": "Phi3VProcessor", "num_img_tokens": 144}, indent=2) + "\n")
    return folder


def encode(processor, conversation: list[dict], image, end_id: int, assistant_id: int) -> dict:
    """Ids, pixels and labels of one conversation about one picture; the labels are every answer
    and the ``<|end|>`` that closes it (the rest is -100)."""
    prompt = processor.tokenizer.apply_chat_template(conversation, tokenize=False)
    enc = processor(prompt, [image])
    ids = enc["input_ids"][0]
    labels = torch.full_like(ids, -100)
    for start in (ids == assistant_id).nonzero()[:, 0].tolist():
        stop = start + 1 + int((ids[start + 1:] == end_id).nonzero()[0])
        labels[start + 1:stop + 1] = ids[start + 1:stop + 1]
    return {"input_ids": ids, "labels": labels, "pixel_values": enc["pixel_values"][0], "image_sizes": enc["image_sizes"][0]}


def cell_targets(example: vision_data.VisionExample) -> torch.Tensor:
    """``[144, len(ATTRIBUTES)]``: for each 28-pixel cell of the 336×336 canvas (one image token of
    the crop view, and of the global view, which is the same canvas at ``num_crops=1``), the
    attributes of the part covering most of it — 0 where no part covers at least 5% of the cell.

    The part map goes through the HD geometry (resize, then pad) exactly as the pixels do."""
    import numpy as np
    from PIL import Image

    from phi3lab.patches import hd_layout

    layout = hd_layout(example.image.width, example.image.height, NUM_CROPS)
    assert layout.padded == (336, 336), layout
    left, top, right, bottom = layout.pad_box
    canvas = Image.new("L", layout.padded, 0)
    canvas.paste(example.parts.resize((right - left, bottom - top), Image.Resampling.NEAREST), (left, top))
    ids = np.asarray(canvas).reshape(12, 28, 12, 28).transpose(0, 2, 1, 3).reshape(144, 28 * 28)
    table = np.zeros((len(example.part_attributes) + 1, len(vision_data.ATTRIBUTES)), dtype=np.int64)
    for k, attrs in enumerate(example.part_attributes, start=1):
        table[k] = [attrs.get(name, 0) for name in vision_data.ATTRIBUTES]
    counts = np.stack([np.bincount(row, minlength=len(table)) for row in ids])
    counts[:, 0] = 0
    best = counts.argmax(1)
    best[counts.max(1) < 0.05 * 28 * 28] = 0
    return torch.from_numpy(table[best])


class DenseProbe(torch.nn.Module):
    """Linear read-outs of the part attributes from the projected image tokens, trained beside the
    answers and thrown away after training: dense targets that teach the tiny CLIP tower what is
    where within a few hundred steps, instead of waiting for the answer loss alone to find it.

    Wraps the model: ``forward(**batch)`` returns the model's output with ``loss`` = answer loss +
    ``weight`` × the mean cross-entropy of the read-outs over the crop-view and global-view cells."""

    def __init__(self, model, weight: float = 0.2):
        super().__init__()
        self.model = model
        self.weight = weight
        hidden = model.config.hidden_size
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden, len(v) + 1) for v in vision_data.ATTRIBUTES.values())
        self._tokens: list[torch.Tensor] = []
        self._hook = model.model.vision_embed_tokens.img_projection.register_forward_hook(
            lambda m, i, o: self._tokens.append(o))
        from phi3lab.patches import image_tokens

        run = image_tokens(336, 336, NUM_CROPS)  # the crop view's cells, then the global view's, row by row
        cells = [t.index for t in run if t.kind == "crop"] + [t.index for t in run if t.kind == "global"]
        self.register_buffer("cells", torch.tensor(cells), persistent=False)

    KIND = list(vision_data.ATTRIBUTES).index("kind")

    @staticmethod
    def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, every_cell: bool) -> torch.Tensor:
        """Over every cell for "kind" (what is there, background included); over the cells that
        show a part for the other attributes, which would otherwise drown in background."""
        logits, target = logits.flatten(0, 1), target.flatten()
        if every_cell:
            return torch.nn.functional.cross_entropy(logits, target)
        total = torch.nn.functional.cross_entropy(logits, target, ignore_index=0, reduction="sum")
        return total / (target > 0).sum().clamp(min=1)

    def detach(self) -> None:
        """Unhook from the model (after training), leaving it as it was."""
        self._hook.remove()
        self._tokens.clear()

    def forward(self, cell_targets: torch.Tensor, **batch):
        self._tokens.clear()
        out = self.model(**batch)
        tokens = torch.stack(self._tokens)[:, self.cells]  # [B, 288, hidden]
        targets = cell_targets.repeat(1, 2, 1)  # the same targets for both views
        dense = sum(self._cross_entropy(head(tokens), targets[..., j], every_cell=(j == self.KIND))
                    for j, head in enumerate(self.heads)) / len(self.heads)
        out.loss = out.loss + self.weight * dense
        out["dense_loss"] = dense.detach()
        return out


def collate(items: list[dict], pad: int) -> dict:
    width = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, x in enumerate(items):
        ids[row, :len(x["input_ids"])] = x["input_ids"]
        labels[row, :len(x["labels"])] = x["labels"]
    batch = {"input_ids": ids, "labels": labels, "pixel_values": torch.stack([x["pixel_values"] for x in items]),
             "image_sizes": torch.stack([x["image_sizes"] for x in items])}
    if all("cell_targets" in x for x in items):
        batch["cell_targets"] = torch.stack([x["cell_targets"] for x in items])
    return batch


def position_table(grid: int, dim: int) -> torch.Tensor:
    """A 2-D sine-cosine table ``[1 + grid², dim]`` (zeros for the class token): the first half of the
    channels encodes the patch row, the second half the column, at geometrically spaced frequencies."""
    quarter = dim // 4
    freqs = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")

    def waves(pos):
        angles = pos.reshape(-1, 1) * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([waves(rows), waves(cols)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()


def start_positions(model) -> None:
    """Start CLIP's learned position embeddings from :func:`position_table`.

    At the default initialisation (std 0.02) they are some 40× weaker than the patch contents, so
    "where" takes thousands of steps to surface; a sine-cosine start makes it readable at once.
    The embeddings stay trainable and the architecture is unchanged."""
    emb = model.model.vision_embed_tokens.img_processor.vision_model.embeddings
    grid = emb.image_size // emb.patch_size
    with torch.no_grad():
        emb.position_embedding.weight.copy_(position_table(grid, emb.embed_dim))


def quick_accuracy(model, processor, n: int = 48, seed: int = 1) -> dict[str, float]:
    """Greedy exact-answer accuracy per family (and ``"all"``) on ``n`` held-out pictures: the
    progress check, scored by :func:`phi3lab.tiny.evaluate.score_vision` on the model in training."""
    from phi3lab.tiny.evaluate import score_vision

    end_id = tokenizer.special_id("<|end|>")

    def answer(ex) -> str:
        prompt = processor.tokenizer.apply_chat_template(vision_data.messages(ex, with_answer=False),
                                                         tokenize=False, add_generation_prompt=True)
        enc = processor(prompt, [ex.image])
        enc = {k: enc[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
        out = model.generate(**enc, max_new_tokens=16, do_sample=False, eos_token_id=end_id,
                             pad_token_id=build.pad_id())[0, enc["input_ids"].shape[1]:]
        return processor.tokenizer.decode(out, skip_special_tokens=True).strip()

    model.eval()
    with torch.no_grad():
        scores = score_vision(answer, n, seed)
    model.train()
    return {k: v for k, v in scores.items() if ":" not in k}  # families and "all"


def train(out: Path, steps: int = 2200, batch_size: int = 8, lr: float = 2e-3, seed: int = 0,
          text_folder: Path | None = None, vision_lr_scale: float = 2.0, sincos: bool = True, dense_weight: float = 0.5) -> Path:
    from safetensors.torch import load_file

    from phi3lab.models.phi3_v import Phi3VForCausalLM, Phi3VProcessor

    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    text_folder = text_folder or embedded_dir() / "phi3lab-tiny"
    write_vision_files(out)
    processor = Phi3VProcessor.from_pretrained(out)
    end_id, assistant_id = tokenizer.special_id("<|end|>"), tokenizer.special_id("<|assistant|>")
    model = Phi3VForCausalLM(vision_config())
    model.config._attn_implementation = "sdpa"
    text_weights = load_file(str(text_folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(text_weights, strict=False)
    assert not unexpected and all("vision_embed_tokens" in k for k in missing), (missing, unexpected)
    if sincos:
        start_positions(model)
    model.train()
    stream = vision_data.training_examples(steps * batch_size, seed)
    order = random.Random(f"vision-turns-{seed}")
    print(f"training the vision model: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{steps} steps of {batch_size} pictures drawn on the fly", flush=True)

    def next_batch():
        items = []
        for ex in (next(stream) for _ in range(batch_size)):
            item = encode(processor, vision_data.conversation(ex, order), ex.image, end_id, assistant_id)
            items.append(item | ({"cell_targets": cell_targets(ex)} if dense_weight else {}))
        return collate(items, build.pad_id())

    def check(step):
        acc = quick_accuracy(model, processor)
        print(f"  step {step:5d}  held-out check: " + "  ".join(f"{k} {100 * v:.0f}%" for k, v in acc.items()),
              flush=True)

    trained = DenseProbe(model, dense_weight) if dense_weight else model
    started = optimise(trained, next_batch, steps, lr, warmup=100, log_every=100,
                       lr_scale={"model.vision_embed_tokens.": vision_lr_scale}, check=check, check_every=400)
    if dense_weight:
        trained.detach()
    model.eval()
    build.save_weights(model, out)
    print(f"saved {out} after {time.perf_counter() - started:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    import sys

    train(Path(sys.argv[1]) if len(sys.argv) > 1 else embedded_dir() / "phi3lab-tiny-vision")
