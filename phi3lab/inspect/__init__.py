"""Inspect: looking inside a running model and editing what flows through it — one hook core, named sites.

* :mod:`~phi3lab.inspect.sites` — the vocabulary: ``embed``, ``resid_pre``, ``attn_out``, ``resid_mid``,
  ``mlp_out``, ``resid_post``, ``q``, ``k``, ``v``, ``z``, ``pattern``, ``logits`` (and Phi-3-vision's
  ``image_embeds``, ``clip``), and :class:`Positions`;
* :mod:`~phi3lab.inspect.hooks` — :class:`Hooks`, the one owner of every hook phi3lab puts on a model;
* :mod:`~phi3lab.inspect.kernel` — what an attention layer computes, rebuilt from what its hooks see;
* :mod:`~phi3lab.inspect.capture` — attention rows under any kernel (the ``pattern`` site);
* :mod:`~phi3lab.inspect.cache` — :meth:`Lab.run_with_cache` / ``generate_with_cache`` and the :class:`Cache`;
* :mod:`~phi3lab.inspect.maps` — rollout, head summaries and attention on the picture;
* :mod:`~phi3lab.inspect.lens` — the logit lens;
* :mod:`~phi3lab.inspect.interventions` — shortcuts for editing the residual stream and single heads;
* :mod:`~phi3lab.inspect.patching` — activation patching over sites × layers × positions (× heads);
* :mod:`~phi3lab.inspect.reuse` — forwards that start at the first edited position, the keys and values
  before it from one clean run (patching, causal maps and attribution run this way);
* :mod:`~phi3lab.inspect.verify` — ``lab.verify()``: every site against transformers' own outputs;
* :mod:`~phi3lab.inspect.memory` — the memory limit every read is checked against.
"""

from phi3lab._lazy import lazy_attributes as _lazy_attributes

_EXPORTS = {
    "Hooks": "phi3lab.inspect.hooks",
    "SITES": "phi3lab.inspect.sites",
    "Positions": "phi3lab.inspect.sites",
    "Cache": "phi3lab.inspect.cache",
    "capture": "phi3lab.inspect.capture",
    "edit_residual": "phi3lab.inspect.interventions",
    "edit_heads": "phi3lab.inspect.interventions",
    "patch": "phi3lab.inspect.patching",
    "verify": "phi3lab.inspect.verify",
    "MemoryLimitError": "phi3lab.inspect.memory",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_attributes(__name__, _EXPORTS, submodules=True)
