"""Argument checks shared by the public API, each raising an error that names the problem and the fix.

Wrong types raise :class:`TypeError`; right types with bad values raise :class:`ValueError` (or a
subclass such as :class:`ContextOverflowError`).  Python's loose coercions are refused on purpose:
``max_new_tokens=2.5`` is not silently truncated to 2, ``True`` is not the integer 1,
``temperature=nan`` is not a temperature, and a string is not a list of images or conversations.

Examples:
    >>> check_int("max_new_tokens", 8, minimum=1)
    8
    >>> check_int("max_new_tokens", 2.5, minimum=1)
    Traceback (most recent call last):
    ...
    TypeError: max_new_tokens must be an integer, got float 2.5; pass e.g. max_new_tokens=2
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence

from phi3lab.errors import Phi3LabError

__all__ = [
    "ContextOverflowError",
    "check_bool",
    "check_choice",
    "check_context",
    "check_encodable",
    "check_float",
    "check_int",
    "check_seed",
    "check_sequence",
    "check_text",
]

SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed accepts


class ContextOverflowError(Phi3LabError, ValueError):
    """A prompt plus the tokens to generate would not fit in the model's context."""


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _typed(value) -> str:
    return f"{type(value).__name__} {_show(value)}"


def check_bool(name: str, value) -> bool:
    """``True`` or ``False`` (numpy bools too); anything else is a :class:`TypeError`."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {_typed(value)}")


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (not a bool, not a float with an integral value) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = f"; pass e.g. {name}={math.floor(value)}" if isinstance(value, float) and math.isfinite(value) else ""
        raise TypeError(f"{name} must be an integer, got {_typed(value)}{hint}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return value


def check_float(
    name: str,
    value,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
) -> float:
    """A finite real number (ints accepted, bools not) with ``minimum ≤ value ≤ maximum``, ``value > above``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {_typed(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    if above is not None and value <= above:
        raise ValueError(f"{name} must be greater than {above}, got {value}")
    return value


def check_seed(seed) -> int | None:
    """``None`` or an integer seed that :func:`torch.manual_seed` takes."""
    if seed is None:
        return None
    return check_int("seed", seed, minimum=SEED_RANGE[0], maximum=SEED_RANGE[1])


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    """One of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {_show(value)}")
    return value


def check_text(name: str, value) -> str:
    """A ``str`` that can be encoded as UTF-8 (no lone surrogates)."""
    if not isinstance(value, str):
        hint = " (decode bytes first, e.g. data.decode('utf-8'))" if isinstance(value, (bytes, bytearray)) else ""
        raise TypeError(f"{name} must be a string, got {_typed(value)}{hint}")
    check_encodable(name, value)
    return value


def check_encodable(where: str, text: str, error: type[Exception] = ValueError) -> None:
    """Refuse text with lone surrogates (``'\\ud800'``), which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(
            f"{where} has an unpaired surrogate {text[exc.start]!r} at character {exc.start}, which is not valid "
            "Unicode text; remove it, or repair the text, e.g. text.encode('utf-16', 'surrogatepass').decode('utf-16') "
            "for a split pair or text.encode('utf-8', 'replace').decode('utf-8') to drop it"
        ) from None


def check_sequence(name: str, value, *, item: str, example: str) -> list:
    """A list or tuple (copied); a string, bytes, dict, set or iterator is a :class:`TypeError`.

    Strings are refused because ``list("cat.png")`` is seven one-letter items, and iterators
    because they can be endless or consumed by the first call.
    """
    if isinstance(value, (str, bytes, bytearray, os.PathLike)):
        raise TypeError(
            f"{name} must be a list of {item}, got one {type(value).__name__} {_show(value)}; "
            f"wrap it in a list: {example}"
        )
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of {item}, got {_typed(value)}; pass a list, e.g. {example}")
    return list(value)


def check_context(
    prompt_tokens: int,
    max_new_tokens: int,
    context_length: int,
    *,
    what: str = "the prompt",
    image_tokens: int = 0,
) -> None:
    """Refuse a generation that would run past the context, before anything is run.

    Args:
        prompt_tokens: tokens of the (longest) prompt, image tokens included.
        max_new_tokens: tokens generation may add.
        context_length: the model's context (``lab.spec.context_length``).
        what: names the prompt in the message (``"prompt 3 of the batch"``).
        image_tokens: how many of the prompt tokens are image tokens (to suggest fewer crops).

    Raises:
        ContextOverflowError: with the counts and the ways to make it fit.
    """
    total = prompt_tokens + max_new_tokens
    if total <= context_length:
        return
    fixes = []
    if prompt_tokens >= context_length:
        fixes.append(f"shorten {what} by at least {prompt_tokens - context_length + 1:,} tokens")
        if image_tokens:
            fixes.append("use fewer images or a smaller num_crops")
        fixes.append("or use a long-context model (e.g. microsoft/Phi-3-mini-128k-instruct)")
    else:
        room = context_length - prompt_tokens
        fixes.append(f"lower max_new_tokens to at most {room:,}")
        fixes.append(f"or shorten {what}" + (" (fewer images or a smaller num_crops)" if image_tokens else ""))
    images = f" ({image_tokens:,} of them image tokens)" if image_tokens else ""
    raise ContextOverflowError(
        f"{what} has {prompt_tokens:,} tokens{images} and max_new_tokens is {max_new_tokens:,}: "
        f"{total:,} tokens do not fit the model's context of {context_length:,}; " + ", ".join(fixes)
    )
