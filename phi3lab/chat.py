"""Phi-3 conversations: checking them, rendering them with the model's own template, and
naming which template revision that is.

Phi-3's prompt format has changed under the same model name, and each mistake silently
degrades answers (PHI3_SPEC.md §1.3, §3):

* **April 2024 Phi-3-mini** starts with ``<s>``, knows only user and assistant turns, appends
  ``<|assistant|>\\n`` after every user turn and **drops system messages**;
* **July 2024 Phi-3-mini** (also Phi-3.5-mini) renders ``<|system|>``, has no BOS, drops other
  roles, and ends with ``<|assistant|>\\n`` or ``<|endoftext|>``;
* **Phi-3-vision** passes any role through as ``<|role|>`` and adds the generation prompt only
  when the last turn is not the assistant's; images are ``<|image_N|>`` tags in the text.

:func:`render` always uses the tokenizer's own template and warns (or folds the system prompt
into the first user turn) when that template would lose a system message.  :func:`build_prompt`
is a readable Python version of each revision, tested to equal the Jinja templates exactly.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence

__all__ = [
    "ROLES",
    "REVISIONS",
    "ChatFormatError",
    "SystemMessageDropped",
    "Messages",
    "as_messages",
    "validate",
    "image_tags",
    "template_revision",
    "build_prompt",
    "render",
    "fold_system",
]

ROLES = ("system", "user", "assistant")
REVISIONS = ("phi3-mini-2024-04", "phi3-mini-2024-07", "phi3-vision", "unknown")
IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")


class ChatFormatError(ValueError):
    """A conversation that Phi-3 cannot be given as it is; the message says how to fix it."""


class SystemMessageDropped(UserWarning):
    """The chat template silently drops system messages (April 2024 Phi-3-mini)."""


class Messages(list):
    """A small builder for the HF list-of-dicts form.

    Examples:
        >>> Messages().system("Be brief.").user("Hi")
        [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    """

    def _add(self, role: str, content: str) -> Messages:
        self.append({"role": role, "content": content})
        return self

    def system(self, content: str) -> Messages:
        return self._add("system", content)

    def user(self, content: str) -> Messages:
        return self._add("user", content)

    def assistant(self, content: str) -> Messages:
        return self._add("assistant", content)


def as_messages(conversation: str | Iterable[dict]) -> list[dict]:
    """A plain string becomes one user turn; a list of dicts is copied (never mutated)."""
    if isinstance(conversation, str):
        return [{"role": "user", "content": conversation}]
    if isinstance(conversation, dict):
        raise ChatFormatError(
            "got one message dict; pass a list of messages, e.g. [{'role': 'user', 'content': '...'}]"
        )
    return [dict(m) if isinstance(m, dict) else m for m in conversation]


def image_tags(messages: Sequence[dict]) -> list[tuple[int, int]]:
    """Every ``<|image_N|>`` tag in order, as ``(message index, N)``."""
    return [(i, int(m.group(1))) for i, msg in enumerate(messages) for m in IMAGE_TAG.finditer(msg["content"])]


def validate(
    messages: Sequence[dict],
    *,
    num_images: int = 0,
    add_generation_prompt: bool = True,
    vision: bool | None = None,
) -> None:
    """Check a conversation; raise :class:`ChatFormatError` naming the message and the fix.

    Checks: not empty; each message a dict with a known ``role`` and a string ``content``; a
    system message only first; with ``add_generation_prompt`` the last turn is not the
    assistant's; image tags numbered 1..n, each once, in increasing order, n equal to the
    number of images (and no images for a text-only model, when ``vision`` is False).
    """
    if not messages:
        raise ChatFormatError(
            "the conversation is empty; give at least one user message, e.g. [{'role': 'user', 'content': 'Hi'}]"
        )
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ChatFormatError(
                f"message {i} is {msg!r}; each message is a dict with 'role' and 'content', "
                "e.g. {'role': 'user', 'content': 'Hi'}"
            )
        if msg["role"] not in ROLES:
            raise ChatFormatError(
                f"message {i} has role {msg['role']!r}; Phi-3 knows only {', '.join(ROLES)} "
                "(the July 2024 template drops other roles, the vision template passes them through as text)"
            )
        if not isinstance(msg["content"], str):
            raise ChatFormatError(
                f"message {i} has content of type {type(msg['content']).__name__}; Phi-3 content is a string — "
                "put images in the text as <|image_1|> and pass the pictures separately with images=[...]"
            )
        if msg["role"] == "system" and i > 0:
            raise ChatFormatError(
                f"message {i} is a system message after the start; move it to message 0 (Phi-3 has one system prompt)"
            )
    if add_generation_prompt and messages[-1]["role"] == "assistant":
        raise ChatFormatError(
            f"message {len(messages) - 1} (the last) is from the assistant, so there is nothing to answer; "
            "end with a user message, or pass add_generation_prompt=False to render the conversation as it is"
        )
    _validate_images(messages, num_images, vision)


def _validate_images(messages: Sequence[dict], num_images: int, vision: bool | None) -> None:
    tags = image_tags(messages)
    if vision is False and (tags or num_images):
        where = f"message {tags[0][0]} has <|image_{tags[0][1]}|>" if tags else f"{num_images} image(s) were given"
        raise ChatFormatError(f"{where}, but this is a text-only model; load a vision model such as 'tiny-vision'")
    check_image_tags([(f"message {i}", n) for i, n in tags], num_images, "conversation")


def check_image_tags(tags: Sequence[tuple[str, int]], num_images: int, source: str) -> None:
    """The image-tag rule shared by :func:`validate` (messages) and the processor (one prompt).

    ``tags`` are ``(where, N)`` in order of appearance, ``where`` naming the place for the error
    (``"message 2"``, ``"tag 1 of the prompt"``).  Tags must be ``1, 2, ...``, each once, in order,
    one per image: the model fills image runs in order, so anything else would misplace the pictures.
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


# --- readable renderers, one per revision ----------------------------------------------------


def build_prompt(
    messages: Sequence[dict],
    revision: str,
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "<s>",
    eos_token: str = "<|endoftext|>",
) -> str:
    """Render a conversation the way a template revision does, in plain Python.

    Equal, character for character, to ``apply_chat_template(..., tokenize=False)`` with the
    official template of that revision (tested).

    Examples:
        >>> build_prompt([{"role": "user", "content": "Hi"}], "phi3-mini-2024-07")
        '<|user|>\\nHi<|end|>\\n<|assistant|>\\n'
    """
    parts: list[str] = []
    if revision == "phi3-mini-2024-04":
        parts.append(bos_token)
        for m in messages:  # system is dropped; every user turn opens an assistant turn
            if m["role"] == "user":
                parts.append(f"<|user|>\n{m['content']}<|end|>\n<|assistant|>\n")
            elif m["role"] == "assistant":
                parts.append(f"{m['content']}<|end|>\n")
        return "".join(parts)
    if revision == "phi3-mini-2024-07":
        for m in messages:
            if m["role"] == "system" and not m["content"]:
                continue
            if m["role"] in ROLES:
                parts.append(f"<|{m['role']}|>\n{m['content']}<|end|>\n")
        parts.append("<|assistant|>\n" if add_generation_prompt else eos_token)
        return "".join(parts)
    if revision == "phi3-vision":
        parts += [f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages]
        if add_generation_prompt and messages[-1]["role"] != "assistant":
            parts.append("<|assistant|>\n")
        return "".join(parts)
    raise ValueError(f"unknown template revision {revision!r}; use one of {', '.join(REVISIONS[:3])}")


def _apply(tokenizer, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def template_revision(tokenizer) -> str:
    """Which Phi-3 template revision the tokenizer carries, found by how it behaves.

    Renders probe conversations with the tokenizer's own template and compares the output with
    each revision's :func:`build_prompt`; returns ``"unknown"`` when none matches.
    """
    if not getattr(tokenizer, "chat_template", None):
        return "unknown"
    probes = [
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
         {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}],
        [{"role": "user", "content": "U"}, {"role": "tool", "content": "T"}, {"role": "assistant", "content": "A"}],
    ]
    specials = dict(bos_token=tokenizer.bos_token or "<s>", eos_token=tokenizer.eos_token or "<|endoftext|>")
    for revision in REVISIONS[:3]:
        try:
            if all(
                _apply(tokenizer, p, agp) == build_prompt(p, revision, add_generation_prompt=agp, **specials)
                for p in probes
                for agp in (True, False)
            ):
                return revision
        except Exception:  # a template that raises on a probe is simply not this revision
            continue
    return "unknown"


def fold_system(messages: Sequence[dict]) -> list[dict]:
    """Move a leading system message into the first user turn (``system + "\\n\\n" + user``).

    This is the usual way to give a system prompt to a template without a system role.
    """
    messages = [dict(m) for m in messages]
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0], messages[1:]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system['content']}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": system["content"]}, *rest]


def render(
    tokenizer,
    conversation: str | Iterable[dict],
    *,
    add_generation_prompt: bool = True,
    num_images: int = 0,
    vision: bool | None = None,
    fold_system_prompt: bool | None = None,
) -> str:
    """Validate a conversation and render it with the tokenizer's own chat template.

    Args:
        tokenizer: a tokenizer with a ``chat_template`` (or a processor wrapping one).
        conversation: a string (one user turn) or HF messages.
        add_generation_prompt: end with ``<|assistant|>\\n`` so the model answers.
        num_images: images that go with the conversation (for the tag checks).
        vision: whether the model takes images (``None``: do not check).
        fold_system_prompt: when the template would drop the system message: ``None`` warns
            (:class:`SystemMessageDropped`) and keeps the template's behaviour, ``True`` folds it
            into the first user turn, ``False`` drops it silently.
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    messages = as_messages(conversation)
    validate(messages, num_images=num_images, add_generation_prompt=add_generation_prompt, vision=vision)
    text = _apply(tokenizer, messages, add_generation_prompt)
    system = messages[0]["content"] if messages[0]["role"] == "system" and messages[0]["content"] else None
    if system is not None and system not in text:
        if fold_system_prompt:
            return _apply(tokenizer, fold_system(messages), add_generation_prompt)
        if fold_system_prompt is None:
            warnings.warn(
                "this chat template (April 2024 Phi-3-mini) drops system messages, so the model never sees "
                f"{system[:40]!r}; pass fold_system_prompt=True to put it at the start of the first user turn, "
                "or load the July 2024 revision, which has a <|system|> role",
                SystemMessageDropped,
                stacklevel=2,
            )
    return text


# --- prompt text to ids ------------------------------------------------------------------------


def tokenize_prompt(
    tokenizer, text: str, image_token_counts: Sequence[int] | None = None
) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character spans of a rendered prompt, the way the official code tokenizes it.

    * Without images: one ``tokenizer(text)`` call; ``<s>`` is not added a second time when the
      template already starts with it (April 2024 Phi-3-mini).
    * With images (Phi-3-vision's processor rule, PHI3_SPEC.md §2.7): the text is split at each
      ``<|image_N|>`` tag, every chunk is tokenized separately *with* special tokens (so each chunk,
      even an empty one, starts with BOS), and tag ``<|image_k|>`` becomes ``-k`` repeated
      ``image_token_counts[k-1]`` times.  Image positions get the tag's span.
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if image_token_counts is None:
        bos = tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    start = 0
    matches = list(IMAGE_TAG.finditer(text)) + [None]
    for match in matches:
        end = match.start() if match else len(text)
        enc = tokenizer(text[start:end], add_special_tokens=True, return_offsets_mapping=True)
        ids += list(enc["input_ids"])
        spans += [(a + start, b + start) if b > a else (start, start) for a, b in enc["offset_mapping"]]
        if match is not None:
            k = int(match.group(1))
            if k > len(image_token_counts):
                raise ChatFormatError(f"the prompt has <|image_{k}|> but only {len(image_token_counts)} image(s)")
            ids += [-k] * image_token_counts[k - 1]
            spans += [match.span()] * image_token_counts[k - 1]
            start = match.end()
    return ids, spans
