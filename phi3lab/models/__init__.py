"""Native model implementations, registered with transformers' Auto classes on import.

After ``import phi3lab``, ``AutoConfig``, ``AutoModelForCausalLM``, ``AutoImageProcessor`` and
``AutoProcessor`` ``.from_pretrained(folder)`` work for Phi-3-vision folders (``model_type:
"phi3_v"``) with ``trust_remote_code=False``: the ``auto_map`` entries naming remote files are
never followed.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModelForCausalLM, AutoProcessor

from phi3lab.models.phi3_v import Phi3VConfig, Phi3VForCausalLM, Phi3VImageProcessor, Phi3VProcessor

__all__ = ["Phi3VConfig", "Phi3VForCausalLM", "Phi3VImageProcessor", "Phi3VProcessor"]


def _register() -> None:
    AutoConfig.register("phi3_v", Phi3VConfig, exist_ok=True)
    AutoModelForCausalLM.register(Phi3VConfig, Phi3VForCausalLM, exist_ok=True)
    AutoImageProcessor.register(Phi3VConfig, slow_image_processor_class=Phi3VImageProcessor, exist_ok=True)
    AutoProcessor.register(Phi3VConfig, Phi3VProcessor, exist_ok=True)


_register()
