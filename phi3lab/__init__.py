"""phi3lab: a Jupyter-first research workbench for Phi-3 and Phi-3-vision.

    import phi3lab
    lab = phi3lab.load("tiny")           # the embedded model; works offline
    print(lab.info())                    # what was loaded, attention choice and why
    print(phi3lab.hardware_report())     # this machine and the choice per dtype
    lab.chat("What is 2 plus 3?")        # streams the answer
"""

import phi3lab.models  # noqa: F401  registers Phi-3-vision (phi3_v) with the transformers Auto classes
from phi3lab.attention_backend import AttentionChoice, AttentionRequestError, select_attention
from phi3lab.hardware import hardware_report
from phi3lab.lab import Lab
from phi3lab.loading import DEFAULT_MODEL, ModelNotAvailableError, ModelNotFoundError, load
from phi3lab.registry import KNOWN_MODELS, ModelSpec

__version__ = "0.1.0"

__all__ = [
    "AttentionChoice",
    "AttentionRequestError",
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "Lab",
    "ModelNotAvailableError",
    "ModelNotFoundError",
    "ModelSpec",
    "hardware_report",
    "load",
    "select_attention",
]
