"""Run a model once and keep what happened inside: attention rows, the residual stream, the answer.

    >>> import phi3lab
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> logits, cache = lab.run_with_cache("What is 2 plus 3?")
    >>> cache.attention(0).shape[:2], cache.num_tokens == logits.shape[1]
    (torch.Size([1, 4]), True)

:meth:`phi3lab.Lab.run_with_cache` (TransformerLens' ``logits, cache = model.run_with_cache(tokens)``
for Phi-3) encodes the conversation once (:class:`~phi3lab.prompts.inputs.Inputs`), installs hooks on that
model's own modules for the duration of the run — the attention rows of :func:`phi3lab.inspect.capture.capture`
and the residual stream after every decoder layer — and returns a :class:`Cache` that answers the
usual questions without re-running anything or typing a size again:

* ``cache.attention(layer)`` → ``[batch, heads, rows, keys]``, equal to eager ``output_attentions``;
* ``cache.residual(layer)`` → ``[batch, rows, hidden]``, ``cache.embeddings()`` the input to layer 0;
* ``cache.logit_lens(row)``, ``cache.rollout(rows)``, ``cache.image_heat(image)``, ``cache.to_text()``.

With ``max_new_tokens > 0`` the model generates greedily and the cache also holds one row per
answer token (the rows that predicted it), as ``capture`` records them across ``generate``.
Everything is estimated before the run and refused above the memory budget, with advice.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Sequence

import torch

from phi3lab.inspect.capture import (
    AttentionCapture,
    QuerySpec,
    _select_rows,
    attention_layers,
    capture,
    check_budget,
)

__all__ = ["Cache", "run_with_cache"]


class _Residuals:
    """Hooks that keep the residual stream at the captured rows: layer 0's input and every layer's output."""

    def __init__(self, model, queries: QuerySpec):
        base = getattr(model, "model", model)
        self.layers = list(base.layers)
        self.queries = queries
        self.states: dict[int, list[torch.Tensor]] = {i: [] for i in range(-1, len(self.layers))}
        self.handles: list = []

    def _keep(self, index: int, hidden: torch.Tensor, past: bool) -> None:
        q_len = hidden.shape[1]
        rows = torch.tensor([0]) if past and q_len == 1 else _select_rows(self.queries, q_len)
        self.states[index].append(hidden[:, rows.to(hidden.device)].detach().float().cpu())

    def _before(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self._keep(-1, hidden, _has_past(kwargs))
        return None

    def _after(self, index, module, args, kwargs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        self._keep(index, hidden, _has_past(kwargs))
        return None

    def __enter__(self):
        self.handles.append(self.layers[0].register_forward_pre_hook(self._before, with_kwargs=True))
        for i, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_hook(functools.partial(self._after, i), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _has_past(kwargs) -> bool:
    cache = kwargs.get("past_key_values")
    return cache is not None and cache.get_seq_length() > 0


class Cache:
    """What one :meth:`~phi3lab.Lab.run_with_cache` saw.

    Attributes:
        inputs: the :class:`~phi3lab.prompts.inputs.Inputs` that were run (token table, image layouts).
        answer_ids: the generated ids (empty for a single forward).
        layers, heads: what was captured (``heads`` is ``None`` for all).
        capture: the underlying :class:`~phi3lab.inspect.capture.AttentionCapture`.
    """

    def __init__(
        self,
        lab,
        inputs,
        cap: AttentionCapture,
        residuals: _Residuals | None,
        answer_ids: Sequence[int],
        rollout_ready: bool,
    ):
        self._lab = lab
        self.inputs = inputs
        self.capture = cap
        self.layers, self.heads = cap.layers, cap.heads
        self._residuals = residuals
        self.answer_ids = tuple(int(i) for i in answer_ids)
        self._rollout_ready = rollout_ready
        self._maps: dict[int, torch.Tensor] = {}

    @property
    def lab(self):
        """The :class:`~phi3lab.Lab` that ran (model, tokenizer, spec)."""
        return self._lab

    # --- what was run --------------------------------------------------------------------------

    @property
    def prompt_tokens(self) -> int:
        return self.inputs.num_tokens

    @property
    def num_tokens(self) -> int:
        """Positions the model processed: the prompt plus every answer token fed back."""
        return self.prompt_tokens + max(len(self.answer_ids) - 1, 0)

    @property
    def tokens(self) -> list[str]:
        """A label per processed position (image positions as ``<img1>``…), answer tokens included."""
        tok = self._lab.tokenizer
        labels = [f"<img{-r.id}>" if r.segment == "image" else r.token for r in self.inputs.table.rows]
        return labels + tok.convert_ids_to_tokens(list(self.answer_ids[:-1]))

    @property
    def positions(self) -> list[int]:
        """Absolute position of every captured row (batch row 0)."""
        return [int(p) for p in self.capture.positions(self.layers[0])[0]]

    @property
    def answer_rows(self) -> list[int]:
        """Indices (along the rows axis) of the rows that predicted the answer tokens; for a single
        forward, the last row (the one that predicts the next token)."""
        positions = self.positions
        if not self.answer_ids:
            return [len(positions) - 1]
        first = self.prompt_tokens - 1
        return [i for i, p in enumerate(positions) if p >= first]

    def _rows(self, rows) -> list[int]:
        n = len(self.positions)
        if rows is None or rows == "answer":
            return self.answer_rows
        if rows == "all":
            return list(range(n))
        items = [rows] if isinstance(rows, int) else list(rows)
        if not items or any(isinstance(r, bool) or not isinstance(r, int) for r in items):
            raise TypeError(f"rows must be 'answer', 'all', an int or a list of ints, got {rows!r}")
        bad = [r for r in items if not -n <= r < n]
        if bad:
            raise IndexError(f"rows {bad} do not exist; the cache holds {n} rows (0..{n - 1}, negative from the end)")
        return [r % n for r in items]

    # --- attention -----------------------------------------------------------------------------

    def attention(self, layer: int) -> torch.Tensor:
        """``[batch, heads, rows, keys]`` attention probabilities of a captured layer (assembled once)."""
        layer = self._layer(layer)
        if layer not in self._maps:
            self._maps[layer] = self.capture.weights(layer)
        return self._maps[layer]

    def _layer(self, layer: int) -> int:
        n = self._lab.model.config.num_hidden_layers
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}")
        if not -n <= layer < n:
            raise IndexError(f"layer {layer} does not exist; the model has layers 0..{n - 1}")
        return layer % n

    def mean_attention(self, layers=None, heads=None, rows="answer") -> torch.Tensor:
        """Attention averaged over layers, heads and rows: one ``[keys]`` row (batch row 0)."""
        chosen = (
            self.layers
            if layers is None
            else [self._layer(i) for i in ([layers] if isinstance(layers, int) else layers)]
        )
        rows = self._rows(rows)
        stacked = torch.stack([self.attention(i)[0][:, rows] for i in chosen])  # [layers, heads, rows, keys]
        if heads is not None:
            head_list = [heads] if isinstance(heads, int) else list(heads)
            if self.heads is not None:
                missing = [h for h in head_list if h not in self.heads]
                if missing:
                    raise KeyError(f"heads {missing} were not captured; captured heads: {self.heads}")
                head_list = [self.heads.index(h) for h in head_list]
            stacked = stacked[:, head_list]
        return stacked.mean(dim=(0, 1, 2))

    def head_shares(self, keys, rows="answer") -> torch.Tensor:
        """``[layers, heads]``: share of each captured head's attention on ``keys`` (positions, a
        slice, or ``"image"`` for every image position), averaged over ``rows``."""
        from phi3lab.inspect.maps import head_summary

        if isinstance(keys, str):
            if keys != "image" or not self.inputs.images:
                raise ValueError(f"keys={keys!r}: give positions, a slice, or 'image' (for a prompt with images)")
            keys = [p for im in self.inputs.images for p in range(im.start, im.end)]
        weights = torch.stack([self.attention(i)[0][:, self._rows(rows)] for i in self.layers])
        return head_summary(weights, keys)

    def rollout(self, rows="answer", residual: float = 0.5, chunk: int = 256) -> torch.Tensor:
        """Attention rollout of the chosen rows through every layer: ``[len(rows), keys]``.

        Computed as vector–matrix products from the top layer down, ``chunk`` query rows at a time,
        from the kept queries and keys (``run_with_cache(..., rollout=True)``) or from the stored
        maps when every row of every layer was captured — never an ``N × N`` matrix per layer.
        """
        from phi3lab.inspect.maps import map_rows, qk_rows, rollout_rows

        n_layers = self._lab.model.config.num_hidden_layers
        if len(self.layers) != n_layers:
            raise ValueError(f"rollout needs every layer; this cache holds layers {self.layers}. Run with layers='all'")
        n = self.num_tokens
        wanted = [self.positions[r] for r in self._rows(rows)]
        if self._rollout_ready:
            modules = attention_layers(self._lab.model)
            getters = []
            for layer in range(n_layers):
                q, k, groups = self.capture.queries_keys(layer)
                getters.append(
                    qk_rows(
                        q[0],
                        k[0],
                        modules[layer].scaling,
                        groups,
                        self._key_mask(n),
                        getattr(self._lab.model.config, "sliding_window", None),
                    )
                )
        elif self.heads is None and self.positions == list(range(n)):
            getters = [map_rows(self.attention(layer)[0]) for layer in range(n_layers)]
        else:
            raise ValueError(
                "rollout needs every query row of every head: run with rollout=True "
                "(scales to long prompts) or with queries='all' and heads=None"
            )
        return rollout_rows(getters, wanted, n, residual=residual, chunk=chunk)

    def _key_mask(self, n: int) -> torch.Tensor:
        mask = self.inputs["attention_mask"][0].cpu()
        return torch.cat([mask, torch.ones(n - mask.numel(), dtype=mask.dtype)]) if n > mask.numel() else mask[:n]

    def image_heat(self, image: int = 0, *, layers=None, heads=None, rows="answer", source: str = "attention"):
        """Where the chosen rows look on image ``image``: an :class:`~phi3lab.inspect.maps.ImageHeat`
        on the crop and global-view grids, with the size and crop budget the image was processed with.

        Args:
            image: 0-based image index.
            layers, heads: what to average (default: everything captured).
            rows: ``"answer"`` (default), ``"all"``, or row indices.
            source: ``"attention"`` (raw attention, averaged) or ``"rollout"``.
        """
        from phi3lab.inspect.maps import image_heat

        span = self.inputs.image(image)
        if source == "attention":
            row = self.mean_attention(layers, heads, rows)
        elif source == "rollout":
            row = self.rollout(rows).mean(0)
        else:
            raise ValueError(f"source must be 'attention' or 'rollout', got {source!r}")
        return image_heat(row, span.start, span.width, span.height, span.num_crops)

    # --- residual stream -----------------------------------------------------------------------

    def _stream(self, index: int) -> torch.Tensor:
        if self._residuals is None:
            raise RuntimeError("the residual stream was not kept; run with residual=True")
        return torch.cat(self._residuals.states[index], dim=1)

    def residual(self, layer: int) -> torch.Tensor:
        """``[batch, rows, hidden]``: the residual stream after decoder layer ``layer`` (before the final norm)."""
        return self._stream(self._layer(layer))

    def embeddings(self) -> torch.Tensor:
        """``[batch, rows, hidden]``: the input to layer 0 (token embeddings, image features written in)."""
        return self._stream(-1)

    def logit_lens(self, row: int = -1, top_k: int = 5):
        """What each layer would predict at one captured row (a :class:`~phi3lab.inspect.lens.LogitLens`)."""
        from phi3lab.inspect.lens import read_lens

        index = self._rows(row)[0]
        n = self._lab.model.config.num_hidden_layers
        hidden = torch.stack([self.embeddings()[0, index]] + [self.residual(i)[0, index] for i in range(n)])
        model = self._lab.model
        base = getattr(model, "model", model)
        with torch.inference_mode():
            device = next(model.parameters()).device
            normed = base.norm(hidden.to(device, next(model.parameters()).dtype))
            return read_lens(model, self._lab.tokenizer, normed, self.positions[index], top_k)

    # --- text -----------------------------------------------------------------------------------

    def to_text(self, top: int = 3) -> str:
        """A summary: what ran, what was kept, and where the answer's rows look (last captured layer)."""
        from phi3lab.inspect.maps import top_keys

        tok = self._lab.tokenizer
        heads = "all heads" if self.heads is None else f"heads {self.heads}"
        lines = [
            f"{self.prompt_tokens} prompt tokens + {len(self.answer_ids)} answer tokens; "
            f"layers {_ranges(self.layers)}, {heads}, {len(self.positions)} rows, "
            f"{self.capture.bytes / 2**20:.1f} MiB",
        ]
        if self.answer_ids:
            lines.append(f"answer: {tok.decode(list(self.answer_ids), skip_special_tokens=True)!r}")
        for im in self.inputs.images:
            lines.append(
                f"image {im.index + 1}: {im.width}×{im.height}, {im.layout.grid[0]}×{im.layout.grid[1]} "
                f"crops, tokens {im.start}..{im.end - 1}"
            )
        labels = self.tokens
        last = self.layers[-1]
        weights = self.attention(last)[0].mean(0)  # [rows, keys]
        predicted = tok.convert_ids_to_tokens(list(self.answer_ids)) if self.answer_ids else []
        for k, r in enumerate(self.answer_rows):
            position = self.positions[r]
            tops = ", ".join(f"{t!r}@{i} {w:.2f}" for i, t, w in top_keys(weights[r], labels, top))
            then = f" predicts {predicted[k]!r:<10}" if k < len(predicted) else ""
            lines.append(f"row {position:>4} {labels[position]!r:<14}{then} layer {last} looks at {tops}")
        return "\n".join(lines)

    __str__ = to_text

    def __repr__(self) -> str:
        return (
            f"Cache({self.prompt_tokens} prompt + {len(self.answer_ids)} answer tokens, "
            f"layers {_ranges(self.layers)}, {len(self.positions)} rows)"
        )


def _ranges(values: Sequence[int]) -> str:
    values = list(values)
    if values and values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}..{values[-1]}"
    return ", ".join(map(str, values))


def _estimate(model, layers: list[int], heads, queries, prompt: int, steps: int, residual: bool, keep_qk: bool) -> int:
    """Bytes the run will keep: attention rows, residual rows and (for rollout) queries and keys."""
    config = model.config
    n_heads = len(heads) if heads is not None else config.num_attention_heads
    prefill = len(_select_rows(queries, prompt))
    step_keys = sum(prompt + s for s in range(1, steps))  # each decode step: one row over all keys so far
    nbytes = 4 * len(layers) * n_heads * (prefill * prompt + step_keys)
    rows = prefill + max(steps - 1, 0)
    if residual:
        nbytes += 4 * (config.num_hidden_layers + 1) * config.hidden_size * rows
    if keep_qk:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        element = next(model.parameters()).element_size()
        total = prompt + max(steps - 1, 0)
        nbytes += element * len(layers) * (config.num_attention_heads + config.num_key_value_heads) * head_dim * total
    return nbytes


def run_with_cache(
    lab,
    conversation,
    images: Sequence | None = None,
    *,
    layers="all",
    heads=None,
    queries: QuerySpec = "all",
    max_new_tokens: int = 0,
    residual: bool = True,
    rollout: bool = False,
    budget: int | None = None,
    num_crops: int | None = None,
    **render_kwargs,
):
    """Encode a conversation, run the model with hooks, and return ``(output, Cache)``.

    Args:
        lab: a :class:`~phi3lab.Lab`.
        conversation: a string (one user turn) or HF messages.
        images: pictures for the ``<|image_N|>`` tags (vision models).
        layers, heads, queries: what attention to keep (see :func:`phi3lab.inspect.capture.capture`); the
            prompt's rows follow ``queries`` and every generated token adds its own row.
        max_new_tokens: 0 runs one forward; more generates greedily (stopping at the stop ids).
        residual: keep the residual stream at the captured rows (for the logit lens).
        rollout: keep every position's queries and keys, so :meth:`Cache.rollout` scales to long prompts.
        budget: bytes the cache may keep (default a quarter of free memory); checked before running.
        num_crops: crop budget for the images (default the processor's).

    Returns:
        ``(logits, cache)`` for a single forward (logits ``[1, tokens, vocab]``), or
        ``(ChatResult, cache)`` when generating.
    """
    from phi3lab.runtime.generation import chat_result, generate_kwargs

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise TypeError(f"max_new_tokens must be an int ≥ 0 (0 runs one forward), got {max_new_tokens!r}")
    from phi3lab.validation import check_context

    inputs = lab.encode(conversation, images, num_crops=num_crops, **render_kwargs)
    check_context(
        inputs.num_tokens,
        max_new_tokens,
        lab.spec.context_length,
        image_tokens=sum(im.num_tokens for im in inputs.images),
    )
    model = lab.model
    probe = capture(model, layers=layers, heads=heads, queries=queries, budget=budget, keep_qk=rollout)
    cap_layers = probe.cap.layers
    limit = probe.cap.budget
    need = _estimate(
        model, cap_layers, probe.cap.heads, probe.cap.queries, inputs.num_tokens, max_new_tokens, residual, rollout
    )
    check_budget(
        need,
        limit,
        f"run_with_cache on {inputs.num_tokens} prompt tokens" + (f" + {max_new_tokens} new" if max_new_tokens else ""),
        "capture fewer layers or heads, queries='last', residual=False or rollout=False, a shorter "
        "prompt, or pass budget= if you know the memory is there",
    )
    keeper = _Residuals(model, probe.cap.queries) if residual else None
    with torch.inference_mode(), probe as cap, keeper or contextlib.nullcontext():
        if max_new_tokens == 0:
            output = model(**inputs, use_cache=False).logits
            answer: list[int] = []
        else:
            kwargs = generate_kwargs(lab, max_new_tokens, 0.0, 1.0)
            started = time.perf_counter()
            out = model.generate(**inputs, **kwargs)
            ended = time.perf_counter()
            new_ids = [int(i) for i in out[0, inputs.num_tokens :]]
            output = chat_result(lab, new_ids, inputs.messages, inputs.num_tokens, started, None, ended)
            answer = list(output.token_ids)
    return output, Cache(lab, inputs, cap, keeper, answer, rollout_ready=rollout)
