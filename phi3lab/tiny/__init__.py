"""The embedded tiny Phi-3 models: their synthetic data, tokenizer, and how they are built.

Model weights cannot be downloaded in CI, in a classroom or on a reviewer's laptop, so phi3lab
ships small models with the real Phi-3 architecture in ``data/models/``.  They load through the
same code path as a real checkpoint (``config.json``, ``tokenizer.json``, ``tokenizer_config.json``,
``generation_config.json``, ``model.safetensors``).

* :mod:`phi3lab.tiny.corpus` — the synthetic chat tasks (text, safety slice) and their splits.
* :mod:`phi3lab.tiny.vision_data` — synthetic pictures (shapes, bar charts, words) and questions.
* :mod:`phi3lab.tiny.tokenizer` — the project's own small BPE tokenizer with Phi-3's special tokens.
* :mod:`phi3lab.tiny.build` — the folders' configs, tokenizer files and model cards.
* :mod:`phi3lab.tiny.optim` — the optimiser loop both trainings share.
* :mod:`phi3lab.tiny.train` — ``python -m phi3lab.tiny.train text|vision`` rebuilds a model.
* :mod:`phi3lab.tiny.evaluate` — ``python -m phi3lab.tiny.evaluate`` reports held-out accuracy.

None of this is imported by ``import phi3lab`` or ``phi3lab.load("tiny")``: loading reads the
folders like any checkpoint, and the embedded names live in :data:`phi3lab.runtime.registry.EMBEDDED`.
"""
