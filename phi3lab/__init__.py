"""phi3lab: a Jupyter-first research workbench for Phi-3 and Phi-3-vision.

    import phi3lab
    lab = phi3lab.load("tiny")           # the embedded model; works offline
    print(lab.info())                    # what was loaded, attention choice and why
    print(phi3lab.hardware_report())     # this machine and the choice per dtype
    lab.chat("What is 2 plus 3?")        # streams the answer

The names below are imported on first use, so ``import phi3lab`` itself is quick (torch and
transformers load when a name needs them; ``benchmarks/import_time.py`` measures it).  Phi-3-vision
(``phi3_v``) is registered with transformers' Auto classes as they are imported
(:mod:`phi3lab.models`).
"""

from __future__ import annotations

import phi3lab.models  # noqa: F401  registers phi3_v with the Auto classes as transformers loads them
from phi3lab._lazy import lazy_attributes as _lazy_attributes

__version__ = "0.1.0"

_EXPORTS = {
    "AttentionChoice": "phi3lab.runtime.attention_backend",
    "AttentionRequestError": "phi3lab.runtime.attention_backend",
    "select_attention": "phi3lab.runtime.attention_backend",
    "hardware_report": "phi3lab.runtime.attention_backend",
    "DEFAULT_MODEL": "phi3lab.runtime.loading",
    "ModelNotAvailableError": "phi3lab.runtime.loading",
    "ModelNotFoundError": "phi3lab.runtime.loading",
    "load": "phi3lab.runtime.loading",
    "KNOWN_MODELS": "phi3lab.runtime.registry",
    "ModelSpec": "phi3lab.runtime.registry",
    "Lab": "phi3lab.runtime.lab",
    "sample_image": "phi3lab.prompts.images",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_attributes(__name__, _EXPORTS, submodules=True)
