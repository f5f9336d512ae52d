"""Runtime: what this machine can do, which kernel, dtype and device to use and why, loading a
checkpoint, the :class:`~phi3lab.runtime.lab.Lab` it gives, and generation.

* :mod:`~phi3lab.runtime.hardware` — capability probes (CUDA, bf16, flash-attn, quantization backends) and
  the available memory of a device, no version checks;
* :mod:`~phi3lab.runtime.attention_backend` — :func:`select_attention`, an :class:`AttentionChoice` with its reason;
* :mod:`~phi3lab.runtime.registry` — the facts phi3lab knows per checkpoint (:class:`ModelSpec`, :class:`Architecture`);
* :mod:`~phi3lab.runtime.memory` — weights + activations of the intended use against the available memory:
  the dtype and weight quantization, a :class:`MemoryPlan` with its reason;
* :mod:`~phi3lab.runtime.quantization` — torchao int8 / bitsandbytes NF4-int8 while loading, same module names;
* :mod:`~phi3lab.runtime.sources` — an embedded name, a local folder or a hub id → a folder;
* :mod:`~phi3lab.runtime.checkpoint` — the folder's files checked against each other (:class:`ModelFilesError`);
* :mod:`~phi3lab.runtime.device_map` — spreading a checkpoint over GPUs and the CPU;
* :mod:`~phi3lab.runtime.loading` — :func:`load`: resolve, check, plan, build;
* :mod:`~phi3lab.runtime.standins` — random-weight stand-ins of the family in the official layout;
* :mod:`~phi3lab.runtime.lab` — :class:`Lab`, the loaded model with its tokenizer or processor;
* :mod:`~phi3lab.runtime.generation` — chat, sessions and batches, streamed and stopping where Phi-3 stops.
"""

from phi3lab._lazy import lazy_attributes as _lazy_attributes

__getattr__, __dir__ = _lazy_attributes(__name__, {}, submodules=True)
