"""The embedded models' folders in the layout of a real Phi-3 checkpoint.

A folder holds ``config.json``, ``generation_config.json``, ``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``, ``model.safetensors`` and a model card
(``README.md``), so :func:`phi3lab.load` reads it exactly as it reads a downloaded checkpoint.
:mod:`phi3lab.tiny.train` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import GenerationConfig, Phi3Config

from phi3lab.runtime.registry import ORIGINAL_CONTEXT
from phi3lab.tiny import tokenizer

TEMPLATE_JULY_2024 = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
STOP_TOKENS = ("<|endoftext|>", "<|assistant|>", "<|end|>")


def text_config() -> Phi3Config:
    """The text model: Phi-3-mini's architecture, shrunk (4 layers, hidden 128, 4 heads of 32)."""
    eot = tokenizer.special_id("<|endoftext|>")
    return Phi3Config(
        vocab_size=tokenizer.VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=ORIGINAL_CONTEXT,
        original_max_position_embeddings=ORIGINAL_CONTEXT,
        sliding_window=2047,
        bos_token_id=1,
        eos_token_id=eot,
        pad_token_id=eot,
        tie_word_embeddings=False,
        dtype="float32",
    )


def write_tokenizer(folder: Path, *, add_bos: bool, template: str, max_length: int) -> None:
    """The frozen project tokenizer (``data/tokenizer``), with or without BOS, and its configs."""
    tokenizer.load(add_bos=add_bos).save(str(folder / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"}
    config = {
        **specials,
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": max_length,
        "padding_side": "left",
        "tokenizer_class": "LlamaTokenizer",  # as in the real checkpoints; phi3lab must cope with it
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def pad_id() -> int:
    return tokenizer.special_id("<|endoftext|>")


def stop_ids() -> list[int]:
    return [tokenizer.special_id(t) for t in STOP_TOKENS]


def write_text_files(folder: Path) -> Path:
    """Everything of the text model's folder but the weights: configs and tokenizer files."""
    folder.mkdir(parents=True, exist_ok=True)
    text_config().save_pretrained(folder)
    GenerationConfig(bos_token_id=1, eos_token_id=stop_ids(), pad_token_id=pad_id(), do_sample=False).save_pretrained(
        folder
    )
    write_tokenizer(folder, add_bos=False, template=TEMPLATE_JULY_2024, max_length=ORIGINAL_CONTEXT)
    return folder


def save_weights(model, folder: Path) -> None:
    """Write ``model.safetensors`` (float32) and ``config.json``, keeping the folder's
    ``generation_config.json`` (save_pretrained would replace it with one derived from the config)."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig.from_pretrained(folder)
    model.save_pretrained(folder)


def write_card(
    folder: Path,
    *,
    title: str,
    architecture: str,
    data: str,
    aids: str,
    command: str,
    results: str,
    reproduction: str = "",
    threads: str = "one thread",
) -> None:
    """The model card: what it is, what it was trained on and with which training aids (anything beside
    the answers' loss that shaped it), how to rebuild it, how well it does."""
    card = f"""# {title}

An embedded model shipped with phi3lab for **teaching and tests — not a real assistant**. It has the
exact Phi-3 architecture at a tiny size, was trained by phi3lab itself on synthetic tasks, and
loads offline through the same code path as a real checkpoint (`phi3lab.load("{folder.name.replace("phi3lab-", "")}")`).

## Architecture
{architecture}

## Data
{data}

## Training aids
{aids}

## Training
`{command}` — deterministic (seeded data, initialisation and batch order; {threads}), on a
2-core CPU.

## Held-out results
```
{results}
```
{reproduction}
## Intended use
Notebooks, demos and CI: chats, pictures and refusals small enough to look inside on a CPU (what its
training aids put in is listed above, so it is never mistaken for a finding). Its knowledge is a handful of synthetic task families; it
knows nothing else and should never be used to answer real questions.
"""
    (folder / "README.md").write_text(card)
