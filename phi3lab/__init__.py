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

import importlib

import phi3lab.models  # noqa: F401  registers phi3_v with the Auto classes as transformers loads them

__version__ = "0.1.0"

_EXPORTS = {
    "AttentionChoice": "phi3lab.attention_backend",
    "AttentionRequestError": "phi3lab.attention_backend",
    "select_attention": "phi3lab.attention_backend",
    "hardware_report": "phi3lab.attention_backend",
    "DEFAULT_MODEL": "phi3lab.loading",
    "ModelNotAvailableError": "phi3lab.loading",
    "ModelNotFoundError": "phi3lab.loading",
    "load": "phi3lab.loading",
    "KNOWN_MODELS": "phi3lab.registry",
    "ModelSpec": "phi3lab.registry",
    "Lab": "phi3lab.lab",
    "sample_image": "phi3lab.images",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if not name.startswith("_"):  # a submodule, as `phi3lab.plotting` after a plain `import phi3lab`
        try:
            return importlib.import_module(f"phi3lab.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"phi3lab.{name}":
                raise
    raise AttributeError(f"module 'phi3lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
