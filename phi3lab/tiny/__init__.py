"""The embedded tiny Phi-3 models: their synthetic data, tokenizer, and how they are built.

Model weights cannot be downloaded in CI, in a classroom or on a reviewer's laptop, so phi3lab
ships small models with the real Phi-3 architecture in ``data/models/``.  They load through the
same code path as a real checkpoint (``config.json``, ``tokenizer.json``, ``tokenizer_config.json``,
``generation_config.json``, ``model.safetensors``).

* :mod:`phi3lab.tiny.corpus` — the synthetic chat tasks the data is drawn from.
* :mod:`phi3lab.tiny.tokenizer` — the project's own small BPE tokenizer with Phi-3's special tokens.
* :mod:`phi3lab.tiny.build` — writes a model folder (``python -m phi3lab.tiny.build``).
"""

EMBEDDED = {
    "phi3lab-tiny": "phi3lab-tiny",
    "tiny": "phi3lab-tiny",
}
