"""Runtime: what this machine can do, which kernel, dtype and device to use and why, loading a
checkpoint, the :class:`~phi3lab.runtime.lab.Lab` it gives, and generation.

* :mod:`~phi3lab.runtime.hardware` — capability probes (CUDA, bf16, flash-attn), no version checks;
* :mod:`~phi3lab.runtime.attention_backend` — :func:`select_attention`, an :class:`AttentionChoice` with its reason;
* :mod:`~phi3lab.runtime.registry` — the facts phi3lab knows per checkpoint (:class:`ModelSpec`);
* :mod:`~phi3lab.runtime.loading` — :func:`load`: resolve, check the files, build the model;
* :mod:`~phi3lab.runtime.lab` — :class:`Lab`, the loaded model with its tokenizer or processor;
* :mod:`~phi3lab.runtime.generation` — chat, sessions and batches, streamed and stopping where Phi-3 stops.
"""

from phi3lab._lazy import lazy_attributes as _lazy_attributes

__getattr__, __dir__ = _lazy_attributes(__name__, {}, submodules=True)
