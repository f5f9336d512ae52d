"""Encoded prompts: model inputs plus everything needed to read them back, one prompt or a padded batch.

:meth:`phi3lab.Lab.encode` validates a conversation, renders it with the model's own template and
tokenizes it (and processes its images) once; :meth:`phi3lab.Lab.encode_batch` does it for several
conversations and left-pads them once (:func:`~phi3lab.models.phi3_v.prompting.left_pad`, the one
padding rule).  The :class:`Inputs` returned is a mapping of exactly the tensors the model takes, so
``model(**inputs)`` and ``model.generate(**inputs)`` work as they are, and it also carries what the
inspection tools need to name what they see:

* ``table`` (``tables`` per row) — the :class:`~phi3lab.prompts.token_view.TokenTable`: every token's
  role and character span;
* ``images`` — per image its size, crop budget, HD layout and the ``(start, end)`` positions of its run
  of tokens, so attention on a picture maps back to pixels without typing a size again;
* :meth:`Inputs.positions` — positions by meaning: a word, a role, a turn, an image.

    >>> import phi3lab
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> inputs = lab.encode("My name is Ada. What is my name?")
    >>> sorted(inputs), inputs.num_tokens == len(inputs.table)
    (['attention_mask', 'input_ids'], True)
    >>> [inputs.table.rows[p].token for p in inputs.positions("Ada")]
    ['▁Ada.']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import torch

from phi3lab.models.phi3_v.prompting import left_pad
from phi3lab.prompts.chat import as_messages, render, tokenize_prompt
from phi3lab.prompts.images import to_rgb
from phi3lab.prompts.patches import HDLayout, hd_layout
from phi3lab.prompts.token_view import TokenTable, label_tokens, table_from_ids
from phi3lab.validation import check_sequence

__all__ = ["Inputs", "ImageSpan", "encode", "encode_batch", "encode_ids", "MODEL_KEYS"]

MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_sizes")
ROLES = ("system", "user", "assistant")


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

    @property
    def positions(self) -> range:
        return range(self.start, self.end)

    def __repr__(self) -> str:
        return (
            f"ImageSpan(image {self.index + 1}: {self.width}×{self.height}, num_crops {self.num_crops}, "
            f"tokens {self.start}..{self.end - 1})"
        )


class Inputs(Mapping):
    """Model inputs of one encoded conversation (or a left-padded batch), with token tables and image layouts.

    As a mapping it holds only what the model's ``forward``/``generate`` accept (``input_ids``,
    ``attention_mask`` and, with images, ``pixel_values`` and ``image_sizes``).

    Attributes:
        messages: the validated conversation (row 0 of a batch; ``conversations`` has every row's).
        prompt: the rendered prompt string (row 0).
        table: the :class:`~phi3lab.prompts.token_view.TokenTable` of row 0; ``tables`` has every row's,
            in its own unpadded positions (``padding[row]`` pads come first in the batch).
        images: an :class:`ImageSpan` per image of row 0, positions in the batch's coordinates.
    """

    def __init__(
        self,
        tensors: dict,
        *,
        messages: list[dict] | None,
        prompt: str,
        table: TokenTable,
        images: Sequence[ImageSpan] = (),
        rows: Sequence[Inputs] | None = None,
    ):
        self._tensors = {k: tensors[k] for k in MODEL_KEYS if k in tensors}
        self.messages = messages
        self.prompt = prompt
        self.table = table
        self.images = tuple(images)
        self._rows = tuple(rows) if rows is not None else None

    # --- the mapping -----------------------------------------------------------------------------------

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
    def attention_mask(self) -> torch.Tensor:
        return self._tensors["attention_mask"]

    @property
    def num_tokens(self) -> int:
        """Positions per row (the longest prompt's length in a batch), image tokens included."""
        return int(self.input_ids.shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    # --- rows of a batch -------------------------------------------------------------------------------

    @property
    def padding(self) -> list[int]:
        """Left pads per row (0 for every row of a single prompt)."""
        return [int(n) for n in (self.attention_mask == 0).sum(dim=1).tolist()]

    @property
    def conversations(self) -> list[list[dict] | None]:
        return [r.messages for r in self.rows()]

    @property
    def tables(self) -> list[TokenTable]:
        return [r.table for r in self.rows()]

    def rows(self) -> list[Inputs]:
        """Each row as its own unpadded :class:`Inputs` (the batch's own object for a single prompt)."""
        return list(self._rows) if self._rows is not None else [self]

    def row(self, index: int) -> Inputs:
        """Row ``index`` of a batch, unpadded."""
        rows = self.rows()
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"row must be an int, got {type(index).__name__}")
        if not -len(rows) <= index < len(rows):
            raise IndexError(f"row {index} does not exist; this batch has rows 0..{len(rows) - 1}")
        return rows[index]

    def to(self, device) -> Inputs:
        """A copy with the tensors on ``device``."""
        moved = {k: v.to(device) for k, v in self._tensors.items()}
        return Inputs(
            moved, messages=self.messages, prompt=self.prompt, table=self.table, images=self.images, rows=self._rows
        )

    # --- positions by meaning --------------------------------------------------------------------------

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

    def image_positions(self, index: int = 0) -> list[int]:
        """The positions of image ``index``'s tokens."""
        return list(self.image(index).positions)

    def positions(
        self, text: str | None = None, *, role: str | None = None, turn: int | None = None, row: int = 0
    ) -> list[int]:
        """Positions by meaning, in the batch's coordinates: the tokens of ``text``, of a ``role``'s turns,
        or of one ``turn`` — never by scanning token tables by hand.

        Args:
            text: a word or phrase of the conversation (every occurrence; template tokens never match).
            role: ``"system"``, ``"user"`` or ``"assistant"``: that role's text.
            turn: with ``role``, the role's ``turn``-th message (1 = first); alone, the ``turn``-th message
                of any role.
            row: the batch row.

        Examples:
            >>> import phi3lab
            >>> inputs = phi3lab.load("tiny", verbose=False).encode("My name is Ada. What is my name?")
            >>> len(inputs.positions(role="user")) == len(inputs.positions(role="user", turn=1))
            True
        """
        source = self.row(row)
        offset = self.padding[row]
        table = source.table
        if text is None and role is None and turn is None:
            raise TypeError("say which positions: positions('Ada'), positions(role='user') or positions(turn=2)")
        if role is not None and role not in ROLES:
            raise ValueError(f"role={role!r} is not a role; use one of {', '.join(ROLES)}")
        if turn is not None and (isinstance(turn, bool) or not isinstance(turn, int) or turn < 1):
            raise ValueError(f"turn={turn!r}: turns are numbered from 1 (the first message)")
        chosen = self._turn_rows(table, role, turn)
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text must be a non-empty string of the conversation, got {text!r}")
            matches = set(_text_rows(table, text))
            chosen = [i for i in chosen if i in matches]
            if not chosen:
                where = "" if role is None and turn is None else f" in {role or 'message'} {turn or ''}".rstrip()
                raise ValueError(
                    f"{text!r} does not occur in the conversation's text{where} (template tokens never match); "
                    f"the prompt reads: {_preview(table.prompt)}"
                )
        return [offset + i for i in chosen]

    @staticmethod
    def _turn_rows(table: TokenTable, role: str | None, turn: int | None) -> list[int]:
        turns = table.turns()
        if role is None and turn is None:
            return [r.index for r in table.rows if r.segment in ROLES]
        order: dict[int, int] = {}
        counts: dict[str, int] = {}
        for message, who in turns:
            if message is not None and message not in order:
                key = who if role is not None else "any"
                counts[key] = counts.get(key, 0) + 1
                order[message] = counts[key]
        out = [
            r.index
            for r, (message, who) in zip(table.rows, turns)
            if r.segment in ROLES
            and message is not None
            and (role is None or who == role)
            and (turn is None or order.get(message) == turn)
        ]
        if not out:
            what = f"{role or 'message'}" + (f" turn {turn}" if turn else "")
            raise ValueError(f"this prompt has no {what}; its turns are {sorted(set(w for _, w in turns if w))}")
        return out

    # --- text forms ------------------------------------------------------------------------------------

    def to_text(self) -> str:
        """A one-screen summary: token counts per segment and each image's layout and span."""
        if self.batch_size > 1:
            lines = [f"batch of {self.batch_size} prompts, {self.num_tokens} positions (left-padded)"]
            for k, (r, pad) in enumerate(zip(self.rows(), self.padding)):
                counts = ", ".join(f"{s} {n}" for s, n in r.table.counts().items())
                lines.append(f"row {k}: {r.num_tokens} tokens after {pad} pads ({counts})")
            return "\n".join(lines)
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
        batch = f"{self.batch_size}×" if self.batch_size > 1 else ""
        return f"Inputs({batch}{self.num_tokens} tokens{extra}; keys {list(self._tensors)})"

    def _repr_html_(self) -> str:
        """The text form's lines as a table, the model inputs' shapes, and each prompt's tokens as chips
        (hover: id and segment); everything from the prompt escaped."""
        from phi3lab.reprs import Markup, rows_html

        title, *lines = self.to_text().split("\n")
        rows = [tuple(line.split(": ", 1)) for line in lines if ": " in line]
        rows.append(("model inputs", ", ".join(f"{k} {list(v.shape)}" for k, v in self.items())))
        single = self.batch_size == 1
        for k, prompt in enumerate([self] if single else self.rows()):
            rows.append(("tokens by role" if single else f"row {k} tokens", Markup(prompt.table.to_html())))
        return rows_html(rows, title=f"Inputs: {title}")


def _text_rows(table: TokenTable, text: str) -> list[int]:
    """Rows whose characters overlap an occurrence of ``text`` inside the conversation's own text."""
    prompt = table.prompt
    rows = [r for r in table.rows if r.segment in ROLES]
    found: list[int] = []
    start = prompt.find(text)
    while start >= 0:
        end = start + len(text)
        hits = [r.index for r in rows if r.start < end and r.end > start]
        if hits:
            found += hits
        start = prompt.find(text, start + 1)
    return sorted(set(found))


def _preview(prompt: str, limit: int = 120) -> str:
    flat = " ".join(prompt.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")


def _image_spans(ids: list[int], images: Sequence, num_crops: int, offset: int = 0) -> list[ImageSpan]:
    spans = []
    for k, image in enumerate(images, start=1):
        positions = [i for i, t in enumerate(ids) if t == -k]
        start, end = positions[0] + offset, positions[-1] + 1 + offset
        width, height = image.size
        spans.append(ImageSpan(k - 1, image, width, height, num_crops, hd_layout(width, height, num_crops), start, end))
    return spans


def _pad_id(lab) -> int:
    pad = lab.tokenizer.pad_token_id
    return pad if pad is not None else lab.spec.stop_ids[0]


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
        conversation: a string (one user turn), HF messages, or token ids (a list of ints or a
            ``[tokens]``/``[1, tokens]`` tensor: :func:`encode_ids`); an :class:`Inputs` is returned as it is.
        images: pictures for the ``<|image_N|>`` tags, in order (vision models).
        num_crops: crop budget for this call; default the processor's (``lab.num_crops``).
        add_generation_prompt: end with the assistant header so the model answers.
        **render_kwargs: passed to :func:`phi3lab.prompts.chat.render` (e.g. ``fold_system_prompt``,
            ``special_tokens``).
    """
    if isinstance(conversation, Inputs):
        if images:
            raise ValueError("images were given with an already encoded Inputs; encode the conversation with them")
        return conversation
    if _is_ids(conversation):
        if images:
            raise ValueError(
                "images were given with token ids; encode the conversation (text with <|image_N|>) instead"
            )
        return encode_ids(lab, conversation)
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


def _is_ids(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dtype in (torch.int64, torch.int32) and value.dim() in (1, 2)
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
    )


def encode_ids(lab, ids) -> Inputs:
    """An :class:`Inputs` of token ids given directly (a list of ints, ``[tokens]`` or ``[1, tokens]``),
    as researchers pass them to TransformerLens; its token table labels turns from Phi-3's role headers.

    Image positions cannot be given this way (their pictures are needed): encode the conversation.
    """
    tensor = torch.as_tensor(ids, dtype=torch.long)
    if tensor.dim() == 2:
        if tensor.shape[0] != 1:
            raise ValueError(
                f"token ids of shape {tuple(tensor.shape)}: give one row ([tokens] or [1, tokens]); for several "
                "prompts use lab.encode_batch([...])"
            )
        tensor = tensor[0]
    if tensor.numel() == 0:
        raise ValueError("no token ids were given; pass at least one id")
    vocab = lab.model.get_input_embeddings().num_embeddings
    bad = [int(i) for i in tensor if not 0 <= int(i) < vocab]
    if bad:
        raise ValueError(
            f"token ids {bad[:5]} are outside the vocabulary 0..{vocab - 1}; image positions (negative ids) "
            "need their pictures: encode the conversation with images=[...]"
        )
    listed = [int(i) for i in tensor]
    table = table_from_ids(lab.tokenizer, listed)
    input_ids = tensor[None].to(lab.model.device)
    return Inputs(
        {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)},
        messages=None,
        prompt=table.prompt,
        table=table,
    )


def encode_batch(
    lab, conversations: Sequence, images: Sequence | None = None, *, num_crops: int | None = None, **render_kwargs
) -> Inputs:
    """Encode several conversations and left-pad them once into one batch.

    Args:
        conversations: a list of conversations (strings, HF messages or token id lists).
        images: per conversation, its pictures (a list of lists; ``None`` for none at all).
        num_crops, **render_kwargs: as for :func:`encode`.

    Returns:
        An :class:`Inputs` of ``batch × longest`` positions (pads first); ``inputs.row(i)`` is conversation
        ``i`` alone, unpadded, and ``inputs.positions(..., row=i)`` gives its positions in the batch.
    """
    conversations = check_sequence(
        "conversations", conversations, item="conversations", example="encode_batch(['What is 2 plus 3?', 'Hi'])"
    )
    if not conversations:
        raise ValueError("encode_batch needs at least one conversation, e.g. encode_batch(['What is 2 plus 3?'])")
    if images is not None:
        images = check_sequence(
            "images", images, item="lists of pictures, one list per conversation", example="images=[[picture], []]"
        )
        if len(images) != len(conversations):
            raise ValueError(
                f"{len(images)} image lists for {len(conversations)} conversations; give one list per "
                "conversation ([] for none)"
            )
    rows = [
        encode(lab, c, (images[k] or None) if images is not None else None, num_crops=num_crops, **render_kwargs)
        for k, c in enumerate(conversations)
    ]
    if len(rows) == 1:
        return rows[0]
    ids, mask = left_pad([r.input_ids[0].tolist() for r in rows], _pad_id(lab))
    device = lab.model.device
    tensors = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    with_images = [r for r in rows if "pixel_values" in r]
    if with_images:
        slots = max(r["pixel_values"].shape[1] for r in with_images)
        tensors["pixel_values"] = torch.cat(
            [
                torch.nn.functional.pad(r["pixel_values"], (0, 0, 0, 0, 0, 0, 0, slots - r["pixel_values"].shape[1]))
                for r in with_images
            ]
        )
        tensors["image_sizes"] = torch.cat([r["image_sizes"] for r in with_images])
    pads = [ids.shape[1] - r.num_tokens for r in rows]
    shifted = [dataclasses.replace(im, start=im.start + pads[0], end=im.end + pads[0]) for im in rows[0].images]
    return Inputs(
        tensors, messages=rows[0].messages, prompt=rows[0].prompt, table=rows[0].table, images=shifted, rows=rows
    )
