"""One encoded prompt: model inputs plus everything needed to read them back.

:meth:`phi3lab.Lab.encode` validates a conversation, renders it with the model's own template and
tokenizes it (and processes its images) once.  The :class:`Inputs` it returns is a mapping of
exactly the tensors the model takes, so ``model(**inputs)`` and ``model.generate(**inputs)`` work
as they are, and it also carries what the inspection tools need to name what they see:

* ``table`` — the :class:`~phi3lab.prompts.token_view.TokenTable` (every token's role and character span);
* ``images`` — per image its size, crop budget, HD layout and the ``(start, end)`` positions of its
  run of tokens, so attention on a picture maps back to pixels without typing a size again.

    >>> import phi3lab
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> inputs = lab.encode("What is 2 plus 3?")
    >>> sorted(inputs), inputs.num_tokens == len(inputs.table)
    (['attention_mask', 'input_ids'], True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import torch

from phi3lab.prompts.chat import as_messages, render, tokenize_prompt
from phi3lab.prompts.patches import HDLayout, hd_layout

__all__ = ["Inputs", "ImageSpan", "encode"]

MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_sizes")


@dataclasses.dataclass(frozen=True)
class ImageSpan:
    """One image of a prompt, as the model receives it.

    Attributes:
        index: 0-based image number (``<|image_{index + 1}|>``).
        image: the picture as given (RGB PIL image after reading).
        width, height: its size in pixels.
        num_crops: the crop budget it was processed with.
        layout: its :class:`~phi3lab.prompts.patches.HDLayout` (grid, padding, canvas).
        start, end: positions of its run of tokens in ``input_ids`` (``end`` exclusive).
    """

    index: int
    image: object
    width: int
    height: int
    num_crops: int
    layout: HDLayout
    start: int
    end: int

    @property
    def num_tokens(self) -> int:
        return self.end - self.start


class Inputs(Mapping):
    """Model inputs of one encoded conversation, with its token table and image layouts.

    As a mapping it holds only what the model's ``forward``/``generate`` accept (``input_ids``,
    ``attention_mask`` and, with images, ``pixel_values`` and ``image_sizes``).

    Attributes:
        messages: the validated conversation.
        prompt: the rendered prompt string.
        table: the :class:`~phi3lab.prompts.token_view.TokenTable` of the prompt.
        images: an :class:`ImageSpan` per image, in order.
    """

    def __init__(self, tensors: dict, *, messages: list[dict], prompt: str, table, images: Sequence[ImageSpan] = ()):
        self._tensors = {k: tensors[k] for k in MODEL_KEYS if k in tensors}
        self.messages = messages
        self.prompt = prompt
        self.table = table
        self.images = tuple(images)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    @property
    def input_ids(self) -> torch.Tensor:
        return self._tensors["input_ids"]

    @property
    def num_tokens(self) -> int:
        """Prompt length in tokens, image tokens included."""
        return int(self.input_ids.shape[1])

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def to(self, device) -> Inputs:
        """A copy with the tensors on ``device``."""
        moved = {k: v.to(device) for k, v in self._tensors.items()}
        return Inputs(moved, messages=self.messages, prompt=self.prompt, table=self.table, images=self.images)

    def image(self, index: int = 0) -> ImageSpan:
        """The :class:`ImageSpan` of image ``index`` (0-based), with a clear error when absent."""
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"image index must be an int, got {type(index).__name__}")
        if not self.images:
            raise IndexError("this prompt has no images; encode a conversation with <|image_1|> and images=[...]")
        if not -len(self.images) <= index < len(self.images):
            raise IndexError(
                f"image {index} does not exist; this prompt has {len(self.images)} image(s), "
                f"indices 0..{len(self.images) - 1}"
            )
        return self.images[index]

    def to_text(self) -> str:
        """A one-screen summary: token counts per segment and each image's layout and span."""
        counts = ", ".join(f"{k} {v}" for k, v in self.table.counts().items())
        lines = [f"{self.num_tokens} tokens ({counts})"]
        for im in self.images:
            rows, cols = im.layout.grid
            lines.append(
                f"image {im.index + 1}: {im.width}×{im.height}, num_crops {im.num_crops}, "
                f"{rows}×{cols} crops, tokens {im.start}..{im.end - 1} ({im.num_tokens})"
            )
        return "\n".join(lines)

    __str__ = to_text

    def __repr__(self) -> str:
        extra = f", {len(self.images)} image(s)" if self.images else ""
        return f"Inputs({self.num_tokens} tokens{extra}; keys {list(self._tensors)})"


def _image_spans(ids: list[int], images: Sequence, num_crops: int) -> list[ImageSpan]:
    spans = []
    for k, image in enumerate(images, start=1):
        positions = [i for i, t in enumerate(ids) if t == -k]
        start, end = positions[0], positions[-1] + 1
        width, height = image.size
        spans.append(ImageSpan(k - 1, image, width, height, num_crops, hd_layout(width, height, num_crops), start, end))
    return spans


def encode(
    lab,
    conversation,
    images: Sequence | None = None,
    *,
    num_crops: int | None = None,
    add_generation_prompt: bool = True,
    **render_kwargs,
) -> Inputs:
    """Validate, render and tokenize a conversation (and process its images) for ``lab``'s model.

    Args:
        lab: a :class:`~phi3lab.Lab`.
        conversation: a string (one user turn) or HF messages.
        images: pictures for the ``<|image_N|>`` tags, in order (vision models).
        num_crops: crop budget for this call; default the processor's (``lab.num_crops``).
        add_generation_prompt: end with the assistant header so the model answers.
        **render_kwargs: passed to :func:`phi3lab.prompts.chat.render` (e.g. ``fold_system_prompt``).
    """
    from phi3lab.prompts.images import to_rgb
    from phi3lab.prompts.token_view import label_tokens
    from phi3lab.validation import check_sequence

    if images is not None:
        images = check_sequence(
            "images",
            images,
            item="pictures, one per <|image_N|> tag",
            example="images=[picture] (a PIL image, a numpy array or a file path)",
        )
    images = list(images or ())
    vision = lab.spec.modality == "vision"
    messages = as_messages(conversation)
    # validated (roles, tags, image count, text-only models) before a single picture is read
    prompt = render(
        lab.tokenizer,
        messages,
        add_generation_prompt=add_generation_prompt,
        num_images=len(images),
        vision=vision,
        **render_kwargs,
    )
    images = [to_rgb(im) for im in images]
    device = lab.model.device
    tensors: dict = {}
    counts = None
    crops = lab.num_crops if num_crops is None else num_crops
    if images:
        pixels = lab.processor.image_processor(images, num_crops=crops)
        counts = list(pixels["num_img_tokens"])
        tensors["pixel_values"] = pixels["pixel_values"].to(device)
        tensors["image_sizes"] = pixels["image_sizes"].to(device)
    ids, spans = tokenize_prompt(lab.tokenizer, prompt, counts)
    input_ids = torch.tensor([ids], device=device)
    tensors["input_ids"] = input_ids
    tensors["attention_mask"] = torch.ones_like(input_ids)
    table = label_tokens(lab.tokenizer, prompt, ids, spans)
    return Inputs(
        tensors,
        messages=messages,
        prompt=prompt,
        table=table,
        images=_image_spans(ids, images, crops) if images else (),
    )
