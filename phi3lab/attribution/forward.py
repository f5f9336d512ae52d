"""The functions captum calls: the target's log-probability under a batch of removals.

:class:`Scorer` is the forward function given to ``FeatureAblation`` and ``ShapleyValueSampling``.
Its input is captum's *interpretable* tensor, ``presence [batch, units]`` (1 = the unit is there,
0 = replaced by its baseline); its output is ``[batch, target tokens]`` of teacher-forced
log-probabilities of the target, one column per target token (captum's LLMAttribution computes
the same numbers one perturbation at a time).  Three things make it fast without changing them:

* **batches** — captum's ``perturbations_per_eval`` rows are one model call;
* **one run of the prompt** — the unperturbed prompt + target runs once, keeping its merged input
  embeddings (token embeddings with image features written in) and its KV cache;
* **the unperturbed prefix is reused** — a batch whose first removed unit starts at position ``p``
  only runs positions ``p…``: the keys and values before ``p`` cannot have changed (attention is
  causal), so the cache of the unperturbed run, cut at ``p`` and expanded over the batch, stands in
  for them (:mod:`phi3lab.inspect.reuse`).  Text removals overwrite embeddings; image removals edit ``pixel_values`` and rerun the
  vision tower on the rows that need it.

:class:`GradientForward` is the function ``LayerIntegratedGradients`` differentiates: it passes the
merged embeddings (of the prompt, or of its baseline: every unit replaced) through an identity
``tap`` module, the embedding layer captum interpolates, so text and image positions are
attributed alike and ``pixel_values`` never need to be interpolated (captum issue 1494).
"""

from __future__ import annotations

import torch
from torch import nn

from phi3lab.inspect.kernel import embed_inputs
from phi3lab.inspect.reuse import forward_from, target_log_probs, unedited_run

__all__ = ["Scorer", "GradientForward"]


class Scorer:
    """``presence [batch, units] → log p(target) [batch, T]``, batched, with the prefix's KV cache reused.

    Args:
        model: the causal LM (``lab.model``).
        inputs: the prompt's :class:`~phi3lab.prompts.inputs.Inputs`.
        units: the :class:`~phi3lab.attribution.units.Unit` list (text and image units).
        target: ``[T]`` target token ids.
        baseline_id: the token that replaces a removed text unit's tokens.
        fill: per-channel normalised value that replaces a removed image unit's pixels.
    """

    def __init__(self, model, inputs, units, target: torch.Tensor, baseline_id: int, fill=None):
        self.model, self.inputs, self.units = model, inputs, list(units)
        device = inputs.device
        self.target = target.to(device)[None]  # [1, T]
        self.n_prompt, self.n_target = inputs.num_tokens, int(target.numel())
        self.ids = torch.cat([inputs.input_ids, self.target[:, :-1]], dim=1)  # prompt + target, teacher-forced
        self.pixels = inputs.get("pixel_values")
        self.sizes = inputs.get("image_sizes")
        self.fill = None if fill is None else torch.tensor(fill, device=device).view(3, 1, 1)
        self.evaluations = 0  # rows run, for progress and benchmarks
        self.on_rows = None  # callback(number of rows) for a progress bar
        with torch.no_grad():
            self.embeds = embed_inputs(model, self.ids, self.pixels, self.sizes)
            self.run = unedited_run(model, self.embeds, self.n_target)  # its keys and values, for the prefixes
            self.base = target_log_probs(self.run.logits, self.target)  # [1, T]
            baseline = torch.tensor([[baseline_id]], device=device)
            self.baseline_embed = model.get_input_embeddings()(baseline)[0, 0]
        self._text = [i for i, u in enumerate(self.units) if u.image is None]
        self._image = [i for i, u in enumerate(self.units) if u.image is not None]

    @property
    def log_prob(self) -> torch.Tensor:
        """``[T]`` log-probabilities of the target tokens with every unit present."""
        return self.base[0]

    def _pixels(self, image: int, removed: list[int]) -> torch.Tensor:
        """``pixel_values`` of one image with the given units' pixels set to the baseline colour."""
        pixels = self.pixels[image].clone()
        for i in removed:
            for view, y0, y1, x0, x1 in self.units[i].views:
                pixels[view, :, y0:y1, x0:x1] = self.fill
        return pixels

    def embeddings(self, absent: torch.Tensor, p: int = 0) -> torch.Tensor:
        """Merged input embeddings from position ``p`` on, for each row's removals (``absent [batch, units]``)."""
        batch = absent.shape[0]
        embeds = self.embeds[:, p:].expand(batch, -1, -1).clone()
        for i in self._text:
            rows = absent[:, i].nonzero()[:, 0]
            if rows.numel():
                positions = torch.tensor(self.units[i].positions, device=embeds.device) - p
                embeds[rows[:, None], positions[None, :]] = self.baseline_embed
        if self._image:
            self._write_images(embeds, absent, p)
        return embeds

    def _write_images(self, embeds: torch.Tensor, absent: torch.Tensor, p: int) -> None:
        tower = self.model.model.vision_embed_tokens
        for span in self.inputs.images:
            mine = [i for i in self._image if self.units[i].image == span.index]
            rows = [r for r in range(absent.shape[0]) if bool(absent[r, mine].any())]
            if not rows:
                continue
            pixels = torch.stack([self._pixels(span.index, [i for i in mine if absent[r, i]]) for r in rows])
            sizes = self.sizes[span.index : span.index + 1].expand(len(rows), -1)
            features = tower(pixels, sizes)
            for r, f in zip(rows, features):
                embeds[r, span.start - p : span.end - p] = f.to(embeds.dtype)

    def __call__(self, presence: torch.Tensor) -> torch.Tensor:
        absent = presence.to(self.ids.device) == 0
        batch = absent.shape[0]
        self.evaluations += batch
        if self.on_rows is not None:
            self.on_rows(batch)
        removed = absent.any(0).nonzero()[:, 0].tolist()
        if not removed:
            return self.base.expand(batch, -1).clone()
        p = min(self.units[i].first for i in removed)
        with torch.no_grad():
            embeds = self.embeddings(absent, p)
            logits = forward_from(self.model, embeds, self.run, p, self.n_target)
        return target_log_probs(logits, self.target)


class GradientForward(nn.Module):
    """``is_input [batch, 1] → log p(target) [batch, T]`` through an identity ``tap`` on the merged embeddings.

    ``is_input`` is 1 for the prompt and 0 for its baseline (every unit replaced): captum evaluates
    the two ends to read the tap's activations there, then replaces the tap's output with points on
    the straight line between them and differentiates, so nothing else depends on it.
    """

    def __init__(self, model, scorer: Scorer):
        super().__init__()
        self.model, self.scorer = model, scorer
        self.tap = nn.Identity()
        with torch.no_grad():
            everything = torch.ones(1, len(scorer.units), dtype=torch.bool, device=scorer.ids.device)
            self.baseline_embeds = scorer.embeddings(everything)  # [1, L, H]

    def forward(self, is_input: torch.Tensor) -> torch.Tensor:
        rows = is_input.reshape(-1) > 0.5
        embeds = torch.where(rows[:, None, None], self.scorer.embeds, self.baseline_embeds)
        out = self.model(inputs_embeds=self.tap(embeds), logits_to_keep=self.scorer.n_target)
        return target_log_probs(out.logits, self.scorer.target)
