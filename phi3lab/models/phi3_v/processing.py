"""``Phi3VProcessor``: a prompt and its images → the official ``input_ids`` and pixels.

The prompt rule (PHI3_SPEC.md §2.7) is :func:`~phi3lab.models.phi3_v.prompting.tokenize_prompt`:
the text is split at each ``<|image_N|>`` tag, every chunk is tokenized with BOS, and tag ``k``
becomes ``-k`` repeated for that image's token count.  Tags must be ``1..n``, each once, in
increasing order, with ``n`` images: the model fills image runs in order, so anything else would
put features in the wrong place (the official processor accepts swapped tags and its model then
misplaces them; phi3lab refuses with :class:`~phi3lab.models.phi3_v.prompting.ChatFormatError`).

``image_ids="token"`` writes the tokenizer's ``<|image|>`` id instead of ``-k``, which decodes
and survives logits processors that index the vocabulary; the model accepts both, as long as its
``config.image_token_id`` is that same id (a tokenizer without ``<|image|>`` is refused).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers.feature_extraction_utils import BatchFeature

from phi3lab.models.phi3_v.hd import check_num_crops
from phi3lab.models.phi3_v.image_processing import Phi3VImageProcessor, as_batch, check_return_tensors
from phi3lab.models.phi3_v.prompting import (
    ChatFormatError,
    check_image_tags,
    image_tag_numbers,
    left_pad,
    tokenize_prompt,
)

__all__ = ["Phi3VProcessor"]


class Phi3VProcessor:
    """Tokenizer plus :class:`Phi3VImageProcessor`, with the official prompt → ids rule.

    Attributes:
        image_processor: the HD image processor.
        tokenizer: the Phi-3 tokenizer (built from ``tokenizer.json`` as-is).
    """

    attributes = ["image_processor", "tokenizer"]

    def __init__(
        self,
        image_processor: Phi3VImageProcessor,
        tokenizer,
        image_token: str = "<|image|>",
        model_image_token_id: int | None = None,
    ):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.image_token_id = _token_id(tokenizer, image_token)  # None when the tokenizer lacks it
        self.model_image_token_id = model_image_token_id  # config.json's image_token_id, when known
        self.chat_template = getattr(tokenizer, "chat_template", None)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **kwargs) -> Phi3VProcessor:
        """Load from a checkpoint folder; ``trust_remote_code`` is ignored (no remote code runs)."""
        from transformers import AutoTokenizer

        folder = Path(folder)
        kwargs.pop("trust_remote_code", None)
        num_crops = kwargs.pop("num_crops", None)
        image_processor = Phi3VImageProcessor.from_pretrained(folder)
        if num_crops is not None:
            image_processor.num_crops = check_num_crops(num_crops)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        config = folder / "config.json"
        model_id = json.loads(config.read_text()).get("image_token_id") if config.is_file() else None
        return cls(image_processor, tokenizer, model_image_token_id=model_id)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        self.image_processor.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    @property
    def num_crops(self) -> int:
        return self.image_processor.num_crops

    def __call__(
        self,
        text: str,
        images=None,
        *,
        num_crops: int | None = None,
        return_tensors: str = "pt",
        image_ids: str = "negative",
        image_order: str = "strict",
    ) -> BatchFeature:
        """Encode one prompt (a rendered chat string) with its images.

        Args:
            text: the prompt, with ``<|image_N|>`` tags where the images go.
            images: one image or a list (PIL, numpy arrays or file paths), in tag order.
            num_crops: crop budget for this call, an int from 1 to 16 (default: the processor's).
            return_tensors: ``"pt"`` (torch tensors) or ``"np"`` (numpy arrays).
            image_ids: ``"negative"`` (official: ``-k`` for image ``k``) or ``"token"``
                (``<|image|>`` at every image position; the tokenizer must have that token).
            image_order: ``"strict"`` refuses tags out of order or repeated; ``"official"`` accepts
                any order of the tags 1..n, as the official processor does (parity checks only:
                the model then needs ``config.image_order = "official"`` and misplaces features
                exactly as the official model does).

        Returns:
            A ``BatchFeature`` holding exactly the model's inputs (``input_ids``, ``attention_mask``
            and, with images, ``pixel_values`` and ``image_sizes``), so ``model.generate(**out)``
            works; the tokens per image are the attribute ``out.num_img_tokens``.
        """
        if not isinstance(text, str):
            raise TypeError(
                f"the processor takes one prompt string, got {type(text).__name__}; for a batch, call it per "
                "prompt and combine the results with Phi3VProcessor.collate"
            )
        check_return_tensors(return_tensors)
        if image_ids not in ("negative", "token"):
            raise ValueError(f"image_ids must be 'negative' or 'token', got {image_ids!r}")
        if num_crops is not None:
            check_num_crops(num_crops)
        if images is not None and not isinstance(images, (list, tuple)):
            images = [images]
        images = list(images or [])
        if not images:
            ids, _ = tokenize_prompt(self.tokenizer, text)  # tags stay plain text, as in the official processor
            input_ids = torch.tensor([ids])
            return as_batch({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}, return_tensors)
        if image_ids == "token" and self.image_token_id is None:
            raise ValueError(
                f"image_ids='token' writes the {self.image_token} token at image positions, but this tokenizer has "
                "no such token; use image_ids='negative' (the official -1, -2, ... ids), or a tokenizer that "
                f"has {self.image_token}"
            )
        if image_ids == "token" and self.model_image_token_id not in (None, self.image_token_id):
            raise ValueError(
                f"image_ids='token' would write {self.image_token} = id {self.image_token_id} (the tokenizer's), but "
                f"config.json's image_token_id is {self.model_image_token_id}, so the model would find no image "
                f"positions; set image_token_id to {self.image_token_id} in config.json, or use image_ids='negative'"
            )
        tags = image_tag_numbers(text)
        if image_order == "strict":
            check_image_tags(
                [(f"tag {k} of the prompt", n) for k, n in enumerate(tags, start=1)], len(images), "prompt"
            )
        elif image_order == "official":
            if sorted(set(tags)) != list(range(1, len(images) + 1)) or len(tags) != len(images):
                raise ChatFormatError(
                    f"image tags {tags} must be 1..{len(images)} for {len(images)} image(s) (official processor rule)"
                )
        else:
            raise ValueError(f"image_order must be 'strict' or 'official', got {image_order!r}")
        pixels = self.image_processor(images, num_crops=num_crops)
        ids, _ = tokenize_prompt(self.tokenizer, text, pixels["num_img_tokens"])
        input_ids = torch.tensor([ids])
        if image_ids == "token":
            input_ids = torch.where(input_ids < 0, torch.full_like(input_ids, self.image_token_id), input_ids)
        batch = as_batch(
            {
                "input_ids": input_ids,
                "attention_mask": torch.ones_like(input_ids),
                "pixel_values": pixels["pixel_values"],
                "image_sizes": pixels["image_sizes"],
            },
            return_tensors,
        )
        # an attribute, not a key: the mapping holds exactly what forward/generate take
        batch.num_img_tokens = list(pixels["num_img_tokens"])
        return batch

    @staticmethod
    def collate(encodings: list[BatchFeature], pad_token_id: int) -> BatchFeature:
        """Left-pad several single-prompt encodings into one batch (images concatenated in order)."""
        ids, mask = left_pad([e["input_ids"][0].tolist() for e in encodings], pad_token_id)
        out = {"input_ids": ids, "attention_mask": mask}
        with_images = [e for e in encodings if "pixel_values" in e]
        if with_images:
            slots = max(e["pixel_values"].shape[1] for e in with_images)
            pixels = [
                torch.nn.functional.pad(e["pixel_values"], (0, 0, 0, 0, 0, 0, 0, slots - e["pixel_values"].shape[1]))
                for e in with_images
            ]
            out["pixel_values"] = torch.cat(pixels)
            out["image_sizes"] = torch.cat([e["image_sizes"] for e in with_images])
        return BatchFeature(out)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        return self.tokenizer.apply_chat_template(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Phi3VProcessor(num_crops={self.num_crops}, vocab={len(self.tokenizer)})"


def _token_id(tokenizer, token: str) -> int | None:
    """The id of an added token, or ``None`` when the tokenizer does not have it (not the unknown id)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
        return None
    return int(token_id)
