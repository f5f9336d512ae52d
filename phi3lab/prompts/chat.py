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

Control tokens typed inside message content (``<|end|>``, ``<|user|>``, ``<s>``, ...) would become
real control tokens and let a message forge turns.  ``special_tokens=`` says what to do with them:
``"refuse"`` (the default) raises :class:`ChatFormatError` naming the token; ``"allow"`` keeps the
official behaviour (they act as control tokens — what a prompt-injection probe needs); ``"escape"``
sends them to the model as plain text (:func:`tokenize_prompt` tokenizes them as ordinary text).
The strings checked are the tokenizer's own added tokens; ``<|image_N|>`` tags are image tags, not
special tokens, and follow the image-tag rule (on a text-only model ``"allow"``/``"escape"`` let them
through as the plain text they are there).
"""

from __future__ import annotations

import bisect
import itertools
import re
import warnings
from collections.abc import Sequence

from phi3lab.errors import Phi3LabWarning
from phi3lab.models.phi3_v import prompting
from phi3lab.models.phi3_v.prompting import IMAGE_TAG, ChatFormatError, check_image_tags, tag_number
from phi3lab.validation import check_bool, check_choice, check_encodable, check_int

__all__ = [
    "ROLES",
    "REVISIONS",
    "SPECIAL_TOKEN_MODES",
    "ChatFormatError",
    "ChatTypeError",
    "RenderedPrompt",
    "SystemMessageDropped",
    "Messages",
    "as_messages",
    "validate",
    "image_tags",
    "template_revision",
    "build_prompt",
    "render",
    "fold_system",
    "special_strings",
    "tokenize_prompt",
]

ROLES = ("system", "user", "assistant")
REVISIONS = ("phi3-mini-2024-04", "phi3-mini-2024-07", "phi3-vision", "unknown")
SPECIAL_TOKEN_MODES = ("refuse", "allow", "escape")
# Phi-3's added tokens (PHI3_SPEC.md §1.2), for checks made without a tokenizer
PHI3_SPECIAL_STRINGS = (
    "<unk>",
    "<s>",
    "</s>",
    "<|endoftext|>",
    "<|assistant|>",
    "<|system|>",
    "<|end|>",
    "<|user|>",
    "<|image|>",
    *(f"<|placeholder{k}|>" for k in range(1, 40)),
)


class ChatTypeError(ChatFormatError, TypeError):
    """A conversation (or a message in it) of the wrong type; also a :class:`TypeError`."""


class RenderedPrompt(str):
    """A rendered prompt that remembers which character spans must reach the model as plain text.

    :func:`render` returns one with ``special_tokens="escape"``; :func:`tokenize_prompt` reads
    ``plain_spans`` and tokenizes those spans with special tokens split.  String operations
    (slicing, ``+``) give plain ``str`` back, without the spans.
    """

    plain_spans: tuple[tuple[int, int], ...]

    def __new__(cls, text: str, plain_spans: Sequence[tuple[int, int]] = ()):
        self = super().__new__(cls, text)
        self.plain_spans = tuple(plain_spans)
        return self


def special_strings(tokenizer=None) -> tuple[str, ...]:
    """The strings that a tokenizer turns into control tokens wherever they appear, longest first.

    These are its added tokens (``<s>``, ``<|end|>``, ``<|user|>``, placeholders, ...); without a
    tokenizer, Phi-3's.  ``<|image_N|>`` tags are not among them: they are not tokens.
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    decoder = getattr(tokenizer, "added_tokens_decoder", None)
    strings = {t.content for t in decoder.values()} if decoder else set(PHI3_SPECIAL_STRINGS)
    return tuple(sorted((s for s in strings if s), key=lambda s: (-len(s), s)))


def _special_pattern(strings: Sequence[str]) -> re.Pattern:
    return re.compile("|".join(re.escape(s) for s in strings)) if strings else re.compile(r"(?!)")


class SystemMessageDropped(Phi3LabWarning):
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


def as_messages(conversation: str | Sequence[dict]) -> list[dict]:
    """A plain string becomes one user turn; a list of dicts is copied (never mutated).

    Raises:
        ChatTypeError: for anything else (a single dict, bytes, ``None``, a number, an iterator).
    """
    if isinstance(conversation, str):
        return [{"role": "user", "content": conversation}]
    example = "'What is 2 plus 3?' or [{'role': 'user', 'content': 'What is 2 plus 3?'}]"
    if isinstance(conversation, dict):
        raise ChatTypeError("got one message dict; pass a list of messages, e.g. [{'role': 'user', 'content': '...'}]")
    if isinstance(conversation, (bytes, bytearray)):
        raise ChatTypeError(
            f"the conversation is {type(conversation).__name__}, not text; decode it first, e.g. data.decode('utf-8')"
        )
    if not isinstance(conversation, (list, tuple)):
        raise ChatTypeError(
            f"a conversation is a string (one user turn) or a list of messages, got {type(conversation).__name__}; "
            f"pass e.g. {example}"
        )
    return [dict(m) if isinstance(m, dict) else m for m in conversation]


def image_tags(messages: Sequence[dict]) -> list[tuple[int, int]]:
    """Every ``<|image_N|>`` tag in order, as ``(message index, N)``."""
    return [
        (i, tag_number(m, f"message {i}")) for i, msg in enumerate(messages) for m in IMAGE_TAG.finditer(msg["content"])
    ]


def validate(
    messages: Sequence[dict],
    *,
    num_images: int = 0,
    add_generation_prompt: bool = True,
    vision: bool | None = None,
    special_tokens: str | None = None,
    specials: Sequence[str] | None = None,
) -> None:
    """Check a conversation; raise :class:`ChatFormatError` naming the message and the fix.

    Checks: not empty; each message a dict with a known ``role`` and a string ``content`` of
    valid Unicode; a system message only first; with ``add_generation_prompt`` a user message
    to answer and a last turn that is not the assistant's; image tags numbered 1..n, each once,
    in increasing order, n equal to the number of images (and no images for a text-only model,
    when ``vision`` is False); with ``special_tokens="refuse"`` (the default) no control-token
    string in any content.

    Args:
        special_tokens: ``"refuse"``, ``"allow"`` or ``"escape"`` (see the module docstring);
            ``None`` is ``"refuse"``.
        specials: the control-token strings to look for (default: Phi-3's); :func:`render`
            passes the tokenizer's own (:func:`special_strings`).
    """
    mode = _mode(special_tokens)
    check_int("num_images", num_images, minimum=0)
    check_bool("add_generation_prompt", add_generation_prompt)
    if vision is not None:
        check_bool("vision", vision)
    messages = as_messages(messages)
    if not messages:
        raise ChatFormatError(
            "the conversation is empty; give at least one user message, e.g. [{'role': 'user', 'content': 'Hi'}]"
        )
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            error = ChatFormatError if isinstance(msg, dict) else ChatTypeError
            raise error(
                f"message {i} is {_short(msg)}; each message is a dict with 'role' and 'content', "
                "e.g. {'role': 'user', 'content': 'Hi'}"
            )
        if not isinstance(msg["role"], str) or msg["role"] not in ROLES:
            raise ChatFormatError(
                f"message {i} has role {_short(msg['role'])}; Phi-3 knows only {', '.join(ROLES)} "
                "(the July 2024 template drops other roles, the vision template passes them through as text)"
            )
        if not isinstance(msg["content"], str):
            raise ChatTypeError(
                f"message {i} has content of type {type(msg['content']).__name__}; Phi-3 content is a string — "
                "put images in the text as <|image_1|> and pass the pictures separately with images=[...]"
            )
        check_encodable(f"message {i} ({msg['role']})", msg["content"], ChatFormatError)
        if msg["role"] == "system" and i > 0:
            raise ChatFormatError(
                f"message {i} is a system message after the start; move it to message 0 (Phi-3 has one system prompt)"
            )
    if add_generation_prompt and messages[-1]["role"] == "assistant":
        raise ChatFormatError(
            f"message {len(messages) - 1} (the last) is from the assistant, so there is nothing to answer; "
            "end with a user message, or pass add_generation_prompt=False to render the conversation as it is"
        )
    if add_generation_prompt and not any(m["role"] == "user" for m in messages):
        raise ChatFormatError(
            "the conversation has no user message (only a system prompt), so there is nothing to answer; "
            "add one, e.g. [{'role': 'system', 'content': '...'}, {'role': 'user', 'content': 'Hi'}]"
        )
    if mode == "refuse":
        _refuse_specials(messages, PHI3_SPECIAL_STRINGS if specials is None else specials)
    _validate_images(messages, num_images, vision, tags_are_text=vision is False and mode != "refuse")


def _mode(special_tokens: str | None) -> str:
    if special_tokens is None:
        return "refuse"
    return check_choice("special_tokens", special_tokens, SPECIAL_TOKEN_MODES)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _refuse_specials(messages: Sequence[dict], specials: Sequence[str]) -> None:
    pattern = _special_pattern(specials)
    for i, msg in enumerate(messages):
        found = pattern.search(msg["content"])
        if found:
            raise ChatFormatError(
                f"message {i} ({msg['role']}) contains {found.group(0)!r} at character {found.start()}, a control "
                "token of this tokenizer: typed inside a message it would end the turn or start a forged one. "
                "Remove it, or choose: special_tokens='escape' sends it to the model as plain text, "
                "special_tokens='allow' lets it act as the control token (the official behaviour, e.g. to probe "
                "prompt injection)"
            )


def _validate_images(
    messages: Sequence[dict], num_images: int, vision: bool | None, tags_are_text: bool = False
) -> None:
    tags = [] if tags_are_text else image_tags(messages)
    if vision is False and (tags or num_images):
        where = f"message {tags[0][0]} has <|image_{tags[0][1]}|>" if tags else f"{num_images} image(s) were given"
        hint = "" if num_images else " (or pass special_tokens='escape' to send the tag as plain text)"
        raise ChatFormatError(
            f"{where}, but this is a text-only model; load a vision model such as 'tiny-vision'{hint}"
        )
    check_image_tags([(f"message {i}", n) for i, n in tags], num_images, "conversation")


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
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "U1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "U2"},
        ],
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
    conversation: str | Sequence[dict],
    *,
    add_generation_prompt: bool = True,
    num_images: int = 0,
    vision: bool | None = None,
    fold_system_prompt: bool | None = None,
    special_tokens: str | None = None,
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
        special_tokens: control-token strings typed in the content (``<|end|>``, ``<s>``, ...):
            ``"refuse"`` raises :class:`ChatFormatError`, ``"allow"`` lets them act as control
            tokens (official behaviour), ``"escape"`` makes them plain text; ``None`` (default) is
            ``"refuse"``.  It is an argument, never a hidden setting: code that renders passes it on.

    Returns:
        The prompt string; with ``"escape"`` a :class:`RenderedPrompt` whose ``plain_spans``
        tell :func:`tokenize_prompt` (and so ``lab.encode``, generation and token tables) to keep
        them text.
    """
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    if not callable(getattr(tok, "apply_chat_template", None)):
        raise TypeError(
            f"render takes the model's tokenizer or processor (e.g. lab.tokenizer), got {type(tokenizer).__name__}"
        )
    if fold_system_prompt is not None:
        check_bool("fold_system_prompt", fold_system_prompt)
    mode = _mode(special_tokens)
    messages = as_messages(conversation)
    specials = special_strings(tok)
    validate(
        messages,
        num_images=num_images,
        add_generation_prompt=add_generation_prompt,
        vision=vision,
        special_tokens=mode,
        specials=specials,
    )
    template = getattr(tok, "chat_template", None)
    if not template:
        raise ChatFormatError(
            "this tokenizer has no chat template (no chat_template in tokenizer_config.json or chat_template.jinja); "
            "load an instruct checkpoint such as microsoft/Phi-3-mini-4k-instruct, or set tokenizer.chat_template"
        )
    marks = _Marks(messages, specials, str(template)) if mode == "escape" else None
    if marks is not None:
        messages = marks.messages
    text = _apply_checked(tok, messages, add_generation_prompt)
    system = messages[0]["content"] if messages[0]["role"] == "system" and messages[0]["content"] else None
    if system is not None and system not in text:
        if fold_system_prompt:
            text = _apply_checked(tok, fold_system(messages), add_generation_prompt)
        elif fold_system_prompt is None:
            shown = marks.restore(system) if marks else system
            warnings.warn(
                "this chat template (April 2024 Phi-3-mini) drops system messages, so the model never sees "
                f"{shown[:40]!r}; pass fold_system_prompt=True to put it at the start of the first user turn, "
                "or load the July 2024 revision, which has a <|system|> role",
                SystemMessageDropped,
                stacklevel=2,
            )
    return marks.prompt(text) if marks else text


def _apply_checked(tokenizer, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        return _apply(tokenizer, messages, add_generation_prompt)
    except TemplateError as exc:
        raise ChatFormatError(
            f"the tokenizer's chat template refused this conversation ({type(exc).__name__}: {exc}); "
            "check the roles and their order against the template, or render with a Phi-3 template"
        ) from exc


class _Marks:
    """Stand-ins for the control-token strings typed in content, so their spans survive the template.

    Each typed string becomes a private-use character pair around its index (characters that occur
    in no message and not in the template); after rendering, :meth:`prompt` puts the strings back
    and records where they are.
    """

    def __init__(self, messages: Sequence[dict], specials: Sequence[str], template: str):
        used = set(template).union(*(set(m["content"]) for m in messages))
        private_use = itertools.chain(range(0xE000, 0xF900), range(0xF0000, 0xFFFFE))
        free = [chr(c) for c in itertools.islice((c for c in private_use if chr(c) not in used), 2)]
        if len(free) < 2:
            raise ChatFormatError(
                "special_tokens='escape' marks typed tokens with private-use characters, and this conversation "
                "uses all of them; remove the typed control tokens, or pass special_tokens='allow'"
            )
        self.open, self.close = free
        self.originals: list[str] = []
        pattern = _special_pattern(specials)

        def mark(match: re.Match) -> str:
            self.originals.append(match.group(0))
            return f"{self.open}{len(self.originals) - 1}{self.close}"

        self.messages = [{**m, "content": pattern.sub(mark, m["content"])} for m in messages]
        self._marker = re.compile(f"{re.escape(self.open)}(\\d+){re.escape(self.close)}")

    def restore(self, text: str) -> str:
        return self._marker.sub(lambda m: self.originals[int(m.group(1))], text)

    def prompt(self, text: str) -> RenderedPrompt:
        parts, spans, length, pos = [], [], 0, 0
        for m in self._marker.finditer(text):
            parts.append(text[pos : m.start()])
            length += m.start() - pos
            original = self.originals[int(m.group(1))]
            parts.append(original)
            spans.append((length, length + len(original)))
            length += len(original)
            pos = m.end()
        parts.append(text[pos:])
        return RenderedPrompt("".join(parts), spans)


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
      ``image_token_counts[k-1]`` times.  Image positions get the tag's span.  The rule itself is
      :func:`phi3lab.models.phi3_v.prompting.tokenize_prompt`.
    * A :class:`RenderedPrompt` from ``render(..., special_tokens="escape")`` keeps the control-token
      strings typed in its content as plain text: the text between two of the template's own
      special tokens that holds one is tokenized with special tokens split, exactly as the tokenizer
      treats any text between special tokens.
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if not isinstance(text, str):
        raise TypeError(f"tokenize_prompt takes the rendered prompt string, got {type(text).__name__}")
    check_encodable("the prompt", text)
    if image_token_counts is not None:
        image_token_counts = [
            check_int(f"image_token_counts[{i}]", n, minimum=0) for i, n in enumerate(image_token_counts)
        ]
    plain = getattr(text, "plain_spans", ())

    def encode(start: int, end: int, add_special: bool):
        return _encode(
            tokenizer,
            text[start:end],
            add_special,
            [(a - start, b - start) for a, b in plain if start <= a and b <= end],
        )

    return prompting.tokenize_prompt(tokenizer, text, image_token_counts, encode=encode)


def _encode(tokenizer, text: str, add_special: bool, plain: Sequence[tuple[int, int]]):
    """``tokenizer(text)`` ids and offsets, with the special tokens inside ``plain`` spans split into text."""
    # verbose=False: the "longer than the maximum sequence length" log line; the context check says it better
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True, verbose=False)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if not plain:
        return ids, offsets
    added = set(tokenizer.added_tokens_decoder)
    ends = [b for _, b in plain]

    def typed(k: int) -> bool:  # a special token that the content typed (inside a plain span)
        return ids[k] in added and _plain_overlap(plain, ends, *offsets[k]) is not None

    def template(k: int) -> bool:
        return ids[k] in added and not typed(k)

    out_ids: list[int] = []
    out_offsets: list[tuple[int, int]] = []
    k, segment_start = 0, 0
    while k < len(ids):
        if template(k):
            out_ids.append(ids[k])
            out_offsets.append(offsets[k])
            segment_start = max(segment_start, offsets[k][1])
            k += 1
            continue
        j = k
        while j < len(ids) and not template(j):
            j += 1
        segment_end = offsets[j][0] if j < len(ids) and offsets[j][1] > offsets[j][0] else len(text)
        if any(typed(r) for r in range(k, j)):
            sub = tokenizer(
                text[segment_start:segment_end],
                add_special_tokens=False,
                split_special_tokens=True,
                return_offsets_mapping=True,
                verbose=False,
            )
            for token_id, (a, b) in zip(sub["input_ids"], sub["offset_mapping"]):
                a, b = a + segment_start, b + segment_start
                inside = _plain_overlap(plain, ends, a, b) if token_id in added else None
                if inside is None:
                    out_ids.append(token_id)
                    out_offsets.append((a, b))
                else:  # an added token that is not "special" (e.g. </s>): split_special_tokens keeps it
                    for piece in tokenizer.backend_tokenizer.model.tokenize(text[inside[0] : inside[1]]):
                        out_ids.append(piece.id)
                        out_offsets.append((piece.offsets[0] + inside[0], piece.offsets[1] + inside[0]))
        else:
            out_ids += ids[k:j]
            out_offsets += offsets[k:j]
        k = j
    return out_ids, out_offsets


def _plain_overlap(plain: Sequence[tuple[int, int]], ends: Sequence[int], a: int, b: int) -> tuple[int, int] | None:
    """The plain span (sorted, disjoint; ``ends`` their ends) that overlaps ``[a, b)``, if any."""
    j = bisect.bisect_right(ends, a)
    return plain[j] if j < len(plain) and plain[j][0] < b else None
