"""How many tokens a conversation costs, images included, before anything is run.

Image tokens come from image sizes alone (the HD rule in :mod:`phi3lab.prompts.patches`), so a
notebook can check a 4-image prompt against the context without processing a pixel.  On the
128K models the budget also flags the 4,096-token LongRoPE switch: past it the model uses its
*long* RoPE factors for the whole sequence, so the same text can be answered differently, and
transformers discards the KV cache when a generation crosses the boundary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from phi3lab.prompts.chat import render, tokenize_prompt
from phi3lab.prompts.patches import DEFAULT_NUM_CROPS, num_image_tokens

__all__ = ["Budget", "token_budget", "image_size"]


def image_size(image) -> tuple[int, int]:
    """``(width, height)`` of a PIL image, a ``(width, height)`` pair, or an image file (header only)."""
    if hasattr(image, "size") and not isinstance(image, (tuple, list)):
        return tuple(image.size)
    if isinstance(image, (tuple, list)) and len(image) == 2:
        return int(image[0]), int(image[1])
    from PIL import Image

    with Image.open(image) as im:  # reads the header, not the pixels
        return im.size


@dataclasses.dataclass(frozen=True)
class Budget:
    """Token counts of one prompt against a model's context.

    ``longrope_switch`` is where a 128K model's LongRoPE changes factors (its spec's
    :attr:`~phi3lab.runtime.registry.ModelSpec.longrope_switch`), ``None`` for a model without one.
    """

    text_tokens: int
    image_tokens: tuple[int, ...]
    max_new_tokens: int
    context_length: int
    longrope_switch: int | None = None

    @property
    def long_context(self) -> bool:
        return self.longrope_switch is not None

    @property
    def prompt_tokens(self) -> int:
        return self.text_tokens + sum(self.image_tokens)

    @property
    def total(self) -> int:
        """Prompt plus the tokens generation may add."""
        return self.prompt_tokens + self.max_new_tokens

    @property
    def fits(self) -> bool:
        return self.total <= self.context_length

    @property
    def prompt_crosses_longrope(self) -> bool:
        """The prompt alone runs with the long RoPE factors (128K models only)."""
        return self.long_context and self.prompt_tokens > self.longrope_switch

    @property
    def generation_crosses_longrope(self) -> bool:
        """The prompt is under the switch but generation may carry it over."""
        return self.long_context and self.prompt_tokens <= self.longrope_switch < self.total

    def warnings(self) -> list[str]:
        out = []
        if not self.fits:
            out.append(
                f"over the context: {self.total:,} tokens > {self.context_length:,}; "
                "shorten the prompt, use fewer images or a smaller num_crops, or lower max_new_tokens"
            )
        if self.prompt_crosses_longrope:
            out.append(
                f"LongRoPE switch: the prompt has {self.prompt_tokens:,} tokens > {self.longrope_switch:,}, so the "
                "long RoPE factors apply to the whole sequence (answers can differ from a shorter prompt's)"
            )
        if self.generation_crosses_longrope:
            out.append(
                f"LongRoPE switch during generation: {self.prompt_tokens:,} + {self.max_new_tokens:,} new tokens "
                f"can pass {self.longrope_switch:,}; the factors change there and the KV cache is recomputed"
            )
        return out

    def _rows(self) -> list[tuple[str, str]]:
        images = " + ".join(f"{n:,}" for n in self.image_tokens) or "0"
        rows = [
            ("text tokens", f"{self.text_tokens:,}"),
            ("image tokens", images),
            ("prompt", f"{self.prompt_tokens:,}"),
            ("max new", f"{self.max_new_tokens:,}"),
            ("total", f"{self.total:,} of {self.context_length:,} ({100 * self.total / self.context_length:.1f}%)"),
        ]
        return rows + ([("warning", w) for w in self.warnings()] or [("status", "ok")])

    def to_text(self) -> str:
        return "\n".join(f"{name:<14} {value}" for name, value in self._rows())

    def _repr_html_(self) -> str:
        import html

        cells = "".join(
            f'<tr><th style="text-align:left;padding-right:1em;white-space:nowrap">{name}</th>'
            f'<td style="text-align:left">{"⚠ " if name == "warning" else ""}{html.escape(value)}</td></tr>'
            for name, value in self._rows()
        )
        return f"<table>{cells}</table>"

    def __repr__(self) -> str:
        parts = [f"{self.text_tokens:,} text"] + [f"{n:,} image" for n in self.image_tokens]
        status = "; ".join(w.split(":")[0] for w in self.warnings()) or "fits"
        return (
            f"<Budget {self.total:,} of {self.context_length:,} tokens: {' + '.join(parts)} + "
            f"{self.max_new_tokens:,} new; {status}>"
        )

    __str__ = to_text


def token_budget(
    tokenizer,
    conversation,
    spec,
    *,
    images: Sequence = (),
    num_crops: int | None = None,
    max_new_tokens: int = 0,
    **render_kwargs,
) -> Budget:
    """Count a conversation's tokens (images from their sizes) against ``spec``'s context.

    ``spec`` is the model's :class:`~phi3lab.runtime.registry.ModelSpec` (``lab.spec``).  ``num_crops``
    defaults to ``spec.num_crops`` — the checkpoint's ``preprocessor_config.json`` value for a loaded
    model — and to 16 for a spec without one; :meth:`phi3lab.Lab.budget` passes the processor's own
    value, the one source of truth (``lab.num_crops``).
    """
    crops = num_crops if num_crops is not None else (spec.num_crops or DEFAULT_NUM_CROPS)
    counts = [num_image_tokens(*image_size(im), crops) for im in images]
    prompt = render(tokenizer, conversation, num_images=len(counts), **render_kwargs)
    ids, _ = tokenize_prompt(tokenizer, prompt, counts or None)
    return Budget(
        text_tokens=len(ids) - sum(counts),
        image_tokens=tuple(counts),
        max_new_tokens=max_new_tokens,
        context_length=spec.context_length,
        longrope_switch=spec.longrope_switch,
    )
