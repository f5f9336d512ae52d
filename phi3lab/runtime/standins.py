"""Random-weight stand-ins for the Phi-3 family: real layouts and configs, no download.

A stand-in is a checkpoint folder in the official layout — ``config.json`` with the published
fields (a Phi-3.5-vision one names rope type ``"su"`` and forces flash-attention 2, as the real file
does), ``model.safetensors`` with the official key names, ``generation_config.json``, the tokenizer
files and, for vision models, ``preprocessor_config.json`` with the published ``num_crops`` — but
random weights and, by default, fewer layers.  :func:`phi3lab.load` reads it like the real thing,
so loading, memory plans, quantization, several-image prompts and Phi-4-mini's partial rotary can be
tried and tested offline.

* ``width="full"`` keeps the published widths (hidden size, heads, MLP, vocabulary), so a 2-layer
  stand-in of Phi-3-mini weighs what 2 of its 32 layers plus its embeddings weigh: what
  ``benchmarks/memory_estimate.py`` measures against the estimate;
* ``width="tiny"`` shrinks every width (hidden 64 or so) for fast tests.

The tokenizer is copied from an embedded model (or a folder you pass, e.g. the official Phi-3-vision
tokenizer of the reference fixtures); its ids are not the published model's, so the stop ids written
to ``generation_config.json`` are that tokenizer's own.  A stand-in answers nothing sensible: it is
for shapes, memory and plumbing, never for outputs.

    >>> import tempfile, phi3lab
    >>> folder = write_standin(tempfile.mkdtemp() + "/p35v", "microsoft/Phi-3.5-vision-instruct")
    >>> lab = phi3lab.load(folder, verbose=False)
    >>> lab.num_crops, lab.spec.family
    (4, 'phi3.5')
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from phi3lab.paths import embedded_dir
from phi3lab.runtime.registry import ORIGINAL_CONTEXT, Architecture, ModelSpec, lookup

__all__ = ["write_standin", "standin_config", "WIDTHS"]

WIDTHS = ("tiny", "full")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Phi-4-mini's chat template as its model card shows the format (no newline after the role tags);
# written into Phi-4-mini stand-ins only, which say they are unverified.
_PHI4_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
_TINY_CLIP = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def _tiny(arch: Architecture) -> Architecture:
    """The same shape of model, every width shrunk (keeps grouped kv and partial rotary)."""
    groups = max(1, arch.heads // arch.kv_heads)
    kv_heads = 2 if groups > 1 and arch.heads % 3 == 0 else (1 if groups > 1 else 4)
    heads = kv_heads * groups if groups > 1 else 4
    return dataclasses.replace(
        arch,
        hidden=16 * heads,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=16,
        intermediate=128,
        vision_hidden=_TINY_CLIP["hidden_size"] if arch.vision_parameters else 0,
        vision_layers=_TINY_CLIP["num_hidden_layers"] if arch.vision_parameters else 0,
        vision_intermediate=_TINY_CLIP["intermediate_size"] if arch.vision_parameters else 0,
    )


def _factors(n: int, top: float) -> list[float]:
    """``n`` LongRoPE factors rising from 1 to ``top`` (random weights: only the shape matters)."""
    return [round(1.0 + (top - 1.0) * k / max(1, n - 1), 4) for k in range(n)]


def standin_config(
    spec: ModelSpec, *, layers: int = 2, width: str = "tiny", vocab: int | None = None, image_token_id: int = 32044
) -> dict:
    """The ``config.json`` of a stand-in for ``spec``, in the official file's fields.

    Args:
        spec: a registry entry (``phi3lab.KNOWN_MODELS[...]``) with an :class:`Architecture`.
        layers: decoder layers (the published model's count is ``spec.architecture.layers``).
        width: ``"full"`` (the published widths) or ``"tiny"`` (everything shrunk).
        vocab: the vocabulary size (default the published one; a tiny stand-in needs at least its
            tokenizer's size).
        image_token_id: the ``<|image|>`` id of the stand-in's tokenizer (vision models).
    """
    if width not in WIDTHS:
        raise ValueError(f"width must be one of {WIDTHS}, got {width!r}")
    if spec.architecture is None:
        raise ValueError(f"{spec.name} has no architecture numbers in the registry; a stand-in needs them")
    arch = spec.architecture if width == "full" else _tiny(spec.architecture)
    rotary_half = int(arch.head_dim * arch.partial_rotary_factor) // 2
    config = {
        "_name_or_path": spec.name.split("/")[-1],
        "architectures": ["Phi3VForCausalLM" if spec.modality == "vision" else "Phi3ForCausalLM"],
        "model_type": "phi3_v" if spec.modality == "vision" else "phi3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "embd_pdrop": 0.0,
        "eos_token_id": 2 if spec.modality == "vision" else 32000,
        "hidden_act": "silu",
        "hidden_size": arch.hidden,
        "initializer_range": 0.02,
        "intermediate_size": arch.intermediate,
        "max_position_embeddings": spec.context_length,
        "num_attention_heads": arch.heads,
        "num_hidden_layers": int(layers),
        "num_key_value_heads": arch.kv_heads,
        "original_max_position_embeddings": ORIGINAL_CONTEXT,
        "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "sliding_window": arch.sliding_window,
        "tie_word_embeddings": arch.tied_embeddings,
        "torch_dtype": spec.recommended_dtype,
        "use_cache": True,
        "vocab_size": int(vocab or arch.vocab),
    }
    if width == "tiny" or arch.head_dim != arch.hidden // arch.heads:
        config["head_dim"] = arch.head_dim
    if arch.partial_rotary_factor != 1.0:
        config["partial_rotary_factor"] = arch.partial_rotary_factor
    if spec.long_context:
        kind = "su" if spec.modality == "vision" else "longrope"  # the vision file still says "su"
        config["rope_scaling"] = {
            "type": kind,
            "short_factor": _factors(rotary_half, 3.05),
            "long_factor": _factors(rotary_half, 64.8),
        }
    if spec.family == "phi4":
        config.update(bos_token_id=199999, eos_token_id=199999, pad_token_id=199999)
    if spec.modality == "vision":
        config.update(
            _attn_implementation="flash_attention_2",  # as the official file: phi3lab must ignore it
            embd_layer={
                "embedding_cls": "image",
                "hd_transform_order": "sub_glb",
                "projection_cls": "mlp",
                "use_hd_transform": True,
                "with_learnable_separator": True,
            },
            img_processor={
                "image_dim_out": arch.vision_hidden,
                "model_name": "openai/clip-vit-large-patch14-336",
                "name": "clip_vision_model",
                "num_img_tokens": 144,
            },
            image_token_id=int(image_token_id),
        )
        if width == "tiny":  # the official file hard-codes CLIP ViT-L/14-336; a shrunk tower says so
            config["img_processor"]["vision_config"] = {
                **_TINY_CLIP,
                "image_size": 336,
                "patch_size": 14,
                "num_channels": 3,
                "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-05,
            }
    return config


def _tokenizer_source(spec: ModelSpec, tokenizer: str | Path | None) -> Path:
    if tokenizer is not None:
        return Path(tokenizer)
    return embedded_dir() / ("phi3lab-tiny-vision" if spec.modality == "vision" else "phi3lab-tiny")


def _added(folder: Path) -> dict[str, int]:
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    return {entry["content"]: int(entry["id"]) for entry in data.get("added_tokens", [])}


def write_standin(
    folder: str | Path,
    model: str = "microsoft/Phi-3-mini-4k-instruct",
    *,
    layers: int = 2,
    width: str = "tiny",
    dtype: str = "float32",
    tokenizer: str | Path | None = None,
    num_crops: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a random-weight stand-in of ``model`` (a registry name) into ``folder`` and return it.

    Args:
        folder: where to write; it must not exist yet or be empty (nothing is overwritten).
        model: a hub id phi3lab knows (``phi3lab.KNOWN_MODELS``).
        layers: decoder layers to keep.
        width: ``"tiny"`` (fast) or ``"full"`` (the published widths).
        dtype: the weights' dtype on disk (``"float32"``, ``"bfloat16"``, ``"float16"``).
        tokenizer: a folder to copy ``tokenizer.json`` and friends from (default an embedded model's).
        num_crops: vision models' crop budget for ``preprocessor_config.json`` (default the published one).
        seed: the random weights' seed.

    Raises:
        ValueError: an unknown model, width or dtype; FileExistsError: a non-empty ``folder``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    import phi3lab.models  # noqa: F401  registers phi3_v

    spec = lookup(model)
    if spec is None:
        raise ValueError(f"no registry entry for {model!r}; use one of phi3lab.KNOWN_MODELS")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'float16', got {dtype!r}")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty; write a stand-in into a new folder")
    source = _tokenizer_source(spec, tokenizer)
    added = _added(source)
    n_tokens = max([*added.values(), len(json.loads((source / "tokenizer.json").read_text())["model"]["vocab"]) - 1])
    vocab = None if width == "full" else n_tokens + 1
    config = standin_config(spec, layers=layers, width=width, vocab=vocab, image_token_id=added.get("<|image|>", 32044))
    config["torch_dtype"] = dtype
    if width == "tiny" and "<|endoftext|>" in added:  # the published ids lie outside a tiny vocabulary
        config["pad_token_id"] = added["<|endoftext|>"]
        if spec.modality == "text":
            config["eos_token_id"] = added["<|endoftext|>"]
        if spec.family == "phi4":
            config["bos_token_id"] = added["<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    if spec.family == "phi4":
        tok_config = json.loads((folder / "tokenizer_config.json").read_text())
        tok_config["chat_template"] = _PHI4_TEMPLATE
        (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    stops = [added[t] for t in ("<|end|>", "<|endoftext|>", "<|assistant|>") if t in added]
    if spec.modality == "vision" or spec.family == "phi4":
        stops = stops[:2]
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": stops, "do_sample": False}, indent=2)
    )
    if spec.modality == "vision":
        from phi3lab.models.phi3_v.hd import CLIP_MEAN, CLIP_STD

        preprocessor = {
            "num_crops": int(num_crops or spec.num_crops),
            "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD),
            "image_processor_type": "Phi3VImageProcessor",
            "processor_class": "Phi3VProcessor",
            "num_img_tokens": 144,
        }
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    built = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    torch.manual_seed(seed)
    with torch.device("cpu"):
        skeleton = AutoModelForCausalLM.from_config(built, dtype=getattr(torch, dtype), trust_remote_code=False)
    state = {k: v.contiguous() for k, v in skeleton.state_dict().items()}
    if config["tie_word_embeddings"]:
        state.pop("lm_head.weight", None)  # the checkpoint stores the shared matrix once
    save_file(state, folder / "model.safetensors", metadata={"format": "pt", "phi3lab": "random stand-in"})
    del skeleton, state
    return folder
