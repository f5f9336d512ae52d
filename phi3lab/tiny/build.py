"""Write an embedded model folder in the layout of a real Phi-3 checkpoint.

    python -m phi3lab.tiny.build text      # data/models/phi3lab-tiny, deterministic

The folder holds ``config.json``, ``generation_config.json``, ``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``, ``model.safetensors`` and a model card,
so :func:`phi3lab.load` reads it exactly as it reads a downloaded checkpoint.  Until the trained
tiny models land, the text model's weights are random but reproducible (seed 0).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

from phi3lab.paths import embedded_dir
from phi3lab.tiny import corpus, tokenizer

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
    """The text model: Phi-3-mini's architecture, shrunk (4 layers, hidden 128, 4 heads)."""
    eot = tokenizer.special_id("<|endoftext|>")
    return Phi3Config(
        vocab_size=tokenizer.VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        sliding_window=2047,
        bos_token_id=1,
        eos_token_id=eot,
        pad_token_id=eot,
        tie_word_embeddings=False,
        dtype="float32",
    )


def write_tokenizer(folder: Path, *, add_bos: bool, template: str, max_length: int) -> None:
    tok = tokenizer.train(corpus.tokenizer_texts(), add_bos=add_bos)
    tok.save(str(folder / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                "unk_token": "<unk>"}
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


def build_text(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = text_config()
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config).eval()
    model.save_pretrained(folder)
    stops = [tokenizer.special_id(t) for t in STOP_TOKENS]
    GenerationConfig(bos_token_id=1, eos_token_id=stops, pad_token_id=stops[0], do_sample=False).save_pretrained(folder)
    write_tokenizer(folder, add_bos=False, template=TEMPLATE_JULY_2024, max_length=4096)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3lab.tiny.build", description=__doc__.split("\n")[0])
    parser.add_argument("which", choices=["text"])
    parser.add_argument("--out", type=Path, default=None, help="folder to write (default: data/models/...)")
    args = parser.parse_args(argv)
    out = build_text(args.out or embedded_dir() / "phi3lab-tiny")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
