"""What :func:`~phi3lab.attribution.attribute` returns, and the faithfulness curves read from it.

An :class:`Attribution` holds a score per (target token, unit): how much the unit contributed to
that token's log-probability (for ``"ablation"``: how much the log-probability falls when the unit
is replaced by its baseline).  Summed over the target tokens, a row gives the unit's share of the
whole answer's log-probability.  Its views: :meth:`~Attribution.to_text` (the tested contract),
an offline HTML form (:meth:`~Attribution.to_html`: no scripts, no CDN), :meth:`~Attribution.image_map`
(scores spread back onto a picture's pixels) and :meth:`~Attribution.plot`.

The HTML form speaks :mod:`phi3lab.colours`: one diverging scale centred at 0 for the words and the
picture regions alike (:meth:`~Attribution.scale`, drawn with its numbers), units under the noise floor
uncoloured with a dashed outline (*no signal*), and each picture in its own colours under a veil that
lifts where its regions score high, with a rim in the sign's colour, so a region at +1 beside a word
at +23.5 stays veiled and an orange square stays orange.

Faithfulness (:meth:`~Attribution.deletion`, :meth:`~Attribution.insertion`): remove (or, starting
from every unit removed, insert) the units in order of score and track the target's
log-probability; a faithful ranking makes the deletion curve fall fast (small area) and the
insertion curve rise fast (large area), so two methods on the same units can be compared.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
from collections.abc import Sequence

import numpy as np
import torch

from phi3lab import colours
from phi3lab.prompts.token_view import HEADERS
from phi3lab.validation import check_int

__all__ = ["Attribution", "Curve", "compare", "score_colour"]

CURVES = ("deletion", "insertion")
LABEL = "attribution (Δ log p)"
PICTURE_SIDE = 224  # the longer side of a picture in the HTML form, in pixels


def score_colour(value: float, scale: float, floor: float = colours.SCORE_FLOOR) -> str:
    """The CSS colour of a score on the diverging scale ``±scale`` (:data:`phi3lab.colours.DIVERGING`: red
    supports the target, blue works against it); ``"transparent"`` under the noise ``floor`` (no signal).

    >>> score_colour(2.0, 2.0), score_colour(-1.0, 2.0), score_colour(2e-6, 2.0)
    ('#67001f', '#6aacd0', 'transparent')
    """
    return colours.diverging([value], vmax=abs(scale), floor=floor)[0] or "transparent"


@dataclasses.dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve.

    Attributes:
        kind: ``"deletion"`` or ``"insertion"``.
        method: the attribution method whose ranking was followed (or ``"random"``).
        fractions: ``[U + 1]`` share of units removed (deletion) or inserted (insertion).
        log_probs: ``[U + 1]`` the target's log-probability at each step.
        order: unit labels in the order they were removed or inserted.
    """

    kind: str
    method: str
    fractions: np.ndarray
    log_probs: np.ndarray
    order: tuple[str, ...]

    @property
    def area(self) -> float:
        """Area under the curve over ``fractions`` (trapezoids): lower is better for deletion,
        higher for insertion."""
        y, x = self.log_probs, self.fractions
        return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())

    def to_text(self) -> str:
        steps = " → ".join(f"{v:.2f}" for v in self.log_probs[: min(6, len(self.log_probs))])
        more = " → …" if len(self.log_probs) > 6 else ""
        return (
            f"{self.kind} by {self.method}: area {self.area:.3f} (log p {steps}{more} → "
            f"{self.log_probs[-1]:.2f}); first: {', '.join(map(repr, self.order[:3]))}"
        )

    __str__ = to_text

    def __repr__(self) -> str:
        return f"Curve({self.kind} by {self.method}, {len(self.order)} units, area {self.area:.3f})"

    def _repr_html_(self) -> str:
        from phi3lab.reprs import grid_html

        rows = [
            (f"{f:.2f}", f"{lp:.3f}", "" if i == 0 else self.order[i - 1])
            for i, (f, lp) in enumerate(zip(self.fractions, self.log_probs))
        ]
        moved = "removed" if self.kind == "deletion" else "inserted"
        return grid_html(
            [f"share {moved}", "log p", f"unit {moved}"],
            rows,
            title=f"{self.kind} curve by {self.method}: area {self.area:.3f}",
            note="deletion: lower area is more faithful; insertion: higher" if self.kind in CURVES else None,
        )


class Attribution:
    """Scores of an answer's tokens over the units of its prompt.

    Attributes:
        units: the :class:`~phi3lab.attribution.units.Unit` list (columns of ``scores``).
        scores: ``[target tokens, units]`` float tensor.
        target_ids, target_tokens, target_text: the attributed answer.
        log_prob: ``[target tokens]`` its log-probabilities with every unit present.
        method, kinds: how it was computed and over which unit kinds.
        baselines: what replaced a removed unit, in words.
        inputs: the prompt's :class:`~phi3lab.prompts.inputs.Inputs`.
        raw: the tensor captum's ``attribute`` returned (for ``"ig"``: one per target token, stacked).
        explainer: the captum object that computed it (``FeatureAblation``, ``ShapleyValueSampling``,
            ``LayerIntegratedGradients``).
        delta: for ``"ig"``, captum's convergence delta per target token (completeness error).
        noise_floor: scores of smaller magnitude are rounding noise, drawn as *no signal*
            (:func:`phi3lab.colours.noise_floor` of the model's dtype).
    """

    def __init__(
        self,
        *,
        units,
        scores,
        target_ids,
        tokenizer,
        log_prob,
        method,
        kinds,
        baselines,
        inputs,
        scorer,
        raw=None,
        explainer=None,
        delta=None,
        batch_size: int = 16,
        noise_floor: float = colours.SCORE_FLOOR,
    ):
        self.units = list(units)
        self.scores = scores.detach().float().cpu()
        self.target_ids = [int(i) for i in target_ids]
        self.target_tokens = tokenizer.convert_ids_to_tokens(self.target_ids)
        self.target_text = tokenizer.decode(self.target_ids)
        self.log_prob = log_prob.detach().float().cpu()
        self.method, self.kinds, self.baselines = method, tuple(kinds), baselines
        self.inputs, self.raw, self.explainer, self.delta = inputs, raw, explainer, delta
        self._scorer, self._batch = scorer, batch_size
        self.noise_floor = float(noise_floor)

    # --- numbers -------------------------------------------------------------------------------

    @property
    def labels(self) -> list[str]:
        return [u.label for u in self.units]

    @property
    def total(self) -> torch.Tensor:
        """``[units]``: scores summed over the target tokens (attribution of the whole answer)."""
        return self.scores.sum(0)

    def _token(self, token) -> int | None:
        if token is None:
            return None
        if isinstance(token, str):
            for i, piece in enumerate(self.target_tokens):
                if token in (piece, piece.replace("▁", " ").strip()):
                    return i
            raise KeyError(f"{token!r} is not a target token; the target tokens are {self.target_tokens}")
        if (
            isinstance(token, bool)
            or not isinstance(token, int)
            or not -len(self.target_ids) <= token < len(self.target_ids)
        ):
            raise IndexError(
                f"token must be None (the whole answer), a target token string or an index in "
                f"0..{len(self.target_ids) - 1}, got {token!r}"
            )
        return token % len(self.target_ids)

    def row(self, token=None) -> torch.Tensor:
        """``[units]``: scores for one target token (index or piece), or the whole answer (``None``)."""
        t = self._token(token)
        return self.total if t is None else self.scores[t]

    def token_name(self, token=None) -> str:
        """``"the whole answer"`` or the chosen target token, quoted."""
        return "the whole answer" if token is None else repr(self.target_tokens[self._token(token)])

    def top(self, n: int = 5, token=None) -> list[tuple[object, float]]:
        """The ``n`` highest-scoring ``(unit, score)`` pairs."""
        n = check_int("n", n, minimum=1)
        values = self.row(token)
        order = torch.argsort(values, descending=True, stable=True)[:n]
        return [(self.units[i], float(values[i])) for i in order.tolist()]

    def image_map(self, image: int = 0, token=None) -> np.ndarray:
        """``[height, width]`` of picture ``image``: each pixel the summed score of the image units covering it."""
        span = self.inputs.image(image)
        mine = [(u, float(v)) for u, v in zip(self.units, self.row(token)) if u.image == span.index]
        if not mine:
            raise ValueError(
                f"this attribution has no units on image {image}; run it with units='image-regions', "
                "'crops' or 'images'"
            )
        heat = np.zeros((span.height, span.width))
        for unit, value in mine:
            x0, y0, x1, y1 = (int(round(b)) for b in unit.box)
            heat[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)] += value
        return heat

    # --- faithfulness --------------------------------------------------------------------------

    def _curve(self, kind: str, token, order, seed: int) -> Curve:
        n = len(self.units)
        if order == "score":
            ranking = torch.argsort(self.row(token), descending=True, stable=True).tolist()
            method = self.method
        elif order == "random":
            ranking = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
            method = "random"
        else:
            raise ValueError(f"order must be 'score' or 'random', got {order!r}")
        presence = torch.ones(n + 1, n) if kind == "deletion" else torch.zeros(n + 1, n)
        for k in range(1, n + 1):
            presence[k:, ranking[k - 1]] = 0.0 if kind == "deletion" else 1.0
        values = torch.cat([self._scorer(chunk) for chunk in presence.split(self._batch)])
        t = self._token(token)
        curve = values.sum(1) if t is None else values[:, t]
        return Curve(
            kind, method, np.linspace(0, 1, n + 1), curve.cpu().numpy(), tuple(self.units[i].label for i in ranking)
        )

    def deletion(self, token=None, order: str = "score", seed: int = 0) -> Curve:
        """Remove units from the highest score down and track the target's log-probability.

        Args:
            token: a target token (index or piece) or ``None`` for the whole answer.
            order: ``"score"`` (this attribution's ranking) or ``"random"`` (a reference).
            seed: for ``order="random"``.
        """
        return self._curve("deletion", token, order, seed)

    def insertion(self, token=None, order: str = "score", seed: int = 0) -> Curve:
        """Start with every unit removed and put them back from the highest score down."""
        return self._curve("insertion", token, order, seed)

    # --- views ---------------------------------------------------------------------------------

    def to_text(self, top: int = 8) -> str:
        """Header, the top units for the whole answer, and each target token's top unit."""
        top = check_int("top", top, minimum=1)
        names = {"ablation": "FeatureAblation", "shapley": "ShapleyValueSampling", "ig": "LayerIntegratedGradients"}
        kinds = " + ".join(self.kinds)
        lines = [
            f"{self.method} ({names[self.method]}) over {len(self.units)} units ({kinds}); target "
            f"{self.target_text!r} ({len(self.target_ids)} tokens, log p {float(self.log_prob.sum()):.3f})",
            f"baselines: {self.baselines}",
            f"{'score':>9}  unit",
        ]
        for unit, value in self.top(top):
            lines.append(f"{value:>+9.3f}  {unit.name}")
        if len(self.units) > top:
            rest = self.total[torch.argsort(self.total, descending=True, stable=True)[top:]]
            lines.append(f"{'':>9}  … {len(self.units) - top} more, |score| ≤ {float(rest.abs().max()):.3f}")
        lines.append("per target token, its top unit:")
        for i, piece in enumerate(self.target_tokens):
            unit, value = self.top(1, token=i)[0]
            lines.append(f"  {piece!r:<14} {unit.name} {value:+.3f}")
        return "\n".join(lines)

    __str__ = to_text

    def __repr__(self) -> str:
        return (
            f"Attribution({self.method}, {len(self.target_ids)} target tokens × {len(self.units)} units "
            f"({' + '.join(self.kinds)}), target {self.target_text!r})"
        )

    def segments(self) -> list[tuple[str, list[tuple[str, int | None]]]]:
        """The prompt's text turn by turn, as ``(role, [(text, unit index or None)])``; a picture's
        run of tokens is one ``("[image k]", unit)`` piece (its ``"images"`` unit, if any); the
        template is left out."""
        owner = {p: i for i, u in enumerate(self.units) if u.image is None for p in u.positions}
        whole = {u.image: i for i, u in enumerate(self.units) if u.kind == "images"}
        prompt, turns = self.inputs.table.prompt, []
        for row in self.inputs.table.rows:
            if row.segment == "special" and row.token in HEADERS:
                turns.append((HEADERS[row.token], []))
            elif not turns:
                continue
            elif row.segment == "image":
                label = f"[image {-row.id}]"
                if not turns[-1][1] or turns[-1][1][-1][0] != label:
                    turns[-1][1].append((label, whole.get(-row.id - 1)))
            elif row.segment in HEADERS.values() or row.index in owner:
                turns[-1][1].append((prompt[row.start : row.end] or row.token, owner.get(row.index)))
        return [(role, pieces) for role, pieces in turns if pieces]

    def scale(self, token=None, floor: float | None = None) -> colours.Scale:
        """The one diverging scale of this attribution's views for ``token``: every unit's score (words, turns
        and picture regions alike) against ``±`` the largest, with :attr:`noise_floor` (or ``floor``)."""
        floor = self.noise_floor if floor is None else floor
        return colours.scale(self.row(token).numpy(), kind="score", label=LABEL, floor=floor)

    def to_html(self, token=None, floor: float | None = None) -> str:
        """Self-contained HTML: the prompt turn by turn with each unit's text on the colour of its score
        (hover for the unit and score), the scale with its numbers, and each picture under its image
        map; no scripts, no CDN.  Words and pictures share one scale (:meth:`scale`); a unit under the
        noise floor is uncoloured with a dashed outline, and a target whose every score is under it says so."""
        values = self.row(token).tolist()
        s = self.scale(token, floor)
        body = []
        for role, pieces in self.segments():
            parts = [f'<b style="color:#6b7280">{html.escape(role)}:</b> ']
            for text, i in pieces:
                if text[:1].isspace():
                    parts.append(" ")
                text = " ".join(text.split())
                if text:
                    parts.append(self._chip(text, i, values, s))
            body.append(f'<div style="margin:2px 0">{"".join(parts)}</div>')
        head = (
            f"<div><b>{html.escape(self.method)}</b> over {len(self.units)} units "
            f"({html.escape(' + '.join(self.kinds))}) for {html.escape(self.token_name(token))} of "
            f"<code>{html.escape(self.target_text)}</code>: red supports it, blue works against it</div>"
            f"{colours.legend_html(s)}"
        )
        pictures = "".join(
            self._picture_html(span.index, token, s)
            for span in self.inputs.images
            if any(u.image == span.index for u in self.units)
        )
        return (
            f'<div class="phi3lab-attribution-static" style="font-family:monospace;line-height:1.9">'
            f"{head}{''.join(body)}{pictures}</div>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def _chip(self, text: str, unit: int | None, values: list[float], s: colours.Scale) -> str:
        """One piece of the prompt: a scored unit on its colour (or outlined, no signal); template and
        picture tokens that are no unit in a neutral frame."""
        style = "border-radius:3px;padding:0 2px"
        if unit is None:
            title = "the picture's tokens (scored on the picture below)" if text.startswith("[image") else None
            frame = f";outline:1px solid {_NEUTRAL};outline-offset:-1px" if title else ""
            return _span(text, style + frame, title)
        value, name = values[unit], self.units[unit].name
        colour = s.colour(value)
        if colour is None:
            return _span(
                text,
                f"{style};outline:1px dashed {colours.NO_SIGNAL};outline-offset:-1px;color:#6b7280",
                f"{name}: {value:+.2e} (no signal: under the noise floor {s.floor:.1e})",
                "phi3lab-nosignal",
            )
        return _span(text, f"{style};background:{colour};color:{colours.text_on(colour)}", f"{name}: {value:+.3f}")

    def _picture_html(self, image: int, token, s: colours.Scale) -> str:
        """The picture in its own colours under a veil that lifts where its regions score high (on the
        view's one scale ``s``), each region with signal outlined in its sign's colour; an inline PNG."""
        from PIL import Image, ImageDraw

        span = self.inputs.image(image)
        picture = span.image.convert("RGB")
        ratio = PICTURE_SIDE / max(picture.size)
        size = (max(1, round(picture.width * ratio)), max(1, round(picture.height * ratio)))
        alpha = colours.veil_alpha(s.fraction(self.image_map(image, token)))
        veil = Image.fromarray(np.rint(alpha * 255).astype(np.uint8), "L").resize(size, Image.NEAREST)
        shown = picture.resize(size, Image.LANCZOS).convert("RGBA")
        shade = Image.new("RGBA", size, colours.VEIL)
        shade.putalpha(veil)
        shown = Image.alpha_composite(shown, shade)
        values = self.row(token).numpy()
        rims = Image.new("RGBA", size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(rims)
        mine = [k for k, u in enumerate(self.units) if u.image == image and u.box is not None]
        for k, rgb, fraction in zip(mine, s.rims(values[mine]), s.fraction(values[mine])):
            if np.isnan(rgb).any():
                continue
            x0, y0, x1, y1 = (b * ratio for b in self.units[k].box)
            strength = float(np.clip(np.sqrt(abs(fraction)), 0.35, 1))
            colour = tuple(int(c) for c in rgb) + (int(255 * strength),)
            draw.rectangle((x0 + 1, y0 + 1, x1 - 2, y1 - 2), outline=colour, width=2)
        shown = Image.alpha_composite(shown, rims)
        buffer = io.BytesIO()
        shown.convert("RGB").save(buffer, format="PNG")
        data = base64.b64encode(buffer.getvalue()).decode()
        signal = any(not np.isnan(f) for f in s.fraction(values[mine])) if mine else False
        if not s.signal:
            how = "no signal anywhere: the picture is veiled all over"
        elif not signal:
            how = f"no signal: every region of this picture scores under the noise floor {s.floor:.1e}, so it is veiled"
        else:
            how = (
                f"on the scale above (±{colours.tick(s.vmax)}): veiled where a region has little or no signal, "
                "clear at the strongest; rim: red supports, blue works against"
            )
        return (
            f'<figure style="display:inline-block;margin:4px;max-width:{PICTURE_SIDE + 80}px">'
            f'<img alt="image {image + 1} attribution" style="border:1px solid {_NEUTRAL}" '
            f'src="data:image/png;base64,{data}"/>'
            f'<figcaption style="font-size:85%">image {image + 1}: {html.escape(how)}</figcaption></figure>'
        )

    def plot(self, token=None, image: int = 0):
        """Text heat (and, with image units, the picture's overlay): ``(fig, axes)``."""
        import matplotlib.pyplot as plt

        from phi3lab.views import plotting

        pictured = any(u.image is not None for u in self.units) and self.inputs.images
        fig, axes = plt.subplots(
            1,
            2 if pictured else 1,
            figsize=(12 if pictured else 9, 3.6),
            gridspec_kw={"width_ratios": [1.6, 1]} if pictured else None,
        )
        axes = list(np.atleast_1d(axes))
        plotting.attribution_text(self, token=token, ax=axes[0])
        if pictured:
            plotting.attribution_image(self, image=image, token=token, ax=axes[1])
        return fig, axes

    @property
    def captum(self):
        """The scores as captum's own ``LLMAttributionResult`` (units as its input tokens), for
        captum's plots (``plot_token_attr``, ``plot_seq_attr``)."""
        from captum.attr import LLMAttributionResult

        return LLMAttributionResult(
            input_tokens=self.labels,
            output_tokens=list(self.target_tokens),
            seq_attr=self.total,
            token_attr=self.scores,
        )


_NEUTRAL = "#d1d5db"  # frames that carry no number


def _span(text: str, style: str, title: str | None = None, cls: str | None = None) -> str:
    hover = f' title="{html.escape(title)}"' if title else ""
    kind = f' class="{cls}"' if cls else ""
    return f'<span{kind}{hover} style="{style}">{html.escape(text)}</span>'


def compare(attributions: Sequence[Attribution], kind: str = "deletion", token=None) -> list[Curve]:
    """One curve per attribution (same prompt, units and target) plus a random-order reference."""
    if kind not in CURVES:
        raise ValueError(f"kind must be one of {CURVES}, got {kind!r}")
    attributions = list(attributions)
    if not attributions or not all(isinstance(a, Attribution) for a in attributions):
        raise TypeError("compare takes a list of attributions, e.g. compare([by_ablation, by_shapley])")
    first = attributions[0]
    for k, other in enumerate(attributions[1:], start=1):
        same = (
            other.inputs.input_ids.shape == first.inputs.input_ids.shape
            and bool((other.inputs.input_ids == first.inputs.input_ids).all())
            and [u.positions for u in other.units] == [u.positions for u in first.units]
            and list(other.target_ids) == list(first.target_ids)
        )
        if not same:
            raise ValueError(
                f"attribution {k} ({other.method}) is not of the same prompt, units and target as attribution 0 "
                f"({first.method}); curves are comparable only then: attribute the same conversation with the same "
                "units= and target="
            )
    curves = [getattr(a, kind)(token) for a in attributions]
    return curves + [getattr(attributions[0], kind)(token, order="random")]
