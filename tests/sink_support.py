"""Attention sinks planted into the embedded vision model, for tests of sink detection and masking.

Whether the tiny vision model has sinks of its own on a picture changes when it is retrained (the model
of 2026-12-07 has none across five questions on ``shapes.png``), so tests of what detection and masking
*do* plant theirs: at the chosen image tokens every layer's key is replaced by the direction of the mean
query of the text after the picture (scaled to ``strength`` × the key's own length), so every later query
scores it high whatever is asked, as a real sink's key does.  With ``massive`` the token's residual stream
after the last layer (which no attention reads) also gets that many times the prompt's median in dimension 0.
"""

from __future__ import annotations

import torch

from phi3lab.inspect.hooks import Hooks
from phi3lab.inspect.sinks import find_sinks


def crop_and_global(lab, picture, question: str) -> tuple[int, int]:
    """The crop token and the global-view token the answer to ``question`` attends to most (indices into the
    picture's tokens): planted there, a sink holds attention a heat map visibly loses when it is masked."""
    _, cache = lab.generate_with_cache(f"<|image_1|>\n{question}", [picture], max_new_tokens=4)
    heat = cache.image_heat(0, sinks="show")
    tokens = cache.sinks(0).tokens
    found = []
    for kind, grid in (("crop", heat.crops), ("global", heat.global_view)):
        row, col = divmod(int(grid.argmax()), grid.shape[1])
        found.append(next(t.index for t in tokens if t.kind == kind and t.row == row and t.col == col))
    return found[0], found[1]


def planted(lab, picture, indices, questions, strength: float = 4.0, massive: float = 0.0, max_new_tokens: int = 4):
    """One cache per question (``<|image_1|>\\n{question}``, greedy) with the tokens ``indices`` made sinks."""
    first = f"<|image_1|>\n{questions[0]}"
    span = lab.encode(first, [picture]).image(0)
    _, clean = lab.run_with_cache(first, [picture], sites=["q"])
    layers = lab.model.config.num_hidden_layers
    means = [clean["q", layer][0, span.end :].mean(0) for layer in range(layers)]  # [heads, head_dim]
    wanted = torch.tensor([span.start + i for i in indices])
    last = layers - 1

    def key(k, at):
        rows = torch.isin(at.positions, wanted).nonzero().flatten()
        if not rows.numel():
            return None
        k = k.clone()
        mean = means[at.layer]
        groups = mean.shape[0] // k.shape[2]  # query heads per key head
        direction = mean.view(k.shape[2], groups, -1).mean(1)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        for row in rows:
            k[:, row] = direction * strength * k[:, row].norm(dim=-1, keepdim=True)
        return k

    def loud(x, at):
        rows = torch.isin(at.positions, wanted).nonzero().flatten()
        if not rows.numel():
            return None
        x = x.clone()
        x[:, rows, 0] = massive * float(x.abs().median())
        return x

    caches = []
    for question in questions:
        with Hooks(lab.model) as hooks:
            hooks.edit("k", key)
            if massive:
                hooks.edit("resid_post", loud, layers=[last])
            prompt = f"<|image_1|>\n{question}"
            caches.append(lab.generate_with_cache(prompt, [picture], max_new_tokens=max_new_tokens)[1])
    return caches


def planted_sinks(lab, picture, indices, questions):
    """The sinks ``find_sinks`` finds across ``questions`` with ``indices`` planted."""
    return find_sinks(planted(lab, picture, indices, questions))
