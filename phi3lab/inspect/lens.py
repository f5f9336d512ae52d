"""The logit lens: what each layer would predict if the model stopped there.

Each layer's residual stream at one position is passed through the final RMSNorm and the output
head, giving a next-token distribution per layer (nostalgebraist, 2020).  Works for Phi-3 and
Phi-3-vision (image inputs included) under any attention kernel.

The HTML form colours each cell by its probability on :mod:`phi3lab.colours`' sequential map, on a fixed
0 … 1 scale (a probability is a share of one distribution, so a layer that is unsure looks pale whatever
the other layers do), with the scale drawn and probabilities under the noise floor left uncoloured.
"""

from __future__ import annotations

import dataclasses

import torch

from phi3lab.colours import NO_SIGNAL, Scale, legend_html, scale, text_on
from phi3lab.reprs import Markup, grid_html

__all__ = ["LogitLens", "logit_lens", "read_lens"]


@dataclasses.dataclass(frozen=True)
class LogitLens:
    """Top tokens per layer at one position.

    Attributes:
        position: the sequence position read.
        layers: ``("embeddings", "layer 0", ..., "layer N-1")``.
        tokens: per layer, the top tokens (decoded pieces).
        probs: per layer, their probabilities.
    """

    position: int
    layers: tuple[str, ...]
    tokens: tuple[tuple[str, ...], ...]
    probs: tuple[tuple[float, ...], ...]

    def to_text(self) -> str:
        width = max(len(n) for n in self.layers)
        lines = [f"logit lens at position {self.position}"]
        for name, toks, ps in zip(self.layers, self.tokens, self.probs):
            cells = "  ".join(f"{t!r} {p:.2f}" for t, p in zip(toks, ps))
            lines.append(f"{name:<{width}}  {cells}")
        return "\n".join(lines)

    __str__ = to_text

    def scale(self) -> Scale:
        """The view's scale: probabilities on the sequential map, from 0 to 1."""
        return scale(self.probs, kind="share", label="probability", vmax=1.0)

    def _repr_html_(self) -> str:
        s = self.scale()
        head = ["layer", *(f"#{i + 1}" for i in range(len(self.tokens[0]) if self.tokens else 0))]
        rows = [
            [name, *(f"{t!r} {p:.2f}" for t, p in zip(toks, ps))]
            for name, toks, ps in zip(self.layers, self.tokens, self.probs)
        ]
        styles = [["", *(_cell(s, p) for p in ps)] for ps in self.probs]
        return grid_html(
            head,
            rows,
            styles=styles,
            title=f"logit lens at position {self.position}: each layer's top tokens",
            note=Markup(legend_html(s)),
        )


def _cell(s: Scale, p: float) -> str:
    colour = s.colour(p)
    if colour is None:
        return f"outline:1px dashed {NO_SIGNAL};outline-offset:-2px"
    return f"background:{colour};color:{text_on(colour)}"


@torch.inference_mode()
def logit_lens(model, tokenizer, inputs: dict, position: int = -1, top: int = 5) -> LogitLens:
    """Top-``top`` next tokens predicted from every layer's hidden state at ``position``.

    Args:
        model: a Phi-3 or Phi-3-vision causal LM.
        tokenizer: its tokenizer (to decode ids).
        inputs: model inputs (``input_ids``, ``attention_mask``, and for vision the pixels).
        position: sequence position (negative counts from the end).
        top: tokens per layer.
    """
    out = model(**inputs, output_hidden_states=True, use_cache=False)
    base = getattr(model, "model", model)
    hidden = torch.stack([h[0, position] for h in out.hidden_states])  # [layers + 1, hidden]
    # the last entry already went through the final norm in transformers' Phi-3; the others have not
    normed = torch.cat([base.norm(hidden[:-1]), hidden[-1:]])
    seq = inputs["input_ids"].shape[1]
    return read_lens(model, tokenizer, normed, position % seq, top)


def read_lens(model, tokenizer, normed: torch.Tensor, position: int, top: int = 5) -> LogitLens:
    """The :class:`LogitLens` of ``[embeddings + layers, hidden]`` states already passed through the final norm."""
    probs = torch.softmax(model.lm_head(normed.to(model.lm_head.weight.dtype)).float(), dim=-1)
    best = probs.topk(top, dim=-1)
    names = ("embeddings", *(f"layer {i}" for i in range(normed.shape[0] - 1)))
    return LogitLens(
        position=int(position),
        layers=names,
        tokens=tuple(tuple(tokenizer.convert_ids_to_tokens(row.tolist())) for row in best.indices),
        probs=tuple(tuple(float(p) for p in row) for row in best.values),
    )
