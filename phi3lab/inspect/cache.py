"""Run a model once and keep what happened inside, by site: the attention rows, the residual stream, heads.

    >>> import phi3lab
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> logits, cache = lab.run_with_cache("What is 2 plus 3?")
    >>> cache["pattern", 0].shape[:2], cache["resid_post", 3].shape[1] == logits.shape[1]
    (torch.Size([1, 4]), True)

:meth:`phi3lab.Lab.run_with_cache` (TransformerLens' ``logits, cache = model.run_with_cache(tokens)``
for Phi-3) encodes the conversation once (:class:`~phi3lab.prompts.inputs.Inputs`; token ids and an
``Inputs`` are taken as they are), reads the asked sites (:mod:`phi3lab.inspect.sites`) through the
hook core for the duration of one forward, and returns a :class:`Cache`:

* ``cache["resid_post", 3]``, ``cache["pattern", 2]``, ``cache["z", 1]``, ``cache["embed"]`` — what each
  site held at the kept positions (``sites=`` says which; by default the attention rows and the
  residual stream);
* views on them that answer the usual questions without re-running anything or typing a size again:
  ``cache.attention(layer)`` (equal to eager ``output_attentions``), ``cache.residual(layer)``,
  ``cache.logit_lens(row)``, ``cache.rollout(rows)``, ``cache.image_heat(image)``, ``cache.to_text()``.

:meth:`phi3lab.Lab.generate_with_cache` generates greedily instead and returns ``(ChatResult, Cache)``;
the cache then also holds one row per answer token (the rows that predicted it).  Everything is
estimated before the run, counting every site asked, and refused above the memory limit, with advice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from phi3lab.inspect.hooks import Hooks, NothingRecordedError
from phi3lab.inspect.kernel import attention_modules
from phi3lab.inspect.lens import read_lens
from phi3lab.inspect.maps import head_summary, image_heat, map_rows, qk_rows, rollout_rows, top_keys
from phi3lab.inspect.memory import check_max_bytes, check_memory, memory_limit, size_text
from phi3lab.inspect.sites import SITES, Positions, check_site, choose_heads, choose_layers
from phi3lab.runtime.generation import chat_result, generate_kwargs
from phi3lab.validation import check_context, check_int

__all__ = ["Cache", "run_with_cache", "generate_with_cache", "DEFAULT_SITES", "estimate_bytes"]

DEFAULT_SITES = ("pattern", "embed", "resid_post")
"""What a cache keeps unless told: attention rows and the residual stream (what the views read)."""


class Cache:
    """What one :meth:`~phi3lab.Lab.run_with_cache` (or ``generate_with_cache``) saw.

    Attributes:
        lab: the :class:`~phi3lab.Lab` that ran.
        inputs: the :class:`~phi3lab.prompts.inputs.Inputs` that were run (token table, image layouts).
        sites: the sites kept.
        layers, heads: the layers and heads kept (``heads`` is ``None`` for all).
        answer_ids: the generated ids (empty for a single forward).
        hooks: the :class:`~phi3lab.inspect.hooks.Hooks` block that recorded it.
    """

    def __init__(self, lab, inputs, hooks: Hooks, sites, layers, heads, answer_ids: Sequence[int]):
        self.lab = lab
        self.inputs = inputs
        self.hooks = hooks
        self.sites = tuple(sites)
        self.layers, self.heads = list(layers), heads
        self.answer_ids = tuple(int(i) for i in answer_ids)
        self._maps: dict[int, torch.Tensor] = {}

    # --- sites -----------------------------------------------------------------------------------------

    def __getitem__(self, key) -> torch.Tensor:
        """``cache[site]`` or ``cache[site, layer]``: the kept values (see :mod:`phi3lab.inspect.sites`)."""
        site = key if isinstance(key, str) else key[0]
        check_site(site)
        if site not in self.sites:
            raise NothingRecordedError(
                f"this cache did not keep {site!r}; it holds {', '.join(self.sites)}. Run with sites=[..., {site!r}]"
            )
        if not isinstance(key, str) and SITES[site].per_layer and site not in ("image_embeds", "clip"):
            self._layer(key[1])
        try:
            return self.hooks[key]
        except NothingRecordedError:
            layer = key[1] if not isinstance(key, str) else None
            raise NothingRecordedError(
                f"layer {layer} of {site!r} was not kept; kept layers: {self.layers} (run with layers=[...] or 'all')"
            ) from None

    def __contains__(self, key) -> bool:
        site = key if isinstance(key, str) else key[0]
        if site not in self.sites:
            return False
        if isinstance(key, str):
            return True
        return (site, key[1]) in self.hooks.recorded()

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds."""
        return self.hooks.nbytes

    # --- what was run ----------------------------------------------------------------------------------

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
        tok = self.lab.tokenizer
        labels = [f"<img{-r.id}>" if r.segment == "image" else r.token for r in self.inputs.table.rows]
        labels = ["<pad>"] * self.inputs.padding[0] + labels
        return labels + tok.convert_ids_to_tokens(list(self.answer_ids[:-1]))

    def _row_site(self) -> str:
        for site in ("pattern", "resid_post", "embed", "resid_pre", "attn_out", "mlp_out", "resid_mid", "z", "q"):
            if site in self.sites:
                return site
        raise ValueError(f"this cache keeps no per-position site ({', '.join(self.sites)})")

    @property
    def positions(self) -> list[int]:
        """Absolute position of every kept row."""
        site = self._row_site()
        layer = None if not SITES[site].per_layer else self.layers[0]
        return [int(p) for p in self.hooks.positions(site, layer)]

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
        items = [rows] if isinstance(rows, int) else list(rows) if isinstance(rows, (list, tuple, range)) else None
        if not items or any(isinstance(r, bool) or not isinstance(r, int) for r in items):
            raise TypeError(f"rows must be 'answer', 'all', an int or a list of ints, got {rows!r}")
        bad = [r for r in items if not -n <= r < n]
        if bad:
            raise IndexError(f"rows {bad} do not exist; the cache holds {n} rows (0..{n - 1}, negative from the end)")
        return [r % n for r in items]

    def _layer(self, layer) -> int:
        n = self.lab.model.config.num_hidden_layers
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}")
        if not -n <= layer < n:
            raise IndexError(f"layer {layer} does not exist; the model has layers 0..{n - 1}")
        return layer % n

    # --- attention -------------------------------------------------------------------------------------

    def attention(self, layer: int) -> torch.Tensor:
        """``[batch, heads, rows, keys]`` attention probabilities of a kept layer (``cache["pattern", layer]``)."""
        layer = self._layer(layer)
        if layer not in self._maps:
            self._maps[layer] = self["pattern", layer]
        return self._maps[layer]

    def attention_rows(self, layer: int, rows="answer") -> torch.Tensor:
        """``[batch, heads, len(rows), keys]``: only the chosen rows of a kept layer's attention, read from
        the forwards that recorded them (a layer's whole map is never assembled for a few rows)."""
        layer, rows = self._layer(layer), self._rows(rows)
        if layer in self._maps:
            return self._maps[layer][:, :, rows]
        if "pattern" not in self.sites:
            raise NothingRecordedError(
                f"this cache did not keep 'pattern'; it holds {', '.join(self.sites)}. Run with sites=[..., 'pattern']"
            )
        records = self.hooks.calls("pattern", layer)
        first = records[0].value
        keys = max(r.value.shape[-1] for r in records)
        out = first.new_zeros(first.shape[0], first.shape[1], len(rows), keys)
        start = 0
        for record in records:
            count = record.value.shape[2]
            picked = [(i, r - start) for i, r in enumerate(rows) if start <= r < start + count]
            if picked:
                into, local = zip(*picked)
                out[:, :, list(into), : record.value.shape[-1]] = record.value[:, :, list(local)]
            start += count
        return out

    def mean_attention(self, layers=None, heads=None, rows="answer") -> torch.Tensor:
        """Attention averaged over layers, heads and rows: one ``[keys]`` row (batch row 0)."""
        chosen = (
            self.layers
            if layers is None
            else [self._layer(i) for i in ([layers] if isinstance(layers, int) else layers)]
        )
        rows = self._rows(rows)
        stacked = torch.stack([self.attention_rows(i, rows)[0] for i in chosen])  # [layers, heads, rows, keys]
        if heads is not None:
            head_list = [heads] if isinstance(heads, int) else list(heads)
            if self.heads is not None:
                missing = [h for h in head_list if h not in self.heads]
                if missing:
                    raise KeyError(f"heads {missing} were not kept; kept heads: {self.heads}")
                head_list = [self.heads.index(h) for h in head_list]
            stacked = stacked[:, head_list]
        return stacked.mean(dim=(0, 1, 2))

    def head_shares(self, keys, rows="answer") -> torch.Tensor:
        """``[layers, heads]``: share of each kept head's attention on ``keys`` (positions, a slice, or
        ``"image"`` for every image position), averaged over ``rows``."""
        if isinstance(keys, str):
            if keys != "image" or not self.inputs.images:
                raise ValueError(f"keys={keys!r}: give positions, a slice, or 'image' (for a prompt with images)")
            keys = [p for im in self.inputs.images for p in range(im.start, im.end)]
        weights = torch.stack([self.attention_rows(i, rows)[0] for i in self.layers])
        return head_summary(weights, keys)

    def image_to_image(self, source: int, target: int | None = None) -> torch.Tensor:
        """``[layers, heads]``: the share of attention the rows of picture ``target`` (``None``: the answer's
        rows) put on picture ``source`` — how much one picture reads another in a prompt with several.

        Needs the target picture's rows kept (``positions="all"``, the default).
        """
        src = self.inputs.image(source)
        keys = list(range(src.start, src.end))
        if target is None:
            rows = self.answer_rows
        else:
            tgt = self.inputs.image(target)
            if tgt.start < src.end:
                raise ValueError(
                    f"picture {target + 1} comes before picture {source + 1} ends: attention is causal, so its rows "
                    "cannot look at it; ask for a later picture's rows (or target=None for the answer's)"
                )
            kept = self.positions
            rows = [i for i, p in enumerate(kept) if tgt.start <= p < tgt.end]
            if len(rows) != tgt.num_tokens:
                raise ValueError(
                    f"the cache kept {len(rows)} of picture {target + 1}'s {tgt.num_tokens} rows; run with positions='all'"
                )
        return self.head_shares(keys, rows=rows)

    def rollout(self, rows="answer", residual: float = 0.5, chunk: int = 256) -> torch.Tensor:
        """Attention rollout of the chosen rows through every layer: ``[len(rows), keys]``.

        Computed as vector–matrix products from the top layer down, ``chunk`` query rows at a time,
        from the kept ``q`` and ``k`` sites (``run_with_cache(..., rollout=True)`` keeps them) or from
        the kept attention rows when every row of every head was kept — never an ``N × N`` matrix per layer.
        """
        if isinstance(residual, bool) or not isinstance(residual, (int, float)) or not 0 <= residual <= 1:
            raise ValueError(
                f"residual={residual!r} must be a number in [0, 1]: the weight of the skip connection mixed into "
                "every layer (0.5 in Abnar & Zuidema)"
            )
        chunk = check_int("chunk", chunk, minimum=1)
        n_layers = self.lab.model.config.num_hidden_layers
        if len(self.layers) != n_layers:
            raise ValueError(f"rollout needs every layer; this cache holds layers {self.layers}. Run with layers='all'")
        n = self.num_tokens
        wanted = [self.positions[r] for r in self._rows(rows)]
        if "q" in self.sites and "k" in self.sites:
            modules = attention_modules(self.lab.model)
            getters = []
            for layer in range(n_layers):
                q = self["q", layer][0].transpose(0, 1)  # [H, T, d]
                k = self["k", layer][0].transpose(0, 1)
                getters.append(
                    qk_rows(
                        q,
                        k,
                        modules[layer].scaling,
                        modules[layer].num_key_value_groups,
                        self._key_mask(n),
                        getattr(self.lab.model.config, "sliding_window", None),
                    )
                )
        elif "pattern" in self.sites and self.heads is None and self.positions == list(range(n)):
            getters = [map_rows(self.attention(layer)[0]) for layer in range(n_layers)]
        else:
            raise ValueError(
                "rollout needs every query row of every head: run with rollout=True (scales to long prompts) "
                "or with positions='all' and heads=None"
            )
        return rollout_rows(getters, wanted, n, residual=residual, chunk=chunk)

    def _key_mask(self, n: int) -> torch.Tensor:
        mask = self.inputs["attention_mask"][0].cpu()
        return torch.cat([mask, torch.ones(n - mask.numel(), dtype=mask.dtype)]) if n > mask.numel() else mask[:n]

    def image_heat(
        self,
        image: int = 0,
        *,
        layers=None,
        heads=None,
        rows="answer",
        source: str = "attention",
        sinks="mask",
        found=None,
    ):
        """Where the chosen rows look on image ``image``: an :class:`~phi3lab.inspect.maps.ImageHeat`
        on the crop and global-view grids, with the size and crop budget the image was processed with.

        Args:
            image: 0-based image index.
            layers, heads: what to average (default: everything kept).
            rows: ``"answer"`` (default), ``"all"``, or row indices.
            source: ``"attention"`` (raw attention, averaged) or ``"rollout"``.
            sinks: ``"mask"`` (default: the picture's attention sinks are masked out and their mass reported),
                ``"show"`` (kept, still listed) or a :class:`~phi3lab.inspect.sinks.Sinks` (masked).
            found: which sinks ``"mask"`` or ``"show"`` means: a :class:`~phi3lab.inspect.sinks.Sinks` from
                :func:`~phi3lab.inspect.sinks.find_sinks` over several questions (``find_sinks(lab,
                picture=picture)``).  Default: this cache's own (:meth:`sinks`), whose evidence is one question,
                which confirms only tokens with massive activations; the tokens this question's answer merely
                looks at hard (perhaps the asked-about object) are *candidates*, listed in the heat's text and
                never masked.
        """
        from phi3lab.inspect.sinks import Sinks

        if found is not None and not isinstance(found, Sinks):
            raise ValueError(f"found must be a Sinks from find_sinks(...), got {type(found).__name__}")
        if isinstance(sinks, Sinks):
            if found is not None:
                raise ValueError(
                    "pass the Sinks once: sinks=<Sinks> masks them; sinks='show', found=<Sinks> shows them"
                )
            found, sinks = sinks, "mask"
        elif sinks in ("mask", "show"):
            if found is None:
                found = self.sinks(image) if "pattern" in self.sites else None
        else:
            raise ValueError(f"sinks must be 'mask', 'show' or a Sinks from find_sinks, got {sinks!r}")
        span = self.inputs.image(image)
        if found is not None:
            found.check(span)
        if source == "attention":
            row = self.mean_attention(layers, heads, rows)
        elif source == "rollout":
            row = self.rollout(rows).mean(0)
        else:
            raise ValueError(f"source must be 'attention' or 'rollout', got {source!r}")
        return image_heat(
            row,
            span.start,
            span.width,
            span.height,
            span.num_crops,
            found.indices if found is not None else (),
            mask=sinks == "mask",
            candidates=found.candidates if found is not None else (),
            evidence=found.evidence if found is not None else "",
        )

    def sinks(self, image: int = 0, **kwargs):
        """The attention sinks of picture ``image`` read from this cache alone: its layers are the evidence,
        and they cover one question.  A sink draws attention whatever is asked, so from one question only
        tokens whose activations are massive are sinks; the others the answer looks at hard are
        :attr:`~phi3lab.inspect.sinks.Sinks.candidates` (never masked).  Ask several questions for sinks:
        :func:`phi3lab.inspect.sinks.find_sinks` ``(lab, picture=picture)`` or ``(caches)``.  Keywords as
        :func:`~phi3lab.inspect.sinks.find_sinks` (``min_ratio``, ``min_consistency``, ``min_activation``)."""
        from phi3lab.inspect.sinks import find_sinks

        return find_sinks([self], image, **kwargs)

    # --- residual stream -------------------------------------------------------------------------------

    def residual(self, layer: int) -> torch.Tensor:
        """``[batch, rows, hidden]``: the residual stream after decoder layer ``layer`` (``cache["resid_post", layer]``)."""
        return self["resid_post", self._layer(layer)]

    def embeddings(self) -> torch.Tensor:
        """``[batch, rows, hidden]``: the input to layer 0 (``cache["embed"]``)."""
        return self["embed"]

    def logit_lens(self, row: int = -1, top: int = 5):
        """What each layer would predict at one kept row (a :class:`~phi3lab.inspect.lens.LogitLens`)."""
        top = check_int("top", top, minimum=1, maximum=self.lab.model.config.vocab_size)
        index = self._rows(row)[0]
        n = self.lab.model.config.num_hidden_layers
        hidden = torch.stack([self.embeddings()[0, index]] + [self.residual(i)[0, index] for i in range(n)])
        model = self.lab.model
        base = getattr(model, "model", model)
        with torch.inference_mode():
            device = next(model.parameters()).device
            normed = base.norm(hidden.to(device, next(model.parameters()).dtype))
            return read_lens(model, self.lab.tokenizer, normed, self.positions[index], top)

    # --- text -----------------------------------------------------------------------------------------

    def summary(self) -> str:
        """What the cache holds: prompt and answer, sites, layers, heads, rows, memory."""
        heads = "all heads" if self.heads is None else f"heads {self.heads}"
        rows = len(self.positions) if any(SITES[s].per_layer or s in ("embed",) for s in self.sites) else 0
        return (
            f"{self.prompt_tokens} prompt tokens + {len(self.answer_ids)} answer tokens; sites "
            f"{', '.join(self.sites)}; layers {_ranges(self.layers)}, {heads}, {rows} rows, {size_text(self.nbytes)}"
        )

    def to_text(self, top: int = 3) -> str:
        """A summary: what ran, what was kept, and where the answer's rows look (last kept layer)."""
        top = check_int("top", top, minimum=1)
        tok = self.lab.tokenizer
        lines = [self.summary()]
        if self.answer_ids:
            lines.append(f"answer: {tok.decode(list(self.answer_ids), skip_special_tokens=True)!r}")
        for im in self.inputs.images:
            lines.append(
                f"image {im.index + 1}: {im.width}×{im.height}, {im.layout.grid[0]}×{im.layout.grid[1]} "
                f"crops, tokens {im.start}..{im.end - 1}"
            )
        if "pattern" not in self.sites:
            return "\n".join(lines)
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
            f"Cache({self.prompt_tokens} prompt + {len(self.answer_ids)} answer tokens, sites {list(self.sites)}, "
            f"layers {_ranges(self.layers)}, {size_text(self.nbytes)})"
        )


def _ranges(values: Sequence[int]) -> str:
    values = list(values)
    if values and values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}..{values[-1]}"
    return ", ".join(map(str, values))


def estimate_bytes(
    model, sites, layers: list[int], heads, positions: Positions, prompt: int, steps: int, images: Sequence = ()
) -> int:
    """Bytes a run will keep for ``sites`` at ``layers`` over a prompt of ``prompt`` positions and ``steps``
    generated tokens (float32 on the CPU)."""
    config = model.config
    n_heads = len(heads) if heads is not None else config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    prefill = len(positions.rows(seen=0, length=prompt, prompt=prompt))
    rows = prefill + max(steps - 1, 0)
    total = 0
    for site in sites:
        per_row = {
            "embed": config.hidden_size,
            "logits": config.vocab_size,
        }.get(site)
        if site in ("embed", "logits"):
            total += 4 * per_row * rows
        elif site in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"):
            total += 4 * len(layers) * config.hidden_size * rows
        elif site in ("q", "z"):
            total += 4 * len(layers) * n_heads * head_dim * rows
        elif site in ("k", "v"):
            total += 4 * len(layers) * (kv_heads if heads is None else n_heads) * head_dim * rows
        elif site == "pattern":
            decode_keys = sum(prompt + s for s in range(1, steps))  # each decode step: one row over all keys so far
            total += 4 * len(layers) * n_heads * (prefill * prompt + decode_keys)
        elif site == "image_embeds":
            total += 4 * config.hidden_size * sum(im.num_tokens for im in images)
        elif site == "clip":
            vision = config.vision_config if hasattr(config, "vision_config") else None
            if vision is not None:
                patches = (vision.image_size // vision.patch_size) ** 2 + 1
                views = sum(im.layout.grid[0] * im.layout.grid[1] + 1 for im in images)
                total += 4 * vision.num_hidden_layers * views * patches * vision.hidden_size
    return total


def _prepare(
    lab, conversation, images, sites, layers, heads, positions, max_bytes, steps, num_crops, render_kwargs, whole=()
):
    """Encode, check the context and the memory for every site asked, and ready the hooks (``whole``: sites
    kept at every position whatever ``positions`` says)."""
    if isinstance(sites, str):
        sites = [sites]
    sites = list(dict.fromkeys(check_site(s).name for s in sites))
    if not sites:
        raise ValueError(f"sites is empty; ask for at least one (e.g. sites={list(DEFAULT_SITES)})")
    inputs = lab.encode(conversation, images, num_crops=num_crops, **render_kwargs)
    check_context(
        inputs.num_tokens,
        steps,
        lab.spec.context_length,
        image_tokens=sum(im.num_tokens for im in inputs.images),
    )
    model = lab.model
    n_layers = model.config.num_hidden_layers
    chosen_layers = choose_layers(layers, n_layers)
    chosen_heads = choose_heads(heads, model.config.num_attention_heads)
    where = Positions(positions, new=True)
    _check_reach(where, inputs.num_tokens, steps)
    everywhere = Positions("all")
    limit = check_max_bytes(max_bytes)
    limit = limit if limit is not None else memory_limit(next(model.parameters()).device)
    parts = [[s for s in sites if s not in whole], [s for s in sites if s in whole]]
    need = sum(
        estimate_bytes(model, group, chosen_layers, chosen_heads, at, inputs.num_tokens, steps, inputs.images)
        for group, at in zip(parts, (where, everywhere))
    )
    check_memory(
        need,
        limit,
        f"keeping {', '.join(sites)} over {inputs.num_tokens} prompt tokens" + (f" + {steps} new" if steps else ""),
        "keep fewer sites, layers or heads, positions='last', a shorter prompt, or pass max_bytes= if you know "
        "the memory is there",
    )
    hooks = Hooks(model, max_bytes=limit)
    for site in sites:
        info = SITES[site]
        at = everywhere if site in whole else where
        kwargs = {"heads": chosen_heads} if info.heads == "query" and site not in whole else {}
        if info.vision:
            hooks.read(site)
        elif not info.per_layer:
            hooks.read(site, positions=at, **kwargs)
        else:
            hooks.read(site, chosen_layers, positions=at, **kwargs)
    return inputs, hooks, sites, chosen_layers, chosen_heads


def run_with_cache(
    lab,
    conversation,
    images: Sequence | None = None,
    *,
    sites: Sequence[str] = DEFAULT_SITES,
    layers="all",
    heads=None,
    positions="all",
    rollout: bool = False,
    max_bytes: int | None = None,
    num_crops: int | None = None,
    fold_system_prompt: bool | None = None,
    special_tokens: str | None = None,
    **unknown,
):
    """Encode (if needed), run one forward with the asked sites read, and return ``(logits, Cache)``.

    Args:
        lab: a :class:`~phi3lab.Lab`.
        conversation: a string (one user turn), HF messages, token ids or an :class:`~phi3lab.prompts.inputs.Inputs`.
        images: pictures for the ``<|image_N|>`` tags (vision models).
        sites: what to keep (:mod:`phi3lab.inspect.sites`; default ``("pattern", "embed", "resid_post")``).
        layers, heads, positions: where to keep it (``positions``: ``"all"`` (default), ``"last"``, positions,
            a slice or a function; :class:`~phi3lab.inspect.sites.Positions`).
        rollout: also keep ``q`` and ``k`` at every position, so :meth:`Cache.rollout` scales to long prompts.
        max_bytes: bytes the cache may keep (default a quarter of free memory); checked before running.
        num_crops: crop budget for the images (default the processor's).
        fold_system_prompt, special_tokens: as for :func:`phi3lab.prompts.chat.render`.

    Returns:
        ``(logits [batch, tokens, vocab], cache)``.
    """
    _refuse(unknown, "run_with_cache")
    render_kwargs = _render_kwargs(fold_system_prompt, special_tokens)
    sites = _with_rollout(sites, rollout)
    inputs, hooks, sites, chosen_layers, chosen_heads = _prepare(
        lab,
        conversation,
        images,
        sites,
        layers,
        heads,
        positions,
        max_bytes,
        0,
        num_crops,
        render_kwargs,
        whole=("q", "k") if rollout else (),
    )
    with torch.inference_mode(), hooks:
        logits = lab.model(**inputs, use_cache=False).logits
    return logits, Cache(lab, inputs, hooks, sites, chosen_layers, chosen_heads, ())


def generate_with_cache(
    lab,
    conversation,
    images: Sequence | None = None,
    *,
    max_new_tokens: int = 16,
    sites: Sequence[str] = DEFAULT_SITES,
    layers="all",
    heads=None,
    positions="all",
    rollout: bool = False,
    max_bytes: int | None = None,
    num_crops: int | None = None,
    fold_system_prompt: bool | None = None,
    special_tokens: str | None = None,
    **unknown,
):
    """Like :func:`run_with_cache`, but generating greedily: returns ``(ChatResult, Cache)``.

    The cache keeps the prompt's rows at ``positions`` and every answer token's row (the row that
    predicted the next one), over every key so far.
    """
    _refuse(unknown, "generate_with_cache")
    render_kwargs = _render_kwargs(fold_system_prompt, special_tokens)
    steps = check_int("max_new_tokens", max_new_tokens, minimum=1)
    sites = _with_rollout(sites, rollout)
    inputs, hooks, sites, chosen_layers, chosen_heads = _prepare(
        lab,
        conversation,
        images,
        sites,
        layers,
        heads,
        positions,
        max_bytes,
        steps,
        num_crops,
        render_kwargs,
        whole=("q", "k") if rollout else (),
    )
    if inputs.batch_size != 1:
        raise ValueError("generate_with_cache takes one conversation; run a batch with lab.run_with_cache(inputs)")
    kwargs = generate_kwargs(lab, steps, 0.0, 1.0)
    with torch.inference_mode(), hooks:
        started = time.perf_counter()
        out = lab.model.generate(**inputs, **kwargs)
        ended = time.perf_counter()
    new_ids = [int(i) for i in out[0, inputs.num_tokens :]]
    result = chat_result(lab, new_ids, inputs.messages or [], inputs.num_tokens, started, None, ended)
    return result, Cache(lab, inputs, hooks, sites, chosen_layers, chosen_heads, result.token_ids)


def _with_rollout(sites, rollout) -> list[str]:
    sites = [sites] if isinstance(sites, str) else list(sites)
    if rollout:
        sites += [s for s in ("q", "k") if s not in sites]
    return sites


_KEYWORDS = "sites, layers, heads, positions, rollout, max_bytes, num_crops, fold_system_prompt, special_tokens"


def _refuse(unknown: dict, name: str) -> None:
    if not unknown:
        return
    if name == "run_with_cache" and "max_new_tokens" in unknown:
        raise TypeError(
            "run_with_cache runs one forward and returns its logits; to generate and keep the answer's rows, use "
            f"lab.generate_with_cache(conversation, max_new_tokens={unknown['max_new_tokens']!r})"
        )
    renamed = {"queries": "positions", "budget": "max_bytes", "residual": "sites (e.g. sites=['pattern'])"}
    hints = [f"{k} is now {renamed[k]}" for k in unknown if k in renamed]
    raise TypeError(
        f"{name}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}"
        + (f" ({'; '.join(hints)})" if hints else "")
        + f"; it takes {_KEYWORDS}"
        + (", max_new_tokens" if name == "generate_with_cache" else "")
    )


def _render_kwargs(fold_system_prompt, special_tokens) -> dict:
    out = {}
    if fold_system_prompt is not None:
        out["fold_system_prompt"] = fold_system_prompt
    if special_tokens is not None:
        out["special_tokens"] = special_tokens
    return out


def _check_reach(where: Positions, prompt: int, steps: int) -> None:
    """Positions given as numbers must exist in this run (the prompt, then the tokens it may generate)."""
    spec = where.spec
    items = [spec] if isinstance(spec, int) else spec if isinstance(spec, list) else None
    if items is None:
        if isinstance(spec, slice) and not len(where.rows(seen=0, length=prompt, prompt=prompt)) and not steps:
            raise ValueError(f"positions={spec!r} selects none of the prompt's {prompt} positions")
        return
    reach = prompt + max(steps - 1, 0)
    bad = [i for i in items if not -prompt <= i < reach]
    if bad:
        raise IndexError(
            f"positions {bad} do not exist: this run has positions 0..{reach - 1} ({prompt} in the prompt"
            + (f", then {steps - 1} fed back while generating" if steps > 1 else "")
            + "; negative ones count from the prompt's end)"
        )
