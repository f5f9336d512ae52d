"""What the model sees: a prompt as a table of tokens with their roles.

:func:`token_table` renders a conversation with the model's own template, tokenizes it the way
generation does (images included, for Phi-3-vision) and labels every token with its segment:

========== ==============================================================
system     text of the system turn
user       text of a user turn
assistant  text of an assistant turn
image      an image placeholder position (one per image token)
special    ``<s>``, ``<|user|>``, ``<|end|>``, ``<|assistant|>``, ...
separator  the ``▁`` and ``\\n`` pieces between special tokens and text
========== ==============================================================

The table has a plain-text form (:meth:`TokenTable.to_text`, the tested contract) and a coloured
HTML form (:meth:`TokenTable.to_html`, shown by Jupyter).
"""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Iterable, Sequence

from phi3lab.prompts.chat import render, tokenize_prompt

__all__ = ["TokenRow", "TokenTable", "token_table", "label_tokens", "table_from_ids", "SEGMENT_COLOURS", "HEADERS"]

SEGMENT_COLOURS = {
    "system": "#e9d5ff",
    "user": "#bfdbfe",
    "assistant": "#bbf7d0",
    "image": "#fed7aa",
    "special": "#d1d5db",
    "separator": "#f3f4f6",
    "text": "#fef9c3",
}
HEADERS = {"<|system|>": "system", "<|user|>": "user", "<|assistant|>": "assistant"}
"""The role headers of Phi-3's templates."""
CHIP_TEXT = "#111827"  # dark text on every pastel chip, whatever the page's theme
_TURN = re.compile(r"<\|(system|user|assistant)\|>\n(.*?)(?=<\|end\|>|<\|assistant\|>|\Z)", re.S)


@dataclasses.dataclass(frozen=True)
class TokenRow:
    index: int
    id: int
    token: str  # the vocabulary piece (e.g. "▁is", "<0x0A>")
    start: int
    end: int
    segment: str

    def __repr__(self) -> str:
        return f"TokenRow(#{self.index} id {self.id} {self.token!r} {self.segment} {self.start}-{self.end})"


@dataclasses.dataclass(frozen=True)
class TokenTable:
    """Tokens of one rendered prompt; ``rows[i]`` describes ``input_ids[i]``."""

    prompt: str
    rows: tuple[TokenRow, ...]

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def turns(self) -> list[tuple[int | None, str | None]]:
        """Per token, ``(message number, role)`` from the role headers seen so far (``(None, None)`` before the first)."""
        out, message, role = [], None, None
        for row in self.rows:
            if row.segment == "special" and row.token in HEADERS:
                message = 0 if message is None else message + 1
                role = HEADERS[row.token]
            out.append((message, role))
        return out

    def counts(self) -> dict[str, int]:
        """Tokens per segment, in a fixed order."""
        out = {s: 0 for s in SEGMENT_COLOURS}
        for r in self.rows:
            out[r.segment] += 1
        return {k: v for k, v in out.items() if v}

    def image_spans(self) -> list[tuple[int, int]]:
        """Each image's ``(start, end)`` positions (``end`` exclusive), image 1 first: one run per image."""
        spans: dict[int, tuple[int, int]] = {}
        for i, j, r in self._runs():
            if r.segment == "image":
                spans.setdefault(-r.id, (i, j + 1))
        return [spans[k] for k in sorted(spans)]

    def _runs(self) -> Iterable[tuple[int, int, TokenRow]]:
        """Rows with image runs collapsed: (first index, last index, row)."""
        i = 0
        while i < len(self.rows):
            r, j = self.rows[i], i
            if r.segment == "image":
                while j + 1 < len(self.rows) and self.rows[j + 1].segment == "image" and self.rows[j + 1].id == r.id:
                    j += 1
            yield i, j, r
            i = j + 1

    def to_text(self) -> str:
        """One line per token (image runs on one line): index, id, segment, span, piece."""
        lines = [f"{'#':>9}  {'id':>6}  {'segment':<9}  {'span':<9}  token"]
        for i, j, r in self._runs():
            index = f"{i}" if i == j else f"{i}-{j}"
            ident = f"{r.id}" if i == j else f"{r.id}×{j - i + 1}"
            piece = self.prompt[r.start : r.end] if r.segment == "image" else r.token
            lines.append(f"{index:>9}  {ident:>6}  {r.segment:<9}  {f'{r.start}-{r.end}':<9}  {piece!r}")
        summary = ", ".join(f"{k} {v}" for k, v in self.counts().items())
        lines.append(f"{len(self.rows)} tokens: {summary}")
        return "\n".join(lines)

    def to_html(self) -> str:
        """Coloured token chips with id and segment on hover; self-contained, no scripts.

        Every chip sets its own dark text on its pastel background, so it reads the same in
        light and dark themes; pieces are shown as the vocabulary has them (``▁`` is the space).
        """
        chips = []
        for i, j, r in self._runs():
            label = self.prompt[r.start : r.end] if r.segment == "image" else r.token
            if r.segment == "image":
                label = f"{label} ×{j - i + 1}"
            title = f"#{i}" + (f"-{j}" if j > i else "") + f" id {r.id} · {r.segment}"
            chips.append(
                _chip(
                    label.replace("<0x0A>", "\\n"),
                    r.segment,
                    title,
                    "padding:1px 3px;margin:1px;display:inline-block;font-family:monospace;white-space:pre",
                )
            )
        legend = " ".join(_chip(f"{s} {n}", s) for s in SEGMENT_COLOURS if (n := self.counts().get(s)))
        return f'<div style="line-height:1.9">{"".join(chips)}</div><div style="font-size:85%">{legend}</div>'

    def _repr_html_(self) -> str:
        return self.to_html()

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts().items())
        return f"TokenTable({len(self.rows)} tokens: {counts})"


def _chip(text: str, segment: str, title: str | None = None, style: str = "padding:1px 4px;") -> str:
    hover = f' title="{html.escape(title)}"' if title else ""
    return (
        f'<span{hover} style="background:{SEGMENT_COLOURS[segment]};color:{CHIP_TEXT};border-radius:3px;'
        f'box-shadow:inset 0 0 0 1px rgba(0,0,0,0.15);{style}">{html.escape(text)}</span>'
    )


def _segments(prompt: str) -> list[str]:
    """A segment label per character; control-token text typed inside a turn (the ``plain_spans`` of an
    escaped :class:`~phi3lab.prompts.chat.RenderedPrompt`) is blanked first, so it neither ends nor opens a turn."""
    labels = ["separator"] * (len(prompt) + 1)
    text = str(prompt)
    for start, end in getattr(prompt, "plain_spans", ()):
        text = text[:start] + "\0" * (end - start) + text[end:]
    for m in _TURN.finditer(text):
        for k in range(m.start(2), m.end(2)):
            labels[k] = m.group(1)
    return labels


def token_table(
    tokenizer,
    conversation,
    *,
    image_token_counts: Sequence[int] | None = None,
    add_generation_prompt: bool = True,
    **render_kwargs,
) -> TokenTable:
    """Render, tokenize and label a conversation.

    Args:
        tokenizer: the model's tokenizer (or a processor wrapping one).
        conversation: a string or HF messages.
        image_token_counts: tokens per image (vision models), e.g. from
            :func:`phi3lab.prompts.patches.num_image_tokens`; ``None`` for text-only prompts.
        add_generation_prompt: end with the assistant header.
        **render_kwargs: passed to :func:`phi3lab.prompts.chat.render` (``fold_system_prompt``, ``vision``).
    """
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    n_images = len(image_token_counts or ())
    prompt = render(
        tok, conversation, add_generation_prompt=add_generation_prompt, num_images=n_images, **render_kwargs
    )
    ids, spans = tokenize_prompt(tok, prompt, image_token_counts if n_images else None)
    return label_tokens(tok, prompt, ids, spans)


def label_tokens(tokenizer, prompt: str, ids: Sequence[int], spans: Sequence[tuple[int, int]]) -> TokenTable:
    """Label already tokenized prompt ids (from :func:`phi3lab.prompts.chat.tokenize_prompt`) with their segments."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    labels = _segments(prompt)
    special_ids = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    rows = []
    for index, (token_id, (start, end)) in enumerate(zip(ids, spans)):
        if token_id < 0:
            segment, piece = "image", f"<|image_{-token_id}|>"
        elif token_id in special_ids:
            segment, piece = "special", tok.convert_ids_to_tokens(token_id)
        else:
            segment, piece = labels[start], tok.convert_ids_to_tokens(token_id)
        rows.append(TokenRow(index, token_id, piece, start, end, segment))
    return TokenTable(prompt, tuple(rows))


def table_from_ids(tokenizer, ids: Sequence[int]) -> TokenTable:
    """A :class:`TokenTable` of token ids given without their conversation.

    The prompt is rebuilt from the pieces (``▁`` as a space, byte pieces as their characters), so
    turns written with Phi-3's role headers are labelled by role as usual; anything outside a turn is
    ``"text"``.  Image positions (ids < 0) are labelled ``"image"``.
    """
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    special_ids = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    pieces, spans, at = [], [], 0
    after_special = True
    for token_id in ids:
        if token_id < 0:
            text = f"<|image_{-token_id}|>"
        else:
            piece = tok.convert_ids_to_tokens(int(token_id))
            # a lone "▁" after a control token is the tokenizer's dummy prefix, not a space of the text
            text = "" if piece == "▁" and after_special else _piece_text(piece)
        after_special = token_id >= 0 and int(token_id) in special_ids
        pieces.append(text)
        spans.append((at, at + len(text)))
        at += len(text)
    prompt = "".join(pieces)
    table = label_tokens(tok, prompt, [int(i) for i in ids], spans)
    rows = tuple(
        dataclasses.replace(r, segment="text") if r.segment == "separator" and _outside(r, table) else r
        for r in table.rows
    )
    return TokenTable(prompt, rows)


def _piece_text(piece: str) -> str:
    match = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
    if match:
        return chr(int(match.group(1), 16))
    return piece.replace("▁", " ")


def _outside(row: TokenRow, table: TokenTable) -> bool:
    """A separator-labelled piece that is not next to any role header: plain text."""
    return not any(r.segment == "special" for r in table.rows[max(0, row.index - 2) : row.index + 2])
