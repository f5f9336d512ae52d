"""``Phi3VConfig``: reads the official Phi-3-vision ``config.json`` unchanged.

The file names rope type ``"su"`` (transformers 5 calls it ``"longrope"`` and, on 5.23, raises a
KeyError before its own rename runs), carries ``embd_layer`` and ``img_processor`` dicts, an
``auto_map`` to remote code that phi3lab ignores, and ``_attn_implementation:
"flash_attention_2"``, which phi3lab also ignores: the kernel is chosen when loading.  The CLIP tower's numbers come from
``img_processor.vision_config`` when present (the shrunk reference fixture, the embedded tiny
model) and are CLIP ViT-L/14-336's otherwise, as the official code hard-codes them.
"""

from __future__ import annotations

from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, Phi3Config

__all__ = ["Phi3VConfig", "CLIP_VIT_L14_336"]

CLIP_VIT_L14_336 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    num_channels=3,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    dropout=0.0,
    projection_dim=768,
)
DEFAULT_EMBD_LAYER = dict(
    embedding_cls="image",
    hd_transform_order="sub_glb",
    projection_cls="mlp",
    use_hd_transform=True,
    with_learnable_separator=True,
)
DEFAULT_IMG_PROCESSOR = dict(
    name="clip_vision_model", model_name="openai/clip-vit-large-patch14-336", image_dim_out=1024, num_img_tokens=144
)


def _su_to_longrope(rope: dict | None, factor: float) -> dict | None:
    """Rename rope type "su" to "longrope" and state the scaling factor (max / original positions)."""
    if not isinstance(rope, dict):
        return rope
    kind = rope.get("rope_type", rope.get("type"))
    if kind not in ("su", "longrope"):
        return rope
    rope = {k: v for k, v in rope.items() if k != "type"}
    rope["rope_type"] = "longrope"
    rope.setdefault("factor", factor)  # the value transformers would derive; stating it avoids a warning
    return rope


@strict
class Phi3VConfig(Phi3Config):
    """Phi-3-vision: a Phi-3 language model plus a CLIP tower and the HD image-embedding glue.

    Attributes beyond :class:`~transformers.Phi3Config`:
        embd_layer: the official ``embd_layer`` dict (HD transform, ``sub_glb`` order, MLP projector).
        img_processor: the official ``img_processor`` dict (CLIP name, feature size, 144 tokens/crop).
        vision_config: the CLIP tower's config, built from ``img_processor.vision_config`` or
            CLIP ViT-L/14-336.
        image_token_id: an id that also marks image positions (``<|image|>``), besides negative ids.
        image_order: ``"strict"`` (default) refuses image runs out of tag order; ``"official"``
            fills runs with images in order regardless, reproducing the official model exactly —
            including its misplacement of swapped tags (for parity checks only).

    ``Phi3VConfig.on_first_instance`` holds functions called once, after the first config is made
    (then forgotten): :mod:`phi3lab.models` registers the model class with
    ``AutoModelForCausalLM`` there, so its import cost is paid only by those who build a model.
    """

    model_type = "phi3_v"
    sub_configs_defaults = {}
    on_first_instance: ClassVar[list] = []

    embd_layer: dict | None = None
    img_processor: dict | None = None
    vision_config: CLIPVisionConfig | dict | None = None
    image_token_id: int | None = 32044
    image_order: str = "strict"

    def __post_init__(self, **kwargs):
        self.embd_layer = {**DEFAULT_EMBD_LAYER, **(self.embd_layer or {})}
        self.img_processor = {**DEFAULT_IMG_PROCESSOR, **(self.img_processor or {})}
        if self.image_order not in ("strict", "official"):
            raise ValueError(f"image_order must be 'strict' or 'official', got {self.image_order!r}")
        order = self.embd_layer.get("hd_transform_order")
        if order != "sub_glb":
            raise ValueError(f"embd_layer.hd_transform_order is {order!r}; Phi-3-vision checkpoints use 'sub_glb'")
        if not isinstance(self.vision_config, CLIPVisionConfig):
            values = self.vision_config or self.img_processor.get("vision_config") or CLIP_VIT_L14_336
            self.vision_config = CLIPVisionConfig(**{**CLIP_VIT_L14_336, **values})
        kwargs.pop("auto_map", None)  # remote code is never used
        # The official file forces "flash_attention_2", which breaks every machine without it;
        # the kernel is chosen at load time instead (phi3lab.select_attention).
        if kwargs.get("_attn_implementation") == "flash_attention_2":
            kwargs.pop("_attn_implementation")
        factor = self.max_position_embeddings / self.original_max_position_embeddings
        self.rope_parameters = _su_to_longrope(self.rope_parameters, factor)
        if "rope_scaling" in kwargs:
            kwargs["rope_scaling"] = _su_to_longrope(kwargs["rope_scaling"], factor)
        super().__post_init__(**kwargs)
        while Phi3VConfig.on_first_instance:
            Phi3VConfig.on_first_instance.pop(0)()

    @property
    def sub_configs(self):  # keep the CLIP config's attention implementation in step with ours
        return {"vision_config": CLIPVisionConfig}

    def to_dict(self):
        out = super().to_dict()
        if isinstance(out.get("vision_config"), CLIPVisionConfig):
            out["vision_config"] = out["vision_config"].to_dict()
        return out
