"""Batched forwards over many conversations: left padding with the positions generation uses.

With left padding the last positions of every row are the same template tokens
(``<|end|>\\n<|assistant|>\\n``), which is what the first-token score and the refusal direction read.
Position ids count real tokens only (``cumsum(mask) - 1``), as ``generate`` computes them, so a
padded row gives the logits of the unpadded prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from phi3lab.models.phi3_v.prompting import left_pad


def encode_ids(lab, conversations: Sequence, special_tokens: str = "refuse") -> list[list[int]]:
    """Token ids of each conversation's prompt, ending with the assistant header."""
    return [lab.encode(c, special_tokens=special_tokens)["input_ids"][0].tolist() for c in conversations]


def pad_left(rows: Sequence[Sequence[int]], pad: int, device) -> dict[str, torch.Tensor]:
    """Model inputs of left-padded rows (:func:`~phi3lab.models.phi3_v.prompting.left_pad`, the one padding
    rule) with the position ids generation uses."""
    ids, mask = left_pad(rows, pad)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}


def pad_id(lab) -> int:
    pad = lab.tokenizer.pad_token_id
    return pad if pad is not None else lab.spec.stop_ids[0]


@torch.inference_mode()
def batched_logits(
    lab, conversations: Sequence, *, batch_size: int = 32, special_tokens: str = "refuse", last: int = 1
) -> Iterator[torch.Tensor]:
    """Per batch, float32 logits of the last ``last`` positions: ``[batch, vocab]`` (``[batch, last, vocab]``)."""
    ids = encode_ids(lab, conversations, special_tokens)
    for start in range(0, len(ids), batch_size):
        inputs = pad_left(ids[start : start + batch_size], pad_id(lab), lab.model.device)
        logits = lab.model(**inputs, use_cache=False, logits_to_keep=last).logits.float().cpu()
        yield logits[:, -1] if last == 1 else logits[:, -last:]
