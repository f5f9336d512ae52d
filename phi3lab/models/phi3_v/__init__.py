"""Native Phi-3-vision and Phi-3.5-vision for transformers 5, without remote code."""

from phi3lab.models.phi3_v.configuration import Phi3VConfig
from phi3lab.models.phi3_v.image_processing import Phi3VImageProcessor
from phi3lab.models.phi3_v.modeling import ImageOrderError, Phi3ImageEmbedding, Phi3VForCausalLM, Phi3VModel
from phi3lab.models.phi3_v.processing import Phi3VProcessor

__all__ = ["Phi3VConfig", "Phi3VForCausalLM", "Phi3VModel", "Phi3ImageEmbedding", "Phi3VImageProcessor",
           "Phi3VProcessor", "ImageOrderError"]
