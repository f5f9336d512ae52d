"""Train the embedded tiny Phi-3-vision (``python -m phi3lab.tiny.train vision``).

The architecture is the native Phi-3-vision of :mod:`phi3lab.models.phi3_v` with the real HD
transform and LongRoPE, shrunk: the language model is the tiny text model's (and starts from its
trained weights), the CLIP tower has 3 layers of width 64 (features from the second) at the real 336-pixel, 14-pixel-patch
geometry, and pictures use ``num_crops=1`` (a global view plus one crop: 313 image tokens).
Pictures and questions are drawn on the fly by :mod:`phi3lab.tiny.vision_data`; each picture
is one multi-turn conversation asking everything it answers.

The CLIP tower starts from scratch, which on its own takes thousands of steps to find "what is
where", and the language model must learn to find the asked-about object among 313 image tokens.
Three aids shorten that, all from the renderer's ground truth and none of them in the checkpoint
(:class:`TrainingAids`): position embeddings that start from a sine-cosine table
(:func:`start_positions`), linear read-outs of every cell's part attributes from the projected
image tokens, and a routing loss that points head 0 of language-model layers 1–3, at the answer
positions, at the tokens covering what the question is about.  Every 400 steps a quick held-out
check prints the accuracy so far.

Each step runs CLIP once per distinct crop (at ``num_crops=1`` the global view is the crop) and
applies the output head only at the answer positions.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from phi3lab.inspect.hooks import Hooks
from phi3lab.models.phi3_v.hd import CELLS, CLIP_MEAN, CLIP_STD
from phi3lab.paths import embedded_dir
from phi3lab.runtime.registry import ORIGINAL_CONTEXT
from phi3lab.tiny import build, tokenizer, vision_data
from phi3lab.tiny.cells import NUM_CROPS, cell_parts, cell_targets, view_cells
from phi3lab.tiny.optim import optimise

THREADS = 1  # one thread: these models are small, and on a shared 2-core machine two threads wait on each other
STEPS = 2500
ROUTE_WEIGHT = 0.0  # the routing aid's weight in the vision model's training (0: none; see TrainingAids)
READER_ROUTE_WEIGHT = 0.2  # the reader's: its answers are routed to the written words they copy
CHECK_EVERY = 500  # steps between the quick held-out checks printed while training
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
        **text
        | dict(
            max_position_embeddings=131072, original_max_position_embeddings=ORIGINAL_CONTEXT, sliding_window=131072
        ),
        rope_scaling={
            "type": "su",
            "short_factor": [1.0 + 0.1 * i / half for i in range(half)],
            "long_factor": [1.0 + 7.0 * i / half for i in range(half)],
        },
        embd_layer={
            "embedding_cls": "image",
            "hd_transform_order": "sub_glb",
            "projection_cls": "mlp",
            "use_hd_transform": True,
            "with_learnable_separator": True,
        },
        img_processor={
            "name": "clip_vision_model",
            "model_name": "openai/clip-vit-large-patch14-336",
            "image_dim_out": 64,
            "num_img_tokens": CELLS * CELLS,
            "vision_config": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "num_hidden_layers": 3,
                "image_size": 336,
                "patch_size": 14,
                "num_channels": 3,
                "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5,
            },
        },
        image_token_id=tokenizer.special_id("<|image|>"),
        architectures=["Phi3VForCausalLM"],
    )


def write_vision_files(folder: Path) -> Path:
    from transformers import GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    vision_config().save_pretrained(folder)
    stops = [tokenizer.special_id("<|end|>"), tokenizer.special_id("<|endoftext|>")]
    GenerationConfig(bos_token_id=1, eos_token_id=stops, pad_token_id=build.pad_id(), do_sample=False).save_pretrained(
        folder
    )
    build.write_tokenizer(folder, add_bos=True, template=TEMPLATE_VISION, max_length=131072)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "num_crops": NUM_CROPS,
                "image_mean": list(CLIP_MEAN),
                "image_std": list(CLIP_STD),
                "image_processor_type": "Phi3VImageProcessor",
                "processor_class": "Phi3VProcessor",
                "num_img_tokens": CELLS * CELLS,
            },
            indent=2,
        )
        + "\n"
    )
    return folder


def encode(processor, conversation: list[dict], image, end_id: int, assistant_id: int) -> dict:
    """Ids, pixels and labels of one conversation about one picture; the labels are every answer
    and the ``<|end|>`` that closes it (the rest is -100).  ``turns`` holds each answer's span
    ``(first, end)``: the positions of its first token and of its ``<|end|>``."""
    prompt = processor.tokenizer.apply_chat_template(conversation, tokenize=False)
    enc = processor(prompt, [image] if image is not None else None)
    ids = enc["input_ids"][0]
    labels = torch.full_like(ids, -100)
    turns = []
    for start in (ids == assistant_id).nonzero()[:, 0].tolist():
        stop = start + 1 + int((ids[start + 1 :] == end_id).nonzero()[0])
        labels[start + 1 : stop + 1] = ids[start + 1 : stop + 1]
        turns.append((start + 1, stop))
    if image is None:  # a typed conversation (the reader's text-borne rows)
        return {"input_ids": ids, "labels": labels, "turns": turns}
    return {
        "input_ids": ids,
        "labels": labels,
        "pixel_values": enc["pixel_values"][0],
        "image_sizes": enc["image_sizes"][0],
        "turns": turns,
    }


def _norm_word(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())


def word_routes(example: vision_data.VisionExample, answer: str, token_ids: list[int], decode) -> list[tuple[int, ...]]:
    """For each token of ``answer`` (``token_ids``, as encoded in the conversation), the part ids of the
    written word it copies — reading pictures only.  The answer's words are matched to the written words
    in order (the text read back matches word for word; a done request copies its task's words); a token
    whose word is not written gets ``()``.  ``decode(ids) -> str`` is the tokenizer's."""
    written = [(_norm_word(w), ids) for w, ids in example.words]
    spoken = answer.split(" ")
    starts, at = [], 0
    for w in spoken:
        starts.append(at)
        at += len(w) + 1
    match, cursor = [], 0
    for w in spoken:
        key = _norm_word(w)
        hit = next((j for j in range(cursor, len(written)) if key and written[j][0] == key), None)
        if hit is None:
            match.append(())
        else:
            match.append(written[hit][1])
            cursor = hit + 1
    routes = []
    for k in range(len(token_ids)):
        char = len(decode(token_ids[:k]).lstrip()) + (1 if k else 0)  # where token k starts, in the answer
        word = max(i for i, s in enumerate(starts) if s <= char) if char < len(answer) else len(spoken) - 1
        routes.append(match[word])
    return routes


def route_targets(
    example: vision_data.VisionExample,
    conversation: list[dict],
    turns: list[tuple[int, int]],
    parts: torch.Tensor | None = None,
    ids: torch.Tensor | None = None,
    decode=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each answer should look: ``(queries, targets)`` with ``queries`` the positions whose
    next token is one of an answer's (its ``<|end|>`` aside) and ``targets[i]`` the image tokens
    (of the picture's 313, both views) covering the parts its question asks about
    (:func:`phi3lab.tiny.vision_data.question_parts`).  Answers whose parts cover no cell are left out.

    On reading pictures, given the conversation's ``ids`` and the tokenizer's ``decode``, each answer
    token is routed to the written word it copies (:func:`word_routes`), where that word covers a cell;
    the other tokens, to all the writing."""
    parts = cell_parts(example) if parts is None else parts
    cells, length = view_cells()
    questions = [m["content"].removeprefix("<|image_1|>\n") for m in conversation if m["role"] == "user"]
    answers = [m["content"] for m in conversation if m["role"] == "assistant"]

    def mask_of(part_ids) -> torch.Tensor | None:
        wanted = torch.isin(parts, torch.tensor(list(part_ids), dtype=parts.dtype))
        if not bool(wanted.any()):
            return None
        mask = torch.zeros(length, dtype=torch.bool)
        mask[cells[torch.cat([wanted, wanted])]] = True
        return mask

    queries, targets = [], []
    for question, answer, (first, end) in zip(questions, answers, turns):
        whole = mask_of(vision_data.question_parts(example, question))
        if whole is None:
            continue
        routes = (
            word_routes(example, answer, ids[first:end].tolist(), decode)
            if example.words and ids is not None and decode is not None
            else [()] * (end - first)
        )
        for q, route in zip(range(first - 1, end - 1), routes):
            queries.append(q)
            mask = mask_of(route) if route else None
            targets.append(whole if mask is None else mask)
    return torch.tensor(queries, dtype=torch.long), torch.stack(targets) if targets else torch.zeros(
        0, length, dtype=torch.bool
    )


def answer_loss(model, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The causal-LM loss of ``model(..., labels=labels)`` (mean cross-entropy of every labelled next
    token), with the output head applied only where a label follows: some 30 of a conversation's
    ~400 positions, where the model's own loss would take the 2,064-way head over all of them."""
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


class TrainingAids(torch.nn.Module):
    """The model in training, with two aids that use the renderer's ground truth and are thrown away
    after training (the checkpoint holds exactly Phi-3-vision's weights):

    * **part read-outs** (``dense_weight``): linear heads that read every cell's part attributes
      from the projected image tokens — dense targets that teach the tiny CLIP tower what is where
      within a few hundred steps, instead of waiting for the answer loss alone to find it;
    * **routing** (``route_weight``): head ``route_head`` of the language-model layers
      ``route_layers``, at the positions that predict an answer, is asked to put its attention
      over the picture's tokens on those covering the parts the question is about
      (:func:`route_targets`) — the "find the triangle" step that the answer loss alone teaches
      slowly.  It is the negative log of the attention mass on those tokens, renormalised over
      the picture's tokens, so the head stays free to look at the question as well.

    ``forward(**batch)`` returns ``loss`` = :func:`answer_loss` + ``dense_weight`` × the mean
    cross-entropy of the read-outs + ``route_weight`` × the mean routing loss.  Call
    :meth:`detach` after training to unhook it from the model."""

    def __init__(
        self,
        model,
        dense_weight: float = 0.5,
        route_weight: float = 0.0,
        route_layers: tuple[int, ...] = (1, 2, 3),
        route_head: int = 0,
    ):
        super().__init__()
        self.model = model
        self.dense_weight, self.route_weight = dense_weight, route_weight
        self.route_layers, self.route_head = route_layers if route_weight else (), route_head
        hidden = model.config.hidden_size
        self.heads = (
            torch.nn.ModuleList(torch.nn.Linear(hidden, len(v) + 1) for v in vision_data.ATTRIBUTES.values())
            if dense_weight
            else torch.nn.ModuleList()
        )
        # what the aids read, through the hook core, with the autograd graph kept
        self.hooks = Hooks(model)
        if dense_weight:
            self.hooks.read("image_embeds", keep="graph")
        if self.route_layers:
            config = model.config
            kv_head = route_head // (config.num_attention_heads // config.num_key_value_heads)
            self.hooks.read("q", list(self.route_layers), heads=[route_head], keep="graph")
            self.hooks.read("k", list(self.route_layers), heads=[kv_head], keep="graph")
        self.hooks.__enter__()
        self.register_buffer("cells", view_cells()[0], persistent=False)

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

    def _forget(self) -> None:
        self.hooks.clear()

    def detach(self) -> None:
        """Unhook from the model (after training), leaving it as it was."""
        self.hooks.close()
        self._forget()

    def dense_loss(self, cell_targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the read-outs over the crop-view and global-view cells."""
        pictures = sorted(layer for site, layer in self.hooks.recorded() if site == "image_embeds")
        tokens = torch.stack([self.hooks.calls("image_embeds", i)[-1].value for i in pictures])[:, self.cells]
        targets = cell_targets.repeat(1, 2, 1)  # the same targets for both views
        return sum(
            self._cross_entropy(head(tokens), targets[..., j], every_cell=(j == self.KIND))
            for j, head in enumerate(self.heads)
        ) / len(self.heads)

    def route_loss(
        self,
        input_ids: torch.Tensor,
        route_rows: torch.Tensor,
        route_queries: torch.Tensor,
        route_targets: torch.Tensor,
    ) -> torch.Tensor:
        """Mean over the routed layers and the queries of −log(attention mass on the targets), the
        head's attention renormalised over the picture's tokens (queries and keys after RoPE)."""
        config = self.model.config
        head_dim = config.hidden_size // config.num_attention_heads
        assert bool((route_rows.diff() >= 0).all()), "route_rows must be in row order, as collate makes them"
        starts = self.model.model.image_positions(input_ids).int().argmax(1).tolist()  # one picture a row
        losses = []
        for layer in self.route_layers:
            # the routed head's rotated queries and keys of the picture forward: [B, T, head_dim]
            q = self.hooks.calls("q", layer)[-1].value[:, :, 0]
            k = self.hooks.calls("k", layer)[-1].value[:, :, 0]
            # row by row, with slices: indexing with repeated rows would sum gradients in a thread-dependent order
            scores = (
                torch.cat(
                    [
                        q[row, route_queries[route_rows == row]] @ k[row, start : start + route_targets.shape[1]].T
                        for row, start in enumerate(starts)
                    ]
                )
                * head_dim**-0.5
            )
            logp = scores.log_softmax(-1).masked_fill(~route_targets, float("-inf"))
            losses.append(-logp.logsumexp(-1).mean())
        return sum(losses) / len(losses)

    def forward(
        self,
        input_ids,
        labels,
        pixel_values,
        image_sizes,
        cell_targets=None,
        route_rows=None,
        route_queries=None,
        route_targets=None,
        text_input_ids=None,
        text_labels=None,
    ):
        self._forget()
        hidden = self.model.model(
            input_ids=input_ids, pixel_values=pixel_values, image_sizes=image_sizes, use_cache=False
        ).last_hidden_state
        out = {"loss": answer_loss(self.model, hidden, labels)}
        if self.dense_weight:
            out["dense_loss"] = self.dense_loss(cell_targets)
            out["loss"] = out["loss"] + self.dense_weight * out["dense_loss"]
        if self.route_weight and route_rows is not None and len(route_rows):
            out["route_loss"] = self.route_loss(input_ids, route_rows, route_queries, route_targets)
            out["loss"] = out["loss"] + self.route_weight * out["route_loss"]
        if text_input_ids is not None:  # typed conversations, no picture: after the aids have read their hooks
            typed = self.model.model(input_ids=text_input_ids, use_cache=False).last_hidden_state
            out["text_loss"] = answer_loss(self.model, typed, text_labels)
            out["loss"] = out["loss"] + out["text_loss"]
        return out


DESCRIBE_FIRST = 0.25  # how often a chart, a 3×3 shapes picture or a word is asked "What is shown in this image?" first


def training_item(
    processor, example: vision_data.VisionExample, rng: random.Random, dense: bool = True, route: bool = True
) -> dict:
    """One picture for training: its conversation (:func:`phi3lab.tiny.vision_data.conversation`,
    turns shuffled by ``rng``, the description first one time in four) encoded by :func:`encode`, plus the
    targets of the read-outs (``cell_targets``) and of the routing loss (``route_queries``, ``route_targets``)."""
    conversation = vision_data.conversation(example, rng, DESCRIBE_FIRST)
    item = encode(
        processor, conversation, example.image, tokenizer.special_id("<|end|>"), tokenizer.special_id("<|assistant|>")
    )
    parts = cell_parts(example)
    if dense:
        item["cell_targets"] = cell_targets(example, parts)
    if route:
        item["route_queries"], item["route_targets"] = route_targets(
            example,
            conversation,
            item["turns"],
            parts,
            item["input_ids"],
            lambda t: processor.tokenizer.decode(t, skip_special_tokens=True),
        )
    return item


def collate(items: list[dict], pad: int) -> dict:
    batch = collate_text(items, pad) | {
        "pixel_values": torch.stack([x["pixel_values"] for x in items]),
        "image_sizes": torch.stack([x["image_sizes"] for x in items]),
    }
    if all("cell_targets" in x for x in items):
        batch["cell_targets"] = torch.stack([x["cell_targets"] for x in items])
    if all("route_queries" in x for x in items):
        batch["route_rows"] = torch.cat([torch.full_like(x["route_queries"], row) for row, x in enumerate(items)])
        batch["route_queries"] = torch.cat([x["route_queries"] for x in items])
        batch["route_targets"] = torch.cat([x["route_targets"] for x in items])
    return batch


def position_table(grid: int, dim: int) -> torch.Tensor:
    """A 2-D sine-cosine table ``[1 + grid², dim]`` (zeros for the class token): the first half of the
    channels encodes the patch row, the second half the column, at geometrically spaced frequencies."""
    quarter = dim // 4
    freqs = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )

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


def quick_accuracy(model, processor, n: int = 48, seed: int = 1, new: int = 0) -> dict[str, float]:
    """Greedy exact-answer accuracy per family (and ``"all"``) on ``n`` held-out pictures, and on ``new``
    held-out pictures of the new kinds (``"new"``): the progress check, scored by
    :func:`phi3lab.tiny.evaluate.score_vision` and :func:`~phi3lab.tiny.evaluate.score_new_vision` on the
    model in training (neither draws from the training's random streams)."""
    from phi3lab.tiny.evaluate import score_new_vision, score_vision

    answer = _training_answerer(model, processor, max_new_tokens=24)
    model.eval()
    with torch.no_grad():
        scores = score_vision(lambda ex: answer(ex.image, ex.question), n, seed)
        scores = {k: v for k, v in scores.items() if ":" not in k}  # families and "all"
        if new:
            scores["new"] = score_new_vision(lambda ex: answer(ex.image, ex.question), new, seed, older=False)["all"]
    model.train()
    return scores


def _new_model(out: Path, seed: int):
    """``(processor, model)``: the files written to ``out`` and a freshly initialised model (seeded, 2 threads, sdpa)."""
    from phi3lab.models.phi3_v import Phi3VForCausalLM, Phi3VProcessor

    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    write_vision_files(out)
    processor = Phi3VProcessor.from_pretrained(out)
    model = Phi3VForCausalLM(vision_config())
    model.config._attn_implementation = "sdpa"
    return processor, model


def train(
    out: Path,
    steps: int = STEPS,
    batch_size: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    text_folder: Path | None = None,
    vision_lr_scale: float = 2.0,
    sincos: bool = True,
    dense_weight: float = 0.5,
    route_weight: float = ROUTE_WEIGHT,
) -> Path:
    from safetensors.torch import load_file

    text_folder = text_folder or embedded_dir() / "phi3lab-tiny"
    processor, model = _new_model(out, seed)
    text_weights = load_file(str(text_folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(text_weights, strict=False)
    assert not unexpected and all("vision_embed_tokens" in k for k in missing), (missing, unexpected)
    if sincos:
        start_positions(model)
    model.train()
    stream = vision_data.training_examples(steps * batch_size, seed)
    order = random.Random(f"vision-turns-{seed}")
    print(
        f"training the vision model: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{steps} steps of {batch_size} pictures drawn on the fly",
        flush=True,
    )

    def next_batch():
        items = [
            training_item(processor, next(stream), order, bool(dense_weight), bool(route_weight))
            for _ in range(batch_size)
        ]
        return collate(items, build.pad_id())

    def check(step):
        acc = quick_accuracy(model, processor, n=32, new=16)
        print(
            f"  step {step:5d}  held-out check: " + "  ".join(f"{k} {100 * v:.0f}%" for k, v in acc.items()), flush=True
        )

    return _fit(model, out, next_batch, steps, lr, vision_lr_scale, dense_weight, route_weight, check, CHECK_EVERY)


def _fit(
    model,
    out: Path,
    next_batch,
    steps: int,
    lr: float,
    vision_lr_scale: float,
    dense_weight: float,
    route_weight: float,
    check,
    check_every: int,
) -> Path:
    """Train ``model`` with the :class:`TrainingAids`, unhook them and save the weights to ``out``."""
    trained = TrainingAids(model, dense_weight, route_weight)
    started = optimise(
        trained,
        next_batch,
        steps,
        lr,
        warmup=100,
        log_every=100,
        lr_scale={"model.vision_embed_tokens.": vision_lr_scale},
        check=check,
        check_every=check_every,
    )
    trained.detach()
    model.eval()
    build.save_weights(model, out)
    print(f"saved {out} after {time.perf_counter() - started:.0f} s", flush=True)
    return out


# --- the reader: the vision model trained further to read requests off pictures --------------------------

READER_STEPS = 2400
READER_TEXT_ROWS = 4  # typed conversations per step, beside the pictures


def text_batch(processor, conversations: list[list[dict]]) -> dict:
    """Typed conversations (no picture) as ``text_input_ids`` / ``text_labels`` for :class:`TrainingAids`."""
    items = [
        encode(processor, c, None, tokenizer.special_id("<|end|>"), tokenizer.special_id("<|assistant|>"))
        for c in conversations
    ]
    batch = collate_text(items, build.pad_id())
    return {"text_input_ids": batch["input_ids"], "text_labels": batch["labels"]}


def collate_text(items: list[dict], pad: int) -> dict:
    """``input_ids`` (right-padded with ``pad``) and ``labels`` (-100 past each row's end)."""
    width = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, x in enumerate(items):
        ids[row, : len(x["input_ids"])] = x["input_ids"]
        labels[row, : len(x["labels"])] = x["labels"]
    return {"input_ids": ids, "labels": labels}


def _training_answerer(model, processor, max_new_tokens: int = 40):
    end_id = tokenizer.special_id("<|end|>")

    def answer(image, question: str) -> str:
        conversation = [{"role": "user", "content": f"<|image_1|>\n{question}"}]
        prompt = processor.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        enc = processor(prompt, [image])
        enc = {k: enc[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end_id, pad_token_id=build.pad_id()
        )[0, enc["input_ids"].shape[1] :]
        return processor.tokenizer.decode(out, skip_special_tokens=True).strip()

    return answer


FURTHER_STEPS = 600


def train_further(
    out: Path,
    base: Path,
    steps: int = FURTHER_STEPS,
    batch_size: int = 8,
    lr: float = 5e-4,
    seed: int = 1,
    vision_lr_scale: float = 2.0,
    dense_weight: float = 0.5,
    route_weight: float = 0.2,
) -> Path:
    """Train an existing vision checkpoint (``base``) further on the current pictures
    (:func:`phi3lab.tiny.vision_data.training_examples`, seed ``seed``), with the same aids as
    :func:`train` (fresh read-outs; the routing loss at ``route_weight``) — how the shipped
    ``phi3lab-tiny-vision`` was brought from one or two shapes to the pictures the project shows
    (its model card).  Deterministic on one thread."""
    from safetensors.torch import load_file

    processor, model = _new_model(out, seed)
    missing, unexpected = model.load_state_dict(load_file(str(Path(base) / "model.safetensors")), strict=False)
    if missing or unexpected:
        raise ValueError(f"{base} is not a tiny vision checkpoint: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.train()
    stream = vision_data.training_examples(steps * batch_size, seed)
    order = random.Random(f"vision-turns-{seed}")
    print(f"training {base} further: {steps} steps of {batch_size} pictures drawn on the fly", flush=True)

    def next_batch():
        items = [
            training_item(processor, next(stream), order, bool(dense_weight), bool(route_weight))
            for _ in range(batch_size)
        ]
        return collate(items, build.pad_id())

    def check(step):
        acc = quick_accuracy(model, processor, n=32, new=16)
        print(
            f"  step {step:5d}  held-out check: " + "  ".join(f"{k} {100 * v:.0f}%" for k, v in acc.items()), flush=True
        )

    return _fit(model, out, next_batch, steps, lr, vision_lr_scale, dense_weight, route_weight, check, 200)


def train_reader(
    out: Path,
    steps: int = READER_STEPS,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    base: Path | None = None,
    vision_lr_scale: float = 2.0,
    dense_weight: float = 0.5,
    route_weight: float = READER_ROUTE_WEIGHT,
    text_rows: int = READER_TEXT_ROWS,
) -> Path:
    """Train the reader from the vision model's weights (``base``, default the embedded
    ``phi3lab-tiny-vision``): pictures from :func:`phi3lab.tiny.vision_data.reader_training_examples`
    (benign reading half the time, the vision families replayed), plus ``text_rows`` typed conversations
    of the text model's corpus per step (every family, the safety slice's refusals included), so that
    typed requests keep their answers.  The same aids as :func:`train`; deterministic on 2 threads."""
    from safetensors.torch import load_file

    from phi3lab.tiny import corpus
    from phi3lab.tiny.evaluate import score_reading

    base = base or embedded_dir() / "phi3lab-tiny-vision"
    processor, model = _new_model(out, seed)
    missing, unexpected = model.load_state_dict(load_file(str(base / "model.safetensors")), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    model.train()
    pictures = vision_data.reader_training_examples(steps * batch_size, seed)
    typed = (messages for _, messages in corpus.conversations(steps * text_rows, seed + 17, "train"))
    order = random.Random(f"reader-turns-{seed}")
    print(
        f"training the reader from {base.name}: {steps} steps of {batch_size} pictures and {text_rows} typed "
        "conversations",
        flush=True,
    )

    def next_batch():
        items = [
            training_item(processor, next(pictures), order, bool(dense_weight), bool(route_weight))
            for _ in range(batch_size)
        ]
        batch = collate(items, build.pad_id())
        if text_rows:
            batch |= text_batch(processor, [next(typed) for _ in range(text_rows)])
        return batch

    answerer = _training_answerer(model, processor)

    def check(step):
        model.eval()
        with torch.no_grad():
            acc = score_reading(answerer, n=16) | quick_accuracy(model, processor, n=24)
        model.train()
        print(
            f"  step {step:5d}  held-out check: " + "  ".join(f"{k} {100 * v:.0f}%" for k, v in acc.items()), flush=True
        )

    return _fit(model, out, next_batch, steps, lr, vision_lr_scale, dense_weight, route_weight, check, 600)


if __name__ == "__main__":
    import sys

    train(Path(sys.argv[1]) if len(sys.argv) > 1 else embedded_dir() / "phi3lab-tiny-vision")
