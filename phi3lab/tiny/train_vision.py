"""Train the embedded tiny Phi-3-vision (``python -m phi3lab.tiny.train vision``).

The architecture is the native Phi-3-vision of :mod:`phi3lab.models.phi3_v` with the real HD
transform and LongRoPE, shrunk: the language model is the tiny text model's (and starts from its
trained weights), the CLIP tower has 3 layers of width 64 (features from the second) at the real 336-pixel, 14-pixel-patch
geometry, and pictures use ``num_crops=1`` (a global view plus one crop: 313 image tokens).
Pictures and questions are drawn on the fly by :mod:`phi3lab.tiny.vision_data`.
"""

from __future__ import annotations

import json
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


def encode(processor, example, end_id: int, assistant_id: int) -> dict:
    prompt = processor.tokenizer.apply_chat_template(vision_data.messages(example), tokenize=False)
    enc = processor(prompt, [example.image])
    ids = enc["input_ids"][0]
    start = int((ids == assistant_id).nonzero()[-1]) + 1
    labels = torch.full_like(ids, -100)
    labels[start:] = ids[start:]
    stop = start + int((ids[start:] == end_id).nonzero()[0]) + 1
    labels[stop:] = -100
    return {"input_ids": ids, "labels": labels, "pixel_values": enc["pixel_values"][0], "image_sizes": enc["image_sizes"][0]}


def collate(items: list[dict], pad: int) -> dict:
    width = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, x in enumerate(items):
        ids[row, :len(x["input_ids"])] = x["input_ids"]
        labels[row, :len(x["labels"])] = x["labels"]
    return {"input_ids": ids, "labels": labels, "pixel_values": torch.stack([x["pixel_values"] for x in items]),
            "image_sizes": torch.stack([x["image_sizes"] for x in items])}


def train(out: Path, steps: int = 2400, batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
          text_folder: Path | None = None) -> Path:
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
    model.train()
    stream = vision_data.examples(steps * batch_size, seed, "train")
    print(f"training the vision model: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{steps} steps of {batch_size} pictures drawn on the fly", flush=True)

    def next_batch():
        return collate([encode(processor, next(stream), end_id, assistant_id) for _ in range(batch_size)],
                       build.pad_id())

    started = optimise(model, next_batch, steps, lr, warmup=100, log_every=100)
    model.eval()
    build.save_weights(model, out)
    print(f"saved {out} after {time.perf_counter() - started:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    import sys

    train(Path(sys.argv[1]) if len(sys.argv) > 1 else embedded_dir() / "phi3lab-tiny-vision")
