"""The embedded models' tokenizer: a small BPE with Phi-3's pipeline and special tokens.

It mirrors the official Phi-3 ``tokenizer.json`` layout so that every piece of phi3lab that
handles real Phi-3 tokenizers is exercised by the tiny models too:

* ids 0, 1, 2 are ``<unk>``, ``<s>``, ``</s>``; ids 3–258 are the byte-fallback pieces
  ``<0x00>``…``<0xFF>``; learned pieces follow;
* the normalizer prepends ``▁`` and replaces spaces by ``▁`` (so ``<|user|>\\n`` becomes
  ``<|user|>``, ``▁``, ``\\n`` exactly as in Phi-3), BPE with byte fallback, and the
  Replace/ByteFallback/Fuse/Strip decoder;
* it is trained once on the synthetic corpus (``python -m phi3lab.tiny.tokenizer``) and frozen in
  ``data/tokenizer/tokenizer.json``: both embedded models share it, and retraining a model never
  changes its ids;
* the chat special tokens sit right after the base vocabulary in Phi-3's order, so each has the
  same offset from the base size as in Phi-3 (``<|endoftext|>`` = base = 2000, ``<|end|>`` = base + 7,
  ``<|user|>`` = base + 10), with Phi-3-vision's ``rstrip`` flags — except ``<|image|>``: Phi-3's
  offset is 44, but the tokenizers library numbers added tokens without gaps, so it is base + 11
  (2011).  :func:`special_id` reads the ids from the frozen file, never from :data:`SPECIALS`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

BASE_VOCAB = 2000
VOCAB_SIZE = BASE_VOCAB + 64  # the embedding is padded past the specials, as Phi-3 pads 32011 to 32064
SPECIALS = {  # offset from BASE_VOCAB -> (token, rstrip), as in Phi-3 (32000 + offset)
    0: ("<|endoftext|>", False),
    1: ("<|assistant|>", True),
    2: ("<|placeholder1|>", True),
    3: ("<|placeholder2|>", True),
    4: ("<|placeholder3|>", True),
    5: ("<|placeholder4|>", True),
    6: ("<|system|>", False),
    7: ("<|end|>", False),
    8: ("<|placeholder5|>", True),
    9: ("<|placeholder6|>", True),
    10: ("<|user|>", False),
    44: ("<|image|>", True),
}
HEAD = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
_BOS = {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [
        {"SpecialToken": {"id": "<s>", "type_id": 0}},
        {"Sequence": {"id": "A", "type_id": 0}},
        {"SpecialToken": {"id": "<s>", "type_id": 1}},
        {"Sequence": {"id": "B", "type_id": 1}},
    ],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
}


def _added(id_: int, content: str, *, rstrip: bool = False, special: bool = True) -> dict:
    return {
        "id": id_,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": rstrip,
        "normalized": False,
        "special": special,
    }


def train(texts: Iterable[str], *, add_bos: bool) -> Tokenizer:
    """Train the BPE on ``texts`` and return a tokenizer in Phi-3's layout.

    Args:
        texts: training sentences.
        add_bos: whether encoding with special tokens prepends ``<s>`` (Phi-3-vision's
            tokenizer does; the July 2024 Phi-3-mini tokenizer does not).
    """
    learned = BASE_VOCAB - len(HEAD)
    trainer_tok = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True))
    trainer_tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # Training splits at newlines and word starts so that no piece spans "▁\n" (Phi-3 has none);
    # the saved tokenizer has no pre-tokenizer, like Phi-3's.
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Split("▁", behavior="merged_with_next"),
        ]
    )
    trainer = BpeTrainer(vocab_size=learned, min_frequency=1, show_progress=False, special_tokens=[])
    trainer_tok.train_from_iterator(texts, trainer)
    spec = json.loads(trainer_tok.to_str())
    pieces = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {tok: i for i, tok in enumerate(HEAD)}
    for tok, _ in pieces:
        if tok not in vocab and "\n" not in tok:  # newline stays the byte piece <0x0A>, as in Phi-3
            vocab[tok] = len(vocab)
    # Pad with unused pieces so the base vocabulary has exactly BASE_VOCAB entries.
    while len(vocab) < BASE_VOCAB:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    if len(vocab) > BASE_VOCAB:
        raise RuntimeError(f"the trained vocabulary has {len(vocab)} pieces, over {BASE_VOCAB}")

    spec["model"]["vocab"] = vocab
    spec["pre_tokenizer"] = None
    spec["decoder"] = json.loads(
        decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        ).__getstate__()
    )
    added = [_added(0, "<unk>"), _added(1, "<s>"), _added(2, "</s>", rstrip=True, special=False)]
    added += [_added(BASE_VOCAB + off, tok, rstrip=rs) for off, (tok, rs) in sorted(SPECIALS.items())]
    spec["added_tokens"] = added
    spec["post_processor"] = _BOS if add_bos else None
    return Tokenizer.from_str(json.dumps(spec))


def path() -> Path:
    """The frozen tokenizer that both embedded models use: ``data/tokenizer/tokenizer.json``."""
    from phi3lab.paths import data_dir

    return data_dir() / "tokenizer" / "tokenizer.json"


def with_bos(tok: Tokenizer, add_bos: bool) -> Tokenizer:
    """The same tokenizer with or without a ``<s>`` post-processor."""
    spec = json.loads(tok.to_str())
    spec["post_processor"] = _BOS if add_bos else None
    return Tokenizer.from_str(json.dumps(spec))


def load(add_bos: bool = False) -> Tokenizer:
    return with_bos(Tokenizer.from_file(str(path())), add_bos)


def training_texts(n: int = 4000, seed: int = 0) -> Iterable[str]:
    """Plain texts to train the tokenizer on: every message of both splits of the chat corpus, the
    safety prompts, and the vision questions and answers."""
    from phi3lab.tiny import corpus, vision_data

    for split in ("train", "test"):
        for _, messages in corpus.conversations(n, seed, split):
            for m in messages:
                yield m["content"]
                yield "\n" + m["content"]  # as it follows a role token in a rendered chat
    for row in corpus.safety_prompts("train") + corpus.safety_prompts("test"):
        yield row["prompt"]
    yield from vision_data.tokenizer_texts()


def main() -> None:
    """``python -m phi3lab.tiny.tokenizer``: retrain the tokenizer from the corpus into data/tokenizer.

    Every id changes with it, so both embedded models must be retrained afterwards.
    """
    path().parent.mkdir(parents=True, exist_ok=True)
    train(training_texts(), add_bos=False).save(str(path()))
    _added_ids.cache_clear()
    print(f"wrote {path()}; every embedded model must be retrained from scratch (each card says how)")


def special_id(token: str) -> int:
    """The id of a special token in the frozen tokenizer, as ``data/tokenizer/tokenizer.json`` numbers it.

    Examples:
        >>> special_id("<|end|>"), special_id("<|image|>")
        (2007, 2011)
    """
    ids = _added_ids(str(path()))
    if token not in ids:
        raise KeyError(f"{token!r} is not a special token of {path()}; it has {', '.join(sorted(ids))}")
    return ids[token]


@lru_cache(maxsize=4)
def _added_ids(file: str) -> dict[str, int]:
    return {t["content"]: int(t["id"]) for t in json.loads(Path(file).read_text())["added_tokens"]}


if __name__ == "__main__":
    main()
