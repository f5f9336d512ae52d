"""Native Phi-3-vision: transformers' own Phi-3 language model and CLIP layers, plus the HD glue.

The module tree uses the official checkpoint's key names, so the published weights load strictly
(592 keys, none missing, none unexpected)::

    model.embed_tokens / model.layers.* / model.norm / lm_head            Phi-3 language model
    model.vision_embed_tokens.img_processor.vision_model.*                CLIP ViT-L/14-336 trunk
    model.vision_embed_tokens.glb_GN   [1, 1, 4096]                       global-view separator
    model.vision_embed_tokens.sub_GN   [1, 1, 1, 4096]                    end-of-row separator
    model.vision_embed_tokens.img_projection.{0,2}                        Linear → GELU → Linear

For every image the glue (PHI3_SPEC.md §2.4) takes CLIP's patch features from the second-to-last
layer, merges each 2×2 block into one 4·C vector (12×12 per crop), stitches the crops into one
grid read row by row across the whole image, ends every row with ``sub_GN``, then appends
``glb_GN`` and the 12×13 global view, and projects to the language model's width.

Differences from the official remote code, all deliberate:

* the caller's ``input_ids`` are never modified (the official code clamps them in place);
* image positions are ids < 0 (the processor's ``-k`` runs) *or* ``config.image_token_id``;
* features are placed run by run in prompt order, as the official model does — and a prompt whose
  runs are out of order or repeated (``<|image_2|>`` before ``<|image_1|>``) is refused with a
  clear error instead of having features silently put in the wrong place.  With
  ``config.image_order = "official"`` (and the processor's ``image_order="official"``) the
  official behaviour is reproduced exactly, misplacement included, for parity checks;
* eager, sdpa and flash-attention 2 work in both towers; the vision tower runs at prefill only.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Phi3ForCausalLM, Phi3Model
from transformers import initialization as init
from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPVisionEmbeddings
from transformers.models.phi3.modeling_phi3 import Phi3PreTrainedModel

from phi3lab.errors import Phi3LabError
from phi3lab.models.phi3_v.configuration import Phi3VConfig
from phi3lab.models.phi3_v.hd import CELLS

__all__ = ["Phi3VForCausalLM", "Phi3VModel", "Phi3ImageEmbedding", "ImageOrderError"]


class ImageOrderError(Phi3LabError, ValueError):
    """Image placeholder runs that would put image features in the wrong place."""


class CLIPTrunk(nn.Module):
    """CLIP's vision transformer under the checkpoint's names (``embeddings``, ``pre_layrnorm``,
    ``encoder``, ``post_layernorm``); returns the patch features of a chosen layer."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # in the checkpoint, unused

    def forward(self, pixel_values: torch.Tensor, layer_idx: int = -2) -> torch.Tensor:
        """Hidden states after ``len(layers) + 1 + layer_idx`` encoder layers (``hidden_states[layer_idx]``)."""
        hidden = self.pre_layrnorm(self.embeddings(pixel_values))
        depth = len(self.encoder.layers) + 1 + layer_idx if layer_idx < 0 else layer_idx
        for layer in self.encoder.layers[:depth]:
            hidden = layer(hidden, None)
            if isinstance(hidden, tuple):  # older transformers return (hidden, attn)
                hidden = hidden[0]
        return hidden


class _Container(nn.Module):
    """``img_processor`` in the checkpoint is a wrapper whose only child is ``vision_model``."""

    def __init__(self, vision_model: nn.Module):
        super().__init__()
        self.vision_model = vision_model


class Phi3ImageEmbedding(nn.Module):
    """CLIP features of each HD crop → merged, separated, projected image tokens."""

    def __init__(self, config: Phi3VConfig):
        super().__init__()
        vision = config.vision_config
        dim = vision.hidden_size * 4
        self.layer_idx = int(config.img_processor.get("layer_idx", -2))
        self.type_feature = config.img_processor.get("type_feature", "patch")
        self.img_processor = _Container(CLIPTrunk(vision))
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, dim))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.img_projection = nn.Sequential(
            nn.Linear(dim, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)
        )
        self.grid = vision.image_size // vision.patch_size  # 24 patches per side
        self.share_identical_views = True  # see views(); False runs CLIP on every crop of the grid

    def crop_features(self, crops: torch.Tensor) -> torch.Tensor:
        """``[N, 3, S, S]`` crops → 2×2-merged CLIP features ``[N, 12, 12, 4C]``."""
        trunk = self.img_processor.vision_model
        dtype = trunk.embeddings.patch_embedding.weight.dtype
        hidden = trunk(crops.to(dtype), self.layer_idx)
        if self.type_feature == "patch":
            hidden = hidden[:, 1:]  # drop CLS
        g, c = self.grid, hidden.shape[-1]
        # [N, g, g, C] → [N, g/2, 2, g/2, 2, C] → [N, g/2, g/2, (dy, dx, C)]
        return hidden.reshape(-1, g // 2, 2, g // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, g // 2, g // 2, 4 * c)

    @staticmethod
    def views(
        pixel_values: torch.Tensor, grids: list[tuple[int, int]], share: bool = True
    ) -> tuple[list[tuple[int, int]], list[list[int]]]:
        """Which crops CLIP must see: ``(crops, where)`` where ``crops`` lists ``(image, crop)`` pairs
        to run and ``where[i]`` gives, for image ``i``'s global view and each sub-crop, its row in
        that list.

        Crops past an image's ``rows × cols`` grid are batch padding and are skipped; with ``share``,
        a picture that fits a single crop has a global view made of the same pixels as the crop (the
        HD canvas is already 336 × 336), so CLIP runs on it once and both views share the features."""
        crops, where = [], []
        for i, (rows, cols) in enumerate(grids):
            rows_of_image = []
            for c in range(1 + rows * cols):
                if share and c == 1 and rows * cols == 1 and torch.equal(pixel_values[i, 1], pixel_values[i, 0]):
                    rows_of_image.append(rows_of_image[0])
                else:
                    rows_of_image.append(len(crops))
                    crops.append((i, c))
            where.append(rows_of_image)
        return crops, where

    def _with_row_ends(self, grid: torch.Tensor) -> torch.Tensor:
        """``[rows, cols, D]`` → ``[rows · (cols + 1), D]`` with ``sub_GN`` closing every row."""
        ends = self.sub_GN.reshape(1, 1, -1).expand(grid.shape[0], 1, -1).to(grid.dtype)
        return torch.cat([grid, ends], dim=1).reshape(-1, grid.shape[-1])

    def grids(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> list[tuple[int, int]]:
        """Each image's ``(rows, cols)`` of crops from ``image_sizes``, checked against ``pixel_values``.

        Raises:
            ValueError: shapes that do not belong together, or a canvas that is not a multiple of
                the crop size or needs more crops than ``pixel_values`` holds; the message says
                to pass the processor's own ``pixel_values`` and ``image_sizes`` together.
        """
        side = self.img_processor.vision_model.config.image_size
        fix = "pass the pixel_values and image_sizes that the processor returned together"
        sizes = torch.as_tensor(image_sizes)
        if pixel_values.dim() != 5 or tuple(pixel_values.shape[2:]) != (3, side, side):
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}, but the model takes "
                f"[images, num_crops + 1, 3, {side}, {side}]; {fix}"
            )
        if sizes.dim() != 2 or sizes.shape != (pixel_values.shape[0], 2):
            raise ValueError(
                f"image_sizes has shape {tuple(sizes.shape)}, but pixel_values holds {pixel_values.shape[0]} "
                f"image(s), so it must be [{pixel_values.shape[0]}, 2] (one (height, width) per image); {fix}"
            )
        slots = pixel_values.shape[1] - 1
        grids = []
        for i, (h, w) in enumerate(sizes.tolist()):
            if h < side or w < side or h % side or w % side:
                raise ValueError(
                    f"image_sizes[{i}] is ({h}, {w}), not a padded HD canvas (both sides multiples of {side}); {fix}"
                )
            rows, cols = int(h) // side, int(w) // side
            if rows * cols > slots:
                raise ValueError(
                    f"image_sizes[{i}] is ({h}, {w}): {rows}×{cols} = {rows * cols} crops, but pixel_values has "
                    f"only {slots} crop slot(s) per image; {fix}"
                )
            grids.append((rows, cols))
        return grids

    def forward(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> list[torch.Tensor]:
        """Projected image tokens, one ``[tokens_i, hidden]`` tensor per image."""
        grids = self.grids(pixel_values, image_sizes)
        crops, where = self.views(pixel_values, grids, self.share_identical_views)
        feats = self.crop_features(torch.stack([pixel_values[i, c] for i, c in crops]))
        out = []
        for (rows, cols), rows_of_image in zip(grids, where):
            sub = feats[rows_of_image[1:]].reshape(rows, cols, CELLS, CELLS, -1)
            sub = sub.permute(0, 2, 1, 3, 4).reshape(rows * CELLS, cols * CELLS, -1)
            glb = feats[rows_of_image[0]]
            tokens = torch.cat(
                [self._with_row_ends(sub), self.glb_GN.reshape(1, -1).to(sub.dtype), self._with_row_ends(glb)]
            )
            proj_dtype = self.img_projection[0].weight.dtype
            out.append(self.img_projection(tokens.to(proj_dtype)))
        return out


class _VisionInit:
    """Weight initialisation for the parts Phi-3's own ``_init_weights`` does not know: CLIP's
    class embedding and position-id buffer (a non-persistent buffer, absent from checkpoints, that
    must be rebuilt after loading) and the zero-initialised separators."""

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CLIPVisionEmbeddings):
            init.normal_(module.class_embedding, mean=0.0, std=module.embed_dim**-0.5)
            init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, Phi3ImageEmbedding):
            init.zeros_(module.glb_GN)
            init.zeros_(module.sub_GN)


class Phi3VModel(_VisionInit, Phi3Model):
    """Phi-3's decoder whose input embeddings carry image features at the image positions."""

    config_class = Phi3VConfig

    def __init__(self, config: Phi3VConfig):
        super().__init__(config)
        self.vision_embed_tokens = Phi3ImageEmbedding(config)
        self.post_init()

    def image_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of image placeholder positions."""
        mask = input_ids < 0
        if self.config.image_token_id is not None:
            mask = mask | (input_ids == self.config.image_token_id)
        return mask

    def embed(self, input_ids: torch.Tensor, pixel_values=None, image_sizes=None) -> torch.Tensor:
        """Token embeddings with image features written into the image positions.

        The caller's ``input_ids`` are not modified.
        """
        is_image = self.image_positions(input_ids)
        embeds = self.embed_tokens(torch.where(is_image, torch.zeros_like(input_ids), input_ids))
        if not bool(is_image.any()):
            if pixel_values is not None:
                raise ValueError(
                    "pixel_values were given but input_ids has no image positions (ids < 0, or "
                    f"config.image_token_id = {self.config.image_token_id}), so the pictures would be ignored; build "
                    "input_ids with the processor from a prompt with <|image_N|> tags, and check that "
                    "config.image_token_id is the tokenizer's <|image|> id when using image_ids='token'"
                )
            return embeds
        if pixel_values is None or image_sizes is None:
            raise ValueError(
                f"input_ids has {int(is_image.sum())} image positions but no pixel_values/image_sizes were given; "
                "pass the processor's full output (model(**processor(prompt, images)))"
            )
        features = self.vision_embed_tokens(pixel_values, image_sizes)
        _check_runs(input_ids, is_image, [f.shape[0] for f in features], strict=self.config.image_order == "strict")
        embeds = embeds.clone()
        embeds[is_image] = torch.cat(features).to(embeds.dtype)
        return embeds

    def forward(self, input_ids=None, pixel_values=None, image_sizes=None, inputs_embeds=None, **kwargs):
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed(input_ids, pixel_values, image_sizes)
        return super().forward(input_ids=None, inputs_embeds=inputs_embeds, **kwargs)


def _runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """``(value, length)`` runs of one row's image ids."""
    values, counts = torch.unique_consecutive(row, return_counts=True)
    return list(zip(values.tolist(), counts.tolist()))


def _check_runs(input_ids: torch.Tensor, is_image: torch.Tensor, lengths: list[int], strict: bool = True) -> None:
    """Refuse image runs that the order-based placement would misplace (all checks but the count
    are skipped with ``image_order="official"``)."""
    total = int(is_image.sum())
    if total != sum(lengths):
        raise ImageOrderError(
            f"the prompt has {total} image positions but the images give {sum(lengths)} features "
            f"({' + '.join(map(str, lengths))}); build input_ids with the processor from the same images"
        )
    if not strict:
        return
    k = 0
    for b in range(input_ids.shape[0]):
        row = input_ids[b][is_image[b]]
        if not bool((row < 0).all()):
            continue  # image_token_id placeholders carry no image number: order is all there is
        for expected, (value, length) in enumerate(_runs(row), start=1):
            if value != -expected or length != lengths[k]:
                raise ImageOrderError(
                    f"row {b}: the {expected}. image run is <|image_{-value}|> with {length} positions, but the "
                    f"model fills runs with images in order (image {expected} has {lengths[k]} tokens); put the tags "
                    "in increasing order, each once, as the processor requires"
                )
            k += 1


class Phi3VForCausalLM(_VisionInit, Phi3ForCausalLM):
    """Phi-3-vision for generation: ``model(input_ids, pixel_values=..., image_sizes=...)``."""

    config_class = Phi3VConfig

    def __init__(self, config: Phi3VConfig):
        Phi3PreTrainedModel.__init__(self, config)
        self.model = Phi3VModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs,
    ):
        """As :meth:`transformers.Phi3ForCausalLM.forward`, plus ``pixel_values`` and ``image_sizes``
        from :class:`~phi3lab.models.phi3_v.Phi3VProcessor`; ``input_ids`` may hold image positions."""
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.model.embed(input_ids, pixel_values, image_sizes)
        return super().forward(
            input_ids=None,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def prepare_inputs_for_generation(
        self, input_ids, past_key_values=None, pixel_values=None, image_sizes=None, **kwargs
    ):
        inputs = super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values, **kwargs)
        ids = inputs.get("input_ids")
        if ids is not None and bool(self.model.image_positions(ids).any()):  # prefill: the vision tower runs once
            inputs["pixel_values"], inputs["image_sizes"] = pixel_values, image_sizes
        return inputs
