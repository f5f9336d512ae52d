"""``lab.verify()``: is what the hook core reads what the model computes?  A table of max |Δ| per site.

Users of hooked models keep asking for this (TransformerLens issues #693, #685, #615: logits that
differ from transformers').  :func:`verify` runs one short prompt

1. plainly, under the model's own kernel — the logits, untouched;
2. through the hook core, reading every site at every layer — the logits must not move at all;
3. with transformers' own ``output_hidden_states`` under the same kernel, and ``output_attentions``
   under eager attention (sdpa and flash-attention have none) — the references the sites are compared with;

and checks the decompositions that define the sites: ``resid_mid = resid_pre + attn_out``,
``resid_post = resid_mid + mlp_out``, ``Σ_heads z_h W_O[:, h] = attn_out``, each head's
``z = pattern · v``, and ``resid_pre[l + 1] = resid_post[l]``.  Every row is printed with its
tolerance; :attr:`Verification.ok` is whether all pass.

    >>> import phi3lab
    >>> print(phi3lab.load("tiny", verbose=False).verify().ok)
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from phi3lab.inspect.hooks import Hooks
from phi3lab.inspect.kernel import attention_modules, language_model
from phi3lab.runtime.quantization import weight_of

__all__ = ["verify", "Verification", "Check"]

SITES_READ = ("embed", "resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post", "v", "z", "pattern", "logits")


@dataclasses.dataclass(frozen=True)
class Check:
    """One comparison: what, against what, the largest absolute difference, and its tolerance."""

    name: str
    reference: str
    max_abs: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.tolerance


@dataclasses.dataclass(frozen=True)
class Verification:
    """The result of :func:`verify`: every :class:`Check`, the model and the kernel it ran under."""

    model: str
    kernel: str
    dtype: str
    tokens: int
    checks: tuple[Check, ...]
    quantization: tuple[tuple[str, float], ...] = ()

    @property
    def quantized(self) -> bool:
        return bool(self.quantization)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_text(self) -> str:
        width = max(len(c.name) for c in self.checks)
        ref = max(len(c.reference) for c in self.checks)
        lines = [
            f"verify {self.model}: {self.tokens} tokens, {self.kernel} attention, {self.dtype}; "
            f"{'all checks pass' if self.ok else 'SOME CHECKS FAIL'}",
            f"{'site':<{width}}  {'against':<{ref}}  {'max |Δ|':>9}  {'tolerance':>9}",
        ]
        for c in self.checks:
            mark = "ok" if c.ok else "FAIL"
            lines.append(f"{c.name:<{width}}  {c.reference:<{ref}}  {c.max_abs:9.2e}  {c.tolerance:9.0e}  {mark}")
        if self.quantization:
            lines.append("quantized weights: what quantization changes, against the same checkpoint unquantized")
            for name, value in self.quantization:
                lines.append(
                    f"  {name:<{width - 2}}  {'unquantized model':<{ref}}  {value:9.2e}  (stated, not a check)"
                )
        return "\n".join(lines)

    __str__ = to_text

    def __repr__(self) -> str:
        failing = [c.name for c in self.checks if not c.ok]
        return f"Verification({self.model}, {len(self.checks)} checks, {'ok' if self.ok else f'failing {failing}'})"


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def verify(
    lab,
    conversation="What is 2 plus 3?",
    images: Sequence | None = None,
    *,
    tolerance: float | None = None,
    compare_unquantized: bool = True,
) -> Verification:
    """Compare every site the hook core reads with transformers' own outputs on one prompt.

    Args:
        lab: a :class:`~phi3lab.Lab` (or anything with ``model``, ``encode`` and ``spec``).
        conversation, images: the prompt (a short one is enough).
        tolerance: largest |Δ| allowed against the eager reference (default ``1e-4`` in float32, ``2e-2`` in
            16-bit dtypes); the decompositions and the untouched logits are held to the same.
        compare_unquantized: on a quantized model, also load the checkpoint unquantized
            (:meth:`~phi3lab.runtime.lab.Lab.unquantized`) and state how far its logits and residual stream are.
    """
    model = lab.model
    inputs = lab.encode(conversation, images)
    dtype = next(model.parameters()).dtype
    if tolerance is None:
        tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    n_layers = model.config.num_hidden_layers
    kernel = model.config._attn_implementation
    checks: list[Check] = []

    with torch.inference_mode():
        plain = model(**inputs, use_cache=False).logits
        hooks = Hooks(model)
        for site in SITES_READ:
            if site in ("embed", "logits"):
                hooks.read(site)
            else:
                hooks.read(site, "all")
        with hooks:
            hooked = model(**inputs, use_cache=False).logits
        reference = model(**inputs, use_cache=False, output_hidden_states=True)  # same kernel
        eager = _eager_reference(model, inputs)

    checks.append(Check("logits (hooks on)", "logits (hooks off)", _diff(hooked, plain), 0.0))
    checks.append(Check("logits", "output logits", _diff(hooks["logits"], reference.logits), tolerance))
    checks.append(Check("embed", "hidden_states[0]", _diff(hooks["embed"], reference.hidden_states[0]), tolerance))
    norm = language_model(model).norm
    worst: dict[str, float] = {}

    def note(name, value):
        worst[name] = max(worst.get(name, 0.0), value)

    modules = attention_modules(model)
    for layer in range(n_layers):
        pre, post = hooks["resid_pre", layer], hooks["resid_post", layer]
        mid, attn, mlp = hooks["resid_mid", layer], hooks["attn_out", layer], hooks["mlp_out", layer]
        expected = reference.hidden_states[layer + 1]
        if layer == n_layers - 1:  # transformers' last hidden state has the final norm applied
            with torch.inference_mode():
                post_compared = norm(post.to(model.device, dtype)).float().cpu()
        else:
            post_compared = post
        note("resid_post", _diff(post_compared, expected))
        note("resid_pre", _diff(pre, reference.hidden_states[layer]))
        note("pattern", _diff(hooks["pattern", layer], eager.attentions[layer]))
        note("resid_mid = resid_pre + attn_out", _diff(mid, pre + attn))
        note("resid_post = resid_mid + mlp_out", _diff(post, mid + mlp))
        if layer + 1 < n_layers:
            note("resid_pre[l+1] = resid_post[l]", _diff(hooks["resid_pre", layer + 1], post))
        attn_module = modules[layer]
        z = hooks["z", layer]  # [B, T, H, d]
        weight = weight_of(attn_module.o_proj).detach().float().cpu()  # [D, H*d], dequantized if quantized
        heads = z.shape[2]
        per_head = torch.stack([z[:, :, h] @ weight[:, h * z.shape[3] : (h + 1) * z.shape[3]].T for h in range(heads)])
        note("Σ_heads z W_O = attn_out", _diff(per_head.sum(0), attn))
        v = hooks["v", layer].repeat_interleave(attn_module.num_key_value_groups, dim=2)  # [B, T, H, d]
        pattern = hooks["pattern", layer]  # [B, H, T, T]
        note("z = pattern · v", _diff(torch.einsum("bhqk,bkhd->bqhd", pattern, v), z))
    references = {
        "resid_post": "hidden_states[l+1]",
        "resid_pre": "hidden_states[l]",
        "pattern": "eager output_attentions",
    }
    for name, value in worst.items():
        checks.append(Check(name, references.get(name, "(identity)"), value, tolerance))
    quantization = ()
    quantized = getattr(lab, "quantized_modules", None)
    if compare_unquantized and quantized is not None and quantized():
        quantization = _against_unquantized(lab, inputs, hooks, n_layers)
    return Verification(
        model=getattr(lab.spec, "name", type(model).__name__),
        kernel=kernel,
        dtype=str(dtype).removeprefix("torch."),
        tokens=inputs.num_tokens,
        checks=tuple(checks),
        quantization=quantization,
    )


def _against_unquantized(lab, inputs, hooks: Hooks, n_layers: int) -> tuple[tuple[str, float], ...]:
    """Max |Δ| of the logits and of each layer's resid_post between the quantized model and the same
    checkpoint loaded unquantized."""
    full = lab.unquantized()
    reads = Hooks(full.model).read("resid_post", "all").read("logits")
    with torch.inference_mode(), reads:
        full.model(**inputs.to(next(full.model.parameters()).device), use_cache=False)
    out = [("logits", _diff(hooks["logits"], reads["logits"]))]
    out += [
        (f"resid_post {layer}", _diff(hooks["resid_post", layer], reads["resid_post", layer]))
        for layer in range(n_layers)
    ]
    return tuple(out)


def _eager_reference(model, inputs):
    """transformers' own hidden states and attentions, under eager attention (restored afterwards)."""
    before = model.config._attn_implementation
    try:
        if before != "eager":
            model.set_attn_implementation("eager")
        return model(**inputs, use_cache=False, output_hidden_states=True, output_attentions=True)
    finally:
        if before != "eager":
            model.set_attn_implementation(before)
