"""The refusal direction (Arditi et al. 2024): one vector in the residual stream that mediates refusal.

1. Run harmful and harmless prompts and keep the residual stream after every decoder layer at the
   **post-instruction tokens** — what follows the user's text, ``<|end|>\\n<|assistant|>\\n`` for
   Phi-3 — and average each class in float64.  Each (layer, position) gives a candidate
   ``r = mean(harmful) − mean(harmless)``; nothing is trained.
2. Score every candidate on held-apart prompts without generating, by the refusal log-odds at the
   answer's first position (:func:`~phi3lab.safety.refusal.first_token_scores`): **ablating** it
   everywhere should stop refusal on harmful prompts, **adding** it at its layer should induce
   refusal on harmless ones, and ablating it should barely change harmless predictions (KL below
   ``kl_limit``).  Candidates in the last 20% of layers are skipped.  The one whose ablation lowers
   refusal most, among those that pass, is chosen.
3. :meth:`RefusalDirection.ablate` removes it — ``x ← x − (x·r̂) r̂`` on the input of every layer, on
   what every MLP reads and on the last layer's output, i.e. wherever the stream is read — and
   :meth:`RefusalDirection.add` adds ``r`` after its layer, both through the hook core
   (:func:`phi3lab.inspect.interventions.edit_residual`).  :func:`evaluate_direction` measures the change in
   generated refusals and the KL on harmless text; :meth:`RefusalDirection.project` places any prompt
   on the direction, to set against what the model did with it.

Two choices go beyond the paper, for models that decide at one position: ``where="last"`` edits only
the answer's first position (the prompt's last token; its keys and values carry the edit into every
generated token) instead of every position, and ``ablation="mean"`` sets the component to the
harmless prompts' mean after every layer instead of to zero — for a stream whose harmless mean is
far from zero along the direction, where zeroing moves harmless prompts as much as harmful ones.

    >>> import phi3lab
    >>> from phi3lab.safety import load_probes
    >>> from phi3lab.safety.direction import find_direction
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> train = load_probes("tiny-train")
    >>> d = find_direction(lab, train.select(kind="harmful"), train.select(kind="benign"))
    >>> d.vector.dtype, d.vector.shape == (lab.model.config.hidden_size,)
    (torch.float64, True)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import torch

from phi3lab.inspect.hooks import Hooks
from phi3lab.inspect.interventions import edit_residual, project_out
from phi3lab.safety._forward import batched_logits, encode_ids, pad_id, pad_left
from phi3lab.safety.refusal import VERDICTS, first_token_scores, refusal, refusal_token_ids
from phi3lab.validation import check_float, check_int

__all__ = [
    "Candidate",
    "RefusalDirection",
    "DirectionEffect",
    "find_direction",
    "evaluate_direction",
    "post_instruction_tokens",
    "plot_projection",
]


def _conversations(items) -> list:
    """Probes, strings or HF message lists → conversations."""
    out = []
    for item in items:
        out.append(getattr(item, "prompt", item))
    return out


def _prompts(name: str, items, minimum: int) -> list:
    """``items`` as a list of conversations, refusing what would silently go wrong (a string is not a list)."""
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__") or isinstance(items, dict):
        raise TypeError(
            f"{name} must be a list of prompts (strings, Probe objects or message lists), got "
            f"{type(items).__name__}; e.g. load_probes('tiny-train').select(kind='{'benign' if 'less' in name else 'harmful'}')"
        )
    out = _conversations(items)
    for n, c in enumerate(out):
        if not isinstance(c, (str, list, tuple)) or (isinstance(c, str) and not c.strip()):
            raise TypeError(f"{name}[{n}] must be a non-empty prompt string, a Probe or a message list, got {c!r:.60}")
    if len(out) < minimum:
        raise ValueError(f"{name} has {len(out)} prompt(s); at least {minimum} are needed (128 of each is usual)")
    return out


def _lab(lab, caller: str):
    if not (hasattr(lab, "model") and hasattr(lab, "tokenizer") and hasattr(lab, "encode")):
        raise TypeError(f"{caller} takes a loaded Lab (lab = phi3lab.load('tiny')), got {type(lab).__name__}")
    return lab


def post_instruction_tokens(lab, conversation="Hi") -> list[str]:
    """The tokens after the user's text in a prompt (``<|end|>``, ``▁``, ``\\n``, ``<|assistant|>``, …)."""
    inputs = lab.encode(conversation)
    rows = inputs.table.rows
    last_user = max(i for i, r in enumerate(rows) if r.segment == "user")
    return [r.token for r in rows[last_user + 1 :]]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One (layer, position) candidate and its scores (mean refusal log-odds; KL in nats)."""

    layer: int
    position: int
    ablated_harmful: float
    added_harmless: float
    kl: float
    eligible: bool

    def __repr__(self) -> str:
        return (
            f"Candidate(layer {self.layer}, position {self.position}: ablated harmful {self.ablated_harmful:+.2f}, "
            f"added harmless {self.added_harmless:+.2f}, KL {self.kl:.3f}{'' if self.eligible else ', not eligible'})"
        )


@dataclasses.dataclass
class RefusalDirection:
    """A chosen refusal direction.

    Attributes:
        layer: the residual stream *after* this decoder layer (the input of the next one).
        position: offset from the prompt's end of the post-instruction token it was read at (-1: last).
        vector: ``mean(harmful) − mean(harmless)`` there, float64 ``[hidden]``.
        tokens: the post-instruction tokens, so ``tokens[position]`` names the chosen one.
        baseline: mean refusal log-odds of the validation prompts without edits (``harmful``, ``harmless``).
        candidates: every candidate's scores.
        ablation: ``"zero"`` (Arditi et al.) or ``"mean"`` (the component set to the harmless mean).
        where: ``"all"`` positions or only the ``"last"`` (the answer's first position).
        harmless_means: ``[layers, hidden]`` harmless mean after each layer at :attr:`position` (for ``"mean"``).
    """

    layer: int
    position: int
    vector: torch.Tensor
    tokens: list[str]
    baseline: dict[str, float]
    candidates: list[Candidate]
    ablation: str = "zero"
    where: str = "all"
    harmless_means: torch.Tensor | None = None

    @property
    def unit(self) -> torch.Tensor:
        return self.vector / self.vector.norm()

    def ablate(self, model, *, ablation: str | None = None, where: str | None = None, index=None):
        """Context manager: the direction ablated (this direction's ``ablation`` and ``where`` unless given).

        ``index`` (a ``[batch]`` tensor) names the position to edit per row in a forward over longer text.
        """
        ablation = self.ablation if ablation is None else _check(ablation, ("zero", "mean"), "ablation")
        where = self.where if where is None else _check(where, ("all", "last"), "where")
        unit = self.unit
        if ablation == "zero":
            return _Ablation(model, lambda layer, x: project_out(x, unit.to(x.device)), where, index)
        means = (self.harmless_means @ unit).tolist()

        def to_mean(layer, x):
            u = unit.to(x.device, x.dtype)
            return x - ((x @ u) - means[layer])[..., None] * u

        return _Edit(model, to_mean, list(range(len(means))), "output", where, index)

    def add(self, model, scale: float = 1.0, *, where: str | None = None, index=None):
        """Context manager: ``scale · vector`` added to the stream after :attr:`layer`."""
        where = self.where if where is None else _check(where, ("all", "last"), "where")
        vector = self.vector
        return _Edit(
            model, lambda layer, x: x + scale * vector.to(x.device, x.dtype), [self.layer], "output", where, index
        )

    @torch.inference_mode()
    def project(
        self, lab, conversations: Sequence, *, batch_size: int = 32, special_tokens: str = "refuse"
    ) -> list[float]:
        """Each conversation's residual at (:attr:`layer`, :attr:`position`) projected on the unit direction."""
        conversations = _prompts("conversations", conversations, 1)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        reader = _Reader(lab.model, [self.layer], -self.position)
        with reader:
            for _ in batched_logits(
                lab, _conversations(conversations), batch_size=batch_size, special_tokens=special_tokens
            ):
                pass
        acts = torch.cat(reader.kept[self.layer])[:, self.position]  # [n, hidden] float64
        return (acts @ self.unit).tolist()

    def to_text(self, top: int = 5) -> str:
        lines = [
            f"refusal direction: after layer {self.layer}, at post-instruction token {self.position} "
            f"({self.tokens[self.position]!r}); |r| = {self.vector.norm():.3f}; ablation {self.ablation!r}, "
            f"where {self.where!r}",
            f"baseline refusal log-odds: harmful {self.baseline['harmful']:+.2f}, "
            f"harmless {self.baseline['harmless']:+.2f}",
            f"{'layer':>5} {'pos':>4} {'ablated harmful':>16} {'added harmless':>15} {'KL':>7}  eligible",
        ]
        ranked = sorted(self.candidates, key=lambda c: (not c.eligible, c.ablated_harmful))
        for c in ranked[:top]:
            mark = "  ← chosen" if (c.layer, c.position) == (self.layer, self.position) else ""
            lines.append(
                f"{c.layer:>5} {c.position:>4} {c.ablated_harmful:>+16.2f} {c.added_harmless:>+15.2f} "
                f"{c.kl:>7.3f}  {'yes' if c.eligible else 'no'}{mark}"
            )
        return "\n".join(lines)

    __str__ = to_text

    def __repr__(self) -> str:
        return f"RefusalDirection(layer={self.layer}, position={self.position}, norm={self.vector.norm():.3f})"

    def _repr_html_(self) -> str:
        from phi3lab.reprs import pre_html

        return pre_html(self.to_text(), title="Refusal direction")


class _Reader:
    """Reads the residual stream after chosen layers at each forward's last ``last`` positions (float64)."""

    def __init__(self, model, layers: Sequence[int], last: int):
        self.layers = list(layers)
        self.hooks = Hooks(model).read("resid_post", self.layers, positions=slice(-last, None))

    @property
    def kept(self) -> dict[int, list[torch.Tensor]]:
        """Per layer, one ``[batch, last, hidden]`` float64 tensor per forward."""
        return {i: [r.value.double() for r in self.hooks.calls("resid_post", i)] for i in self.layers}

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


def _check(value, choices, name):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


class _Edit(contextlib.ExitStack):
    """``fn(layer, x)`` on the residual stream of chosen layers, at every position or only the answer's first.

    With ``where="last"`` a forward edits its last position — the prompt's end when generation
    prefills — and decoding steps (one new token) are left alone; ``index`` picks the position per
    row instead, for forwards over a prompt with its answer.
    """

    def __init__(self, model, fn, layers, site: str, where: str, index=None):
        super().__init__()
        self.fn, self.where, self.index = fn, where, index
        self.enter_context(edit_residual(model, self._apply, layers=layers, where=site))

    def _apply(self, layer, hidden):
        if self.where == "all":
            return self.fn(layer, hidden)
        if self.index is None and hidden.shape[1] == 1:
            return None  # a decoding step: the edited prompt end is already in the cache
        out = hidden.clone()
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        cols = self.index.to(hidden.device) if self.index is not None else torch.full_like(rows, hidden.shape[1] - 1)
        out[rows, cols] = self.fn(layer, hidden[rows, cols])
        return out


class _Ablation(_Edit):
    """``fn`` wherever the stream is read: every layer's input, between attention and MLP (what the MLP
    reads and what the stream carries on), and the last layer's output."""

    def __init__(self, model, fn, where: str, index=None):
        super().__init__(model, fn, "all", "input", where, index)
        self.enter_context(edit_residual(model, self._apply, layers="all", where="mid"))
        self.enter_context(edit_residual(model, self._apply, layers=-1, where="output"))


def _means(lab, conversations, layers, k, batch_size) -> torch.Tensor:
    """``[layers, k, hidden]`` float64 mean residual at the last ``k`` positions."""
    reader = _Reader(lab.model, layers, k)
    with reader, torch.inference_mode():
        for _ in batched_logits(lab, conversations, batch_size=batch_size):
            pass
    return torch.stack([torch.cat(reader.kept[i]).mean(0) for i in layers])


def _kl(base: torch.Tensor, edited: torch.Tensor) -> float:
    p = torch.log_softmax(base.double(), -1)
    q = torch.log_softmax(edited.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def _last_logits(lab, conversations, batch_size) -> torch.Tensor:
    return torch.cat(list(batched_logits(lab, conversations, batch_size=batch_size)))


def find_direction(
    lab,
    harmful: Sequence,
    harmless: Sequence,
    *,
    ablation: str = "zero",
    where: str = "all",
    val_fraction: float = 0.25,
    max_layer_fraction: float = 0.8,
    kl_limit: float = 0.1,
    batch_size: int = 32,
) -> RefusalDirection:
    """Find the refusal direction from harmful and harmless prompts (probes, strings or conversations).

    Args:
        harmful, harmless: the two classes; every ``1/val_fraction``-th of each is held apart to score candidates.
        ablation: ``"zero"`` (Arditi et al.) or ``"mean"``; see the module docstring.
        where: ``"all"`` positions (Arditi et al.) or the ``"last"``.
        val_fraction: share of each class used for scoring instead of averaging.
        max_layer_fraction: candidates must come from layers below this share of the depth.
        kl_limit: largest mean KL (nats) that ablation may cause at the last position of harmless prompts.
        batch_size: prompts per forward.
    """
    _lab(lab, "find_direction")
    _check(ablation, ("zero", "mean"), "ablation")
    _check(where, ("all", "last"), "where")
    harmful, harmless = _prompts("harmful", harmful, 4), _prompts("harmless", harmless, 4)
    if sorted(map(repr, harmful)) == sorted(map(repr, harmless)):
        raise ValueError(
            "harmful and harmless are the same prompts, so their mean difference — the direction — is zero; "
            "pass harmful requests and harmless ones (e.g. load_probes('tiny-train').select(kind='harmful') and "
            "select(kind='benign'))"
        )
    val_fraction = check_float("val_fraction", val_fraction, above=0.0, maximum=0.5)
    kl_limit = check_float("kl_limit", kl_limit, above=0.0) if kl_limit != float("inf") else kl_limit
    max_layer_fraction = check_float("max_layer_fraction", max_layer_fraction, above=0.0, maximum=1.0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    n_layers = lab.model.config.num_hidden_layers
    if int(max_layer_fraction * n_layers) < 1:
        raise ValueError(
            f"max_layer_fraction={max_layer_fraction} leaves no layer to take a candidate from: this model has "
            f"{n_layers} layers, so it must be at least 1/{n_layers} = {1 / n_layers:.3f} (0.8, the default, "
            "skips the last 20%)"
        )
    step = max(2, round(1 / val_fraction))
    fit_h = [c for i, c in enumerate(harmful) if i % step]
    fit_b = [c for i, c in enumerate(harmless) if i % step]
    val_h, val_b = harmful[::step], harmless[::step]
    tokens = post_instruction_tokens(lab)
    k = len(tokens)
    ids = encode_ids(lab, harmful[:1] + harmless[:1])
    if ids[0][-k:] != ids[1][-k:]:
        raise ValueError("the prompts do not end in the same post-instruction tokens; pass plain user requests")
    layers = list(range(n_layers))
    harmless_means = _means(lab, fit_b, layers, k, batch_size)  # [layers, k, hidden]
    diffs = _means(lab, fit_h, layers, k, batch_size) - harmless_means
    refusal_ids = refusal_token_ids(lab)

    def score(convs) -> float:
        return sum(first_token_scores(lab, convs, batch_size=batch_size, token_ids=refusal_ids)) / len(convs)

    baseline = {"harmful": score(val_h), "harmless": score(val_b)}
    base_logits = _last_logits(lab, val_b, batch_size)
    limit = int(max_layer_fraction * n_layers)
    candidates = []
    for layer in layers:
        for pos in range(-k, 0):
            probe = RefusalDirection(
                layer, pos, diffs[layer, pos], tokens, baseline, [], ablation, where, harmless_means[:, pos]
            )
            if layer >= limit or probe.vector.norm() == 0:
                candidates.append(Candidate(layer, pos, float("nan"), float("nan"), float("nan"), False))
                continue
            with probe.ablate(lab.model):
                ablated = score(val_h)
                kl = _kl(base_logits, _last_logits(lab, val_b, batch_size))
            with probe.add(lab.model):
                added = score(val_b)
            eligible = kl < kl_limit and added > baseline["harmless"]
            candidates.append(Candidate(layer, pos, ablated, added, kl, eligible))
    pool = [c for c in candidates if c.eligible] or [c for c in candidates if c.ablated_harmful == c.ablated_harmful]
    if not pool:
        raise ValueError(
            "no candidate direction: the harmful and harmless prompts have the same mean residual at every layer "
            f"and post-instruction position below layer {limit} (are the two sets the same requests?); pass "
            "harmful requests and harmless ones that differ"
        )
    best = min(pool, key=lambda c: c.ablated_harmful)
    return RefusalDirection(
        best.layer,
        best.position,
        diffs[best.layer, best.position].clone(),
        tokens,
        baseline,
        candidates,
        ablation,
        where,
        harmless_means[:, best.position].clone(),
    )


CONDITIONS = ("harmful", "harmful ablated", "harmless", "harmless added")


@dataclasses.dataclass(frozen=True)
class DirectionEffect:
    """Generated behaviour with and without the direction, in the detector's three verdicts.

    Attributes:
        harmful_refusal, harmful_refusal_ablated, harmless_refusal, harmless_refusal_added: the share
            *declined* (a real refusal) in each condition; an off-topic answer is not a refusal.
        kl_harmless_text: mean per-token KL that ablation causes on the model's own harmless answers.
        examples: per condition, ``(request, answer)`` pairs.
        verdicts: per condition (:data:`CONDITIONS`), the share of each verdict
            (``{"declined": …, "off-topic": …, "complied": …}``).
    """

    harmful_refusal: float
    harmful_refusal_ablated: float
    harmless_refusal: float
    harmless_refusal_added: float
    kl_harmless_text: float
    examples: dict[str, list[tuple[str, str]]]
    verdicts: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def to_text(self) -> str:
        rows = [
            ("harmful, as trained", "harmful"),
            ("harmful, direction ablated", "harmful ablated"),
            ("harmless, as trained", "harmless"),
            ("harmless, direction added", "harmless added"),
        ]
        lines = [f"{'':<28}" + "".join(f"{v:>11}" for v in VERDICTS)]
        for label, key in rows:
            shares = self.verdicts.get(key) or {}
            lines.append(f"{label:<28}" + "".join(f"{shares.get(v, float('nan')):>11.1%}" for v in VERDICTS))
        lines.append(f"KL on harmless answers under ablation: {self.kl_harmless_text:.4f} nats per token")
        return "\n".join(lines)

    __str__ = to_text

    def __repr__(self) -> str:
        return (
            f"DirectionEffect(harmful refused {self.harmful_refusal:.1%} → {self.harmful_refusal_ablated:.1%} ablated, "
            f"harmless refused {self.harmless_refusal:.1%} → {self.harmless_refusal_added:.1%} added)"
        )

    def _repr_html_(self) -> str:
        from phi3lab.reprs import pre_html

        return pre_html(self.to_text(), title="Effect of the refusal direction")


def _refused(lab, convs, max_new_tokens) -> tuple[dict[str, float], list[tuple[str, str]]]:
    """The share of each verdict over ``convs``' generated answers, and the (request, answer) pairs."""
    answers = [r.text for r in lab.chat_batch(convs, max_new_tokens=max_new_tokens)]
    labels = [refusal(a, c if isinstance(c, str) else c[-1]["content"]).label for a, c in zip(answers, convs)]
    shares = {v: sum(label == v for label in labels) / len(convs) for v in VERDICTS}
    return shares, list(zip([str(c) for c in convs], answers))


@torch.inference_mode()
def _text_kl(lab, direction: RefusalDirection, conversations, answers, batch_size: int) -> float:
    """Mean per-token KL, over each answer's positions, of harmless conversations with the model's own answers."""
    rows, starts = [], []
    for c, a in zip(conversations, answers):
        prompt = lab.encode(c)["input_ids"][0].tolist()
        full = lab.encode(
            [{"role": "user", "content": c}, {"role": "assistant", "content": a}], add_generation_prompt=False
        )["input_ids"][0].tolist()
        rows.append(full)
        starts.append(len(prompt) - 1)  # the position that predicts the answer's first token
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        inputs = pad_left(chunk, pad_id(lab), lab.model.device)
        width = inputs["input_ids"].shape[1]
        first = torch.tensor([width - len(r) + s for r, s in zip(chunk, starts[start : start + batch_size])])
        base = lab.model(**inputs, use_cache=False).logits.double()
        with direction.ablate(lab.model, index=first):
            edited = lab.model(**inputs, use_cache=False).logits.double()
        p, q = torch.log_softmax(base, -1), torch.log_softmax(edited, -1)
        kl = (p.exp() * (p - q)).sum(-1).cpu()
        keep = torch.arange(width)[None, :] >= first[:, None]
        total += float(kl[keep].sum())
        count += int(keep.sum())
    return total / count


def evaluate_direction(
    lab,
    direction: RefusalDirection,
    harmful: Sequence,
    harmless: Sequence,
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
) -> DirectionEffect:
    """Generate with and without the direction: what harmful prompts get with it ablated and harmless
    ones with it added — each answer judged declined, off-topic or complied — and the KL that ablation
    causes on harmless text."""
    _lab(lab, "evaluate_direction")
    if not isinstance(direction, RefusalDirection):
        raise TypeError(
            f"direction must be a RefusalDirection (what find_direction returns), got {type(direction).__name__}"
        )
    harmful = [str(c) for c in _prompts("harmful", harmful, 1)]
    harmless = [str(c) for c in _prompts("harmless", harmless, 1)]
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    h_base, h_ex = _refused(lab, harmful, max_new_tokens)
    b_base, b_ex = _refused(lab, harmless, max_new_tokens)
    with direction.ablate(lab.model):
        h_abl, h_abl_ex = _refused(lab, harmful, max_new_tokens)
    with direction.add(lab.model):
        b_add, b_add_ex = _refused(lab, harmless, max_new_tokens)
    kl = _text_kl(lab, direction, harmless, [a for _, a in b_ex], batch_size)
    return DirectionEffect(
        h_base["declined"],
        h_abl["declined"],
        b_base["declined"],
        b_add["declined"],
        kl,
        {"harmful": h_ex, "harmful ablated": h_abl_ex, "harmless": b_ex, "harmless added": b_add_ex},
        {"harmful": h_base, "harmful ablated": h_abl, "harmless": b_base, "harmless added": b_add},
    )


def plot_projection(values: Sequence[float], outcomes: Sequence, groups: Sequence[str] | None = None, ax=None):
    """Projections on the direction, one dot per prompt (a strip per group), coloured by what the model did.

    Args:
        values: each prompt's projection (:meth:`RefusalDirection.project`).
        outcomes: per prompt, the detector's verdict — ``"declined"``, ``"off-topic"`` or ``"complied"``
            (a results row's ``verdict``), drawn in the reports' colours — or a bool (``True``: refused, i.e.
            not complied; the two-way ``refused`` of older results files).
        groups: per prompt, the strip it is drawn in (default: one strip).
    """
    import matplotlib.pyplot as plt

    from phi3lab.safety.report import VERDICT_COLOURS

    values, outcomes = list(values), list(outcomes)
    groups = list(groups) if groups is not None else ["all"] * len(values)
    if not (len(values) == len(outcomes) == len(groups)):
        raise ValueError(
            f"values, outcomes and groups must be one per prompt; got {len(values)}, {len(outcomes)} and {len(groups)}"
        )
    two_way = {True: "refused", False: "complied"}
    bad = [o for o in outcomes if not (isinstance(o, bool) or o in VERDICTS)]
    if bad:
        raise ValueError(
            f"outcomes must be verdicts ({', '.join(map(repr, VERDICTS))}) or bools (True: refused), got {bad[0]!r}; "
            "pass [r['verdict'] for r in results.rows]"
        )
    labels = [two_way[o] if isinstance(o, bool) else o for o in outcomes]
    colours = {**VERDICT_COLOURS, "refused": VERDICT_COLOURS["declined"]}
    names = list(dict.fromkeys(groups))
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 0.45 * len(names) + 1.4))
    jitter = torch.Generator().manual_seed(0)
    for label in ("refused", *VERDICTS):
        xs, ys = [], []
        for v, o, g in zip(values, labels, groups):
            if o == label:
                xs.append(v)
                ys.append(names.index(g) + 0.3 * (float(torch.rand(1, generator=jitter)) - 0.5))
        if xs:
            ax.scatter(xs, ys, s=12, alpha=0.7, color=colours[label], label=label)
    ax.axvline(0, color="black", lw=0.6, ls=":")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()  # the first group on top
    ax.set_xlabel("projection on the refusal direction (dotted: 0)")
    ax.legend(fontsize=7, loc="lower left", title="what the model did", title_fontsize=7)
    ax.set_title("Each prompt on the refusal direction, by what the model did")
    fig.tight_layout()
    return fig, ax
