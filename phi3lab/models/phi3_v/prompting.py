"""Phi-3-vision's prompt rule: a rendered prompt with ``<|image_N|>`` tags → ``input_ids``.

PHI3_SPEC.md §2.7.  The text is split at each tag, every chunk is tokenized with special tokens
(so each chunk, even an empty one, starts with BOS), and tag ``k`` becomes ``-k`` repeated for
image ``k``'s token count.  Tags must be ``1..n``, each once, in increasing order, one per image:
the model fills image runs in order, so anything else would put features in the wrong place.

This is the one home of the rule; :mod:`phi3lab.prompts.chat` uses it for conversations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from phi3lab.errors import Phi3LabError

__all__ = [
    "left_pad",
    "IMAGE_TAG",
    "ChatFormatError",
    "check_image_tags",
    "image_tag_numbers",
    "tag_number",
    "tokenize_prompt",
]

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")
MAX_TAG_DIGITS = 6  # <|image_999999|>: far more images than any context holds


class ChatFormatError(Phi3LabError, ValueError):
    """A conversation or prompt that Phi-3 cannot be given as it is; the message says how to fix it."""


def tag_number(match: re.Match, where: str) -> int:
    """The ``N`` of one :data:`IMAGE_TAG` match; a number of over six digits is refused, not parsed."""
    digits = match.group(1)
    if len(digits) > MAX_TAG_DIGITS:
        raise ChatFormatError(
            f"{where} has an image tag with a {len(digits)}-digit number ({match.group(0)[:20]}...); "
            "number the tags <|image_1|>, <|image_2|>, ... one per image"
        )
    return int(digits)


def image_tag_numbers(text: str, where: str = "the prompt") -> list[int]:
    """The ``N`` of every ``<|image_N|>`` tag in ``text``, in order.

    Examples:
        >>> image_tag_numbers("<|image_1|>\\nand <|image_2|>: which is larger?")
        [1, 2]
    """
    return [tag_number(m, where) for m in IMAGE_TAG.finditer(text)]


def check_image_tags(tags: Sequence[tuple[str, int]], num_images: int, source: str) -> None:
    """The image-tag rule for one prompt (the processor) or a conversation (:func:`phi3lab.prompts.chat.validate`).

    ``tags`` are ``(where, N)`` in order of appearance, ``where`` naming the place for the error
    (``"message 2"``, ``"tag 1 of the prompt"``).  Tags must be ``1, 2, ...``, each once, in order,
    one per image: the model fills image runs in order, so anything else would misplace the pictures.

    Raises:
        ChatFormatError: naming the tag and the fix.
    """
    seen: dict[int, str] = {}
    for expected, (where, n) in enumerate(tags, start=1):
        if n in seen:
            raise ChatFormatError(
                f"{where} repeats <|image_{n}|> (first used in {seen[n]}); each tag appears "
                "once — refer back to the image in words instead"
            )
        if n != expected:
            raise ChatFormatError(
                f"{where} has <|image_{n}|> where <|image_{expected}|> comes next; number the tags "
                "1, 2, 3... in the order they appear, and pass the images in that order"
            )
        seen[n] = where
    if len(tags) != num_images:
        raise ChatFormatError(
            f"the {source} has {len(tags)} image tag(s) but {num_images} image(s) were given; "
            "put one <|image_N|> tag in the text for each image (N = 1, 2, ...), e.g. '<|image_1|>\\nWhat is this?'"
        )


def tokenize_prompt(
    tokenizer, text: str, image_token_counts: Sequence[int] | None = None, *, encode=None
) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character spans of a rendered prompt, the way the official code tokenizes it.

    * Without images: one ``tokenizer(text)`` call; ``<s>`` is not added a second time when the
      template already starts with it (April 2024 Phi-3-mini).
    * With images: the text is split at each ``<|image_N|>`` tag, every chunk is tokenized
      separately *with* special tokens (so each chunk, even an empty one, starts with BOS), and
      tag ``<|image_k|>`` becomes ``-k`` repeated ``image_token_counts[k-1]`` times.  Image
      positions get the tag's span.

    Args:
        tokenizer: a tokenizer (or a processor wrapping one).
        text: the rendered prompt.
        image_token_counts: each image's token count, in tag order; ``None`` for no images.
        encode: ``encode(start, end, add_special_tokens) -> (ids, offsets)`` tokenizes
            ``text[start:end]`` with offsets relative to that chunk; by default one tokenizer
            call (:mod:`phi3lab.prompts.chat` passes one that keeps typed control tokens as plain text).
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if encode is None:

        def encode(start: int, end: int, add_special: bool):
            enc = tokenizer(text[start:end], add_special_tokens=add_special, return_offsets_mapping=True)
            return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    if image_token_counts is None:
        bos = tokenizer.bos_token
        return encode(0, len(text), not (bos and text.startswith(bos)))
    counts = list(image_token_counts)
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    start = 0
    for match in [*IMAGE_TAG.finditer(text), None]:
        end = match.start() if match else len(text)
        chunk_ids, chunk_spans = encode(start, end, True)
        ids += chunk_ids
        spans += [(a + start, b + start) if b > a else (start, start) for a, b in chunk_spans]
        if match is not None:
            k = tag_number(match, "the prompt")
            if not 1 <= k <= len(counts):
                raise ChatFormatError(
                    f"the prompt has <|image_{k}|> but {len(counts)} image(s): tags run from <|image_1|> "
                    f"to <|image_{len(counts)}|>"
                    if counts
                    else f"the prompt has <|image_{k}|> but no images"
                )
            ids += [-k] * counts[k - 1]
            spans += [match.span()] * counts[k - 1]
            start = match.end()
    return ids, spans


def left_pad(rows: Sequence[Sequence[int]], pad_id: int):
    """Several prompts' ids as one left-padded batch: ``(input_ids, attention_mask)``, ``[batch, longest]``.

    The one padding rule of phi3lab (the processor's ``collate``, :class:`phi3lab.prompts.inputs.Inputs`
    batches, batched generation and sweeps): pads go first, so every row's last position is its own
    last token, as generation needs.

    Examples:
        >>> ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
        >>> ids.tolist(), mask.tolist()
        ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    import torch

    if not rows:
        raise ValueError("left_pad needs at least one row of ids")
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + [int(i) for i in r] for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask
