"""Native Phi-3-vision and Phi-3.5-vision for transformers 5, without remote code.

The package stands alone: it imports nothing from the rest of phi3lab, so it can be copied or
registered anywhere::

    from phi3lab.models import phi3_v
    phi3_v.register()   # AutoConfig, AutoModelForCausalLM, AutoImageProcessor, AutoProcessor

(``import phi3lab`` does this by itself, each part when transformers' Auto class is first imported.)

* :mod:`~phi3lab.models.phi3_v.hd` — the HD transform's constants (crop size, cells, CLIP mean and
  std, default and largest ``num_crops``), its size rule and the image-token formula;
* :mod:`~phi3lab.models.phi3_v.images` — how files, PIL modes and arrays become 8-bit RGB;
* :mod:`~phi3lab.models.phi3_v.prompting` — the prompt → ``input_ids`` rule and the image-tag check;
* :mod:`~phi3lab.models.phi3_v.configuration`, :mod:`~phi3lab.models.phi3_v.image_processing`,
  :mod:`~phi3lab.models.phi3_v.processing`, :mod:`~phi3lab.models.phi3_v.modeling` — the
  transformers classes.

The classes below are imported on first use (the modeling code costs seconds to import).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Phi3VConfig": "configuration",
    "Phi3VForCausalLM": "modeling",
    "Phi3VModel": "modeling",
    "Phi3ImageEmbedding": "modeling",
    "ImageOrderError": "modeling",
    "Phi3VImageProcessor": "image_processing",
    "Phi3VProcessor": "processing",
    "ChatFormatError": "prompting",
}

__all__ = [*_EXPORTS, "register", "register_config", "register_model", "register_image_processor", "register_processor"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def register_config() -> None:
    """``AutoConfig`` reads ``model_type: "phi3_v"`` folders as :class:`Phi3VConfig`."""
    from transformers import AutoConfig

    from phi3lab.models.phi3_v.configuration import Phi3VConfig

    AutoConfig.register("phi3_v", Phi3VConfig, exist_ok=True)


def register_model() -> None:
    """``AutoModelForCausalLM`` builds :class:`Phi3VForCausalLM` for a :class:`Phi3VConfig`."""
    from transformers import AutoModelForCausalLM

    from phi3lab.models.phi3_v.configuration import Phi3VConfig
    from phi3lab.models.phi3_v.modeling import Phi3VForCausalLM

    AutoModelForCausalLM.register(Phi3VConfig, Phi3VForCausalLM, exist_ok=True)


def register_image_processor() -> None:
    """``AutoImageProcessor`` finds :class:`Phi3VImageProcessor` (by config and by name)."""
    from transformers import AutoImageProcessor

    from phi3lab.models.phi3_v.configuration import Phi3VConfig
    from phi3lab.models.phi3_v.image_processing import Phi3VImageProcessor

    AutoImageProcessor.register(Phi3VConfig, slow_image_processor_class=Phi3VImageProcessor, exist_ok=True)


def register_processor() -> None:
    """``AutoProcessor`` finds :class:`Phi3VProcessor` (by config and by name)."""
    from transformers import AutoProcessor

    from phi3lab.models.phi3_v.configuration import Phi3VConfig
    from phi3lab.models.phi3_v.processing import Phi3VProcessor

    AutoProcessor.register(Phi3VConfig, Phi3VProcessor, exist_ok=True)


def register() -> None:
    """Register all four with transformers' Auto classes now (``trust_remote_code`` is never needed)."""
    register_config()
    register_model()
    register_image_processor()
    register_processor()
