"""Activation patching: which site, layer, position (and head) carries what makes the clean answer.

Run a *clean* prompt and a *corrupted* one of the same length (e.g. "My name is Ada…" and "My name is
Eve…"); then, one cell at a time, run the corrupted prompt with a single activation replaced by the
clean run's, and measure how far the answer moves back towards the clean one (Meng et al. 2022;
TransformerLens' ``patching.get_act_patch_resid_pre`` gives the same ``[layer, position]`` grid).

    >>> import phi3lab
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> start = lab.tokenizer.convert_tokens_to_ids(["▁Your", "▁name", "▁is"])  # the answer so far
    >>> clean = lab.encode("My name is Ada. What is my name?").input_ids[0].tolist() + start
    >>> corrupted = lab.encode("My name is Ben. What is my name?").input_ids[0].tolist() + start
    >>> result = patch(lab, clean, corrupted, site="resid_pre", layers=[0, 3])
    >>> result.grid.shape == (2, len(clean)), result.dims, result.metric
    (True, ('layer', 'position'), "logit difference '▁Ada.' − '▁Ben.' at the last position")

The metric is, by default, the logit difference at the last position between the clean run's answer
token and the corrupted run's (``answer=`` and ``wrong=`` choose them); ``result.normalized`` is
``(patched − corrupted) / (clean − corrupted)``: 1 where one patch restores the clean answer fully, 0
where it does nothing.  Cells are batched (``batch_size`` patched runs per forward) and each batch
reuses the corrupted run's keys and values before its first patched position (a patch cannot change
earlier positions; :mod:`phi3lab.inspect.reuse`), so the grid costs a fraction of one forward per cell (``benchmarks/patching.py``)
with the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from phi3lab.inspect.hooks import Hooks
from phi3lab.inspect.kernel import embed_inputs
from phi3lab.inspect.reuse import forward_from, unedited_run
from phi3lab.inspect.sites import STREAM, check_site, choose_heads, choose_layers
from phi3lab.validation import check_int

__all__ = ["patch", "PatchingResult", "PATCHABLE"]

PATCHABLE = tuple(s for s in STREAM if s != "embed") + ("q", "k", "v", "z")
"""Sites activation patching replaces (the residual stream per layer, and per head)."""


@dataclasses.dataclass
class PatchingResult:
    """An activation-patching grid.

    Attributes:
        site: the site patched.
        grid: the metric of every patched run; its axes are named by ``dims`` (``"layer"``, then
            ``"position"`` unless every position was patched at once, then ``"head"`` for head sites).
        dims: the axes' names.
        layers, positions, heads: what each axis holds (``positions``/``heads`` ``None`` when absent).
        clean, corrupted: the metric of the unpatched clean and corrupted runs.
        metric: what the metric measures.
        inputs: the clean prompt's :class:`~phi3lab.prompts.inputs.Inputs`.
        tokens: a label per position of the clean prompt.
    """

    site: str
    grid: torch.Tensor
    dims: tuple[str, ...]
    layers: list[int]
    positions: list[int] | None
    heads: list[int] | None
    clean: float
    corrupted: float
    metric: str
    inputs: object
    tokens: list[str]

    @property
    def normalized(self) -> torch.Tensor:
        """``(grid − corrupted) / (clean − corrupted)``: 1 restores the clean answer, 0 changes nothing."""
        gap = self.clean - self.corrupted
        if abs(gap) < 1e-6:
            raise ValueError("the clean and corrupted runs score the same; there is nothing to restore")
        return (self.grid - self.corrupted) / gap

    def top(self, n: int = 5) -> list[tuple[float, dict]]:
        """The ``n`` cells that restore the most, as ``(normalized value, {"layer": …, "position": …, …})``."""
        n = check_int("n", n, minimum=1)
        flat = self.normalized.reshape(-1)
        order = flat.argsort(descending=True)[:n]
        shape = self.grid.shape
        out = []
        for index in order.tolist():
            coords, rest = {}, index
            for dim, size in zip(reversed(self.dims), reversed(shape)):
                coords[dim], rest = rest % size, rest // size
            named = {"layer": self.layers[coords["layer"]]}
            if "position" in coords:
                named["position"] = self.positions[coords["position"]]
            if "head" in coords:
                named["head"] = self.heads[coords["head"]]
            out.append((float(flat[index]), named))
        return out

    def to_text(self, top: int = 5) -> str:
        """What was patched, the two unpatched scores, and the cells that restore the most."""
        lines = [
            f"activation patching of {self.site!r}: {' × '.join(f'{d} {s}' for d, s in zip(self.dims, self.grid.shape))}",
            f"metric: {self.metric}; clean {self.clean:+.3f}, corrupted {self.corrupted:+.3f}",
        ]
        for value, cell in self.top(top):
            where = ", ".join(f"{k} {v}" + (f" {self.tokens[v]!r}" if k == "position" else "") for k, v in cell.items())
            lines.append(f"  {value:+.3f} restored by {where}")
        return "\n".join(lines)

    __str__ = to_text

    def plot(self, ax=None, normalized: bool = True):
        """Draw the grid (diverging colours centred at 0, with a scale): ``(fig, ax)``."""
        from phi3lab.views.patching import patching_grid

        return patching_grid(self, ax=ax, normalized=normalized)


def _token_id(lab, token) -> int:
    if isinstance(token, int) and not isinstance(token, bool):
        return token
    if isinstance(token, str):
        piece = lab.tokenizer.convert_tokens_to_ids(token)  # a vocabulary piece as written ("▁Ada.")
        if isinstance(piece, int) and piece != lab.tokenizer.unk_token_id:
            return piece
        ids = lab.tokenizer.encode(token, add_special_tokens=False)
        pieces = [i for i in ids if lab.tokenizer.convert_ids_to_tokens(i) != "▁"]
        if len(pieces) != 1:
            raise ValueError(
                f"{token!r} is {len(pieces)} tokens ({lab.tokenizer.convert_ids_to_tokens(pieces)}); the metric "
                "compares single tokens: pass one token (e.g. ' Ada') or its id"
            )
        return pieces[0]
    raise TypeError(f"answer/wrong must be a token string or id, got {type(token).__name__}")


def patch(
    lab,
    clean,
    corrupted,
    *,
    site: str = "resid_pre",
    layers="all",
    positions: str | Sequence[int] | None = "all",
    heads=None,
    answer=None,
    wrong=None,
    metric: Callable[[torch.Tensor], torch.Tensor] | None = None,
    images: Sequence | None = None,
    corrupted_images: Sequence | None = None,
    batch_size: int = 16,
) -> PatchingResult:
    """Patch ``site`` from the clean run into the corrupted one, cell by cell, and score each run.

    Args:
        lab: a :class:`~phi3lab.Lab`.
        clean, corrupted: two prompts of the same length (conversations, token ids or ``Inputs``).
        site: ``"resid_pre"`` (default), ``"attn_out"``, ``"resid_mid"``, ``"mlp_out"``, ``"resid_post"``,
            or per head ``"z"``, ``"q"``, ``"k"``, ``"v"``.
        layers: ``"all"``, an int or a list.
        positions: ``"all"`` (each position on its own), a list of positions, or ``None`` (all positions at
            once: one cell per layer, or per layer and head).
        heads: for head sites, the heads (default all; each head on its own).
        answer, wrong: the tokens of the default metric, ``logit[answer] − logit[wrong]`` at the last
            position (default: the clean and the corrupted run's own top tokens).
        metric: instead, a function of the last position's logits ``[batch, vocab]`` → ``[batch]``.
        images, corrupted_images: pictures for both prompts (``corrupted_images`` for the corrupted one,
            if different).
        batch_size: patched runs per forward.
    """
    info = check_site(site)
    if site not in PATCHABLE:
        raise ValueError(f"site={site!r} cannot be patched; choose one of {', '.join(PATCHABLE)}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if metric is not None and not callable(metric):
        raise TypeError(f"metric must be a function of logits [batch, vocab] → [batch], got {type(metric).__name__}")
    model = lab.model
    clean_in = lab.encode(clean, images)
    bad_in = lab.encode(corrupted, corrupted_images if corrupted_images is not None else images)
    if clean_in.batch_size != 1 or bad_in.batch_size != 1:
        raise ValueError("patch takes one clean and one corrupted prompt, not batches")
    if clean_in.num_tokens != bad_in.num_tokens:
        raise ValueError(
            f"the clean prompt has {clean_in.num_tokens} tokens and the corrupted one {bad_in.num_tokens}; patching "
            "replaces position by position, so make them the same length (e.g. swap a name for another of as "
            "many tokens: compare lab.tokens(clean) and lab.tokens(corrupted))"
        )
    n = clean_in.num_tokens
    chosen_layers = choose_layers(layers, model.config.num_hidden_layers)
    head_axis = info.heads is not None
    count = getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads
    count = count if info.heads == "kv" else model.config.num_attention_heads
    chosen_heads = (choose_heads(heads, count) or list(range(count))) if head_axis else None
    if heads is not None and not head_axis:
        raise ValueError(f"heads= applies to the head sites (z, q, k, v), not {site!r}")
    if positions is None:
        chosen_positions = None
    elif isinstance(positions, str):
        if positions != "all":
            raise ValueError(f"positions={positions!r}: use 'all', a list of positions, or None (all at once)")
        chosen_positions = list(range(n))
    else:
        items = [positions] if isinstance(positions, int) else list(positions)
        if not items or any(isinstance(p, bool) or not isinstance(p, int) for p in items):
            raise TypeError(f"positions must be 'all', None or a non-empty list of ints, got {positions!r}")
        bad = [p for p in items if not -n <= p < n]
        if bad:
            raise IndexError(f"positions {bad} do not exist; the prompts have positions 0..{n - 1}")
        chosen_positions = sorted({p % n for p in items})

    with torch.inference_mode():
        # the clean run: the site at every chosen layer, every position
        reads = Hooks(model).read(site, chosen_layers)
        with reads:
            clean_logits = model(**clean_in, use_cache=False).logits[:, -1].float()
        clean_values = {layer: reads[site, layer][0].to(model.device) for layer in chosen_layers}
        # the corrupted run, keeping its keys and values for the prefixes
        embeds = embed_inputs(model, bad_in.input_ids, bad_in.get("pixel_values"), bad_in.get("image_sizes"))
        run = unedited_run(model, embeds, 1)
        bad_logits = run.logits[:, -1].float()

    if metric is None:
        answer_id = _token_id(lab, answer) if answer is not None else int(clean_logits[0].argmax())
        wrong_id = _token_id(lab, wrong) if wrong is not None else int(bad_logits[0].argmax())
        if answer_id == wrong_id:
            raise ValueError(
                f"the clean and corrupted runs both predict {lab.tokenizer.convert_ids_to_tokens(answer_id)!r}; "
                "pass answer= and wrong= (the two tokens to tell apart) or a metric="
            )
        name = (
            f"logit difference {lab.tokenizer.convert_ids_to_tokens(answer_id)!r} − "
            f"{lab.tokenizer.convert_ids_to_tokens(wrong_id)!r} at the last position"
        )

        def metric(logits):  # noqa: F811 - the default metric
            return logits[:, answer_id] - logits[:, wrong_id]
    else:
        name = getattr(metric, "__name__", "metric")

    clean_score = float(metric(clean_logits)[0])
    bad_score = float(metric(bad_logits)[0])

    # every cell: (layer, position or None for all at once, head or None)
    position_axis = chosen_positions if chosen_positions is not None else [None]
    head_list = chosen_heads if head_axis else [None]
    cells = [(layer, p, h) for layer in chosen_layers for p in position_axis for h in head_list]
    order = sorted(range(len(cells)), key=lambda i: (0 if cells[i][1] is None else cells[i][1], i))
    scores = torch.empty(len(cells))
    for start in range(0, len(order), batch_size):
        chunk = [cells[i] for i in order[start : start + batch_size]]
        first = min(0 if p is None else p for _, p, _ in chunk)
        values = _patched_runs(model, site, chunk, first, embeds, run, clean_values, n)
        scores[torch.tensor(order[start : start + batch_size])] = metric(values).float().cpu()

    shape = [len(chosen_layers)]
    dims = ["layer"]
    if chosen_positions is not None:
        shape.append(len(chosen_positions))
        dims.append("position")
    if head_axis:
        shape.append(len(chosen_heads))
        dims.append("head")
    labels = [f"<img{-r.id}>" if r.segment == "image" else r.token for r in clean_in.table.rows]
    return PatchingResult(
        site=site,
        grid=scores.reshape(shape),
        dims=tuple(dims),
        layers=chosen_layers,
        positions=chosen_positions,
        heads=chosen_heads,
        clean=clean_score,
        corrupted=bad_score,
        metric=name,
        inputs=clean_in,
        tokens=labels,
    )


@torch.inference_mode()
def _patched_runs(model, site, chunk, first, embeds, run, clean_values, n) -> torch.Tensor:
    """Last-position logits of ``len(chunk)`` corrupted runs, each with its own cell patched, from ``first`` on."""
    batch = len(chunk)
    rows_of: dict[int, list[int]] = {}
    for row, (layer, _, _) in enumerate(chunk):
        rows_of.setdefault(layer, []).append(row)

    def put(value, at):
        rows = rows_of.get(at.layer)
        if not rows:
            return None
        offset = int(at.positions[0])
        clean = clean_values[at.layer]  # [n, ...] (positions first)
        value = value.clone()  # never write into the model's own tensor (layer 0 reads a shared, expanded input)
        for row in rows:
            _, position, head = chunk[row]
            where = slice(None) if position is None else position - offset
            source = clean[offset:] if position is None else clean[position]
            if head is None:
                value[row, where] = source
            else:
                value[row, where, ..., head, :] = source[..., head, :]
        return value

    with Hooks(model).edit(site, put, sorted(rows_of)):
        logits = forward_from(model, embeds[:, first:].expand(batch, -1, -1), run, first, 1)
    return logits[:, -1].float()
