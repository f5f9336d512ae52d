"""Phi-3-vision's config, module tree and Auto registration, and the HD geometry of §5.1."""

import json
import subprocess
import sys

import pytest
import torch

import phi3lab
from phi3lab.models.phi3_v import Phi3VConfig, Phi3VForCausalLM
from phi3lab.prompts.patches import hd_layout, num_image_tokens


def official_config(fixture_model) -> dict:
    """The official config.json: the fixture's file with the real model's sizes and no vision_config."""
    config = json.loads((fixture_model / "config.json").read_text())
    config.update(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        _attn_implementation="flash_attention_2",
    )
    config["img_processor"] = {k: v for k, v in config["img_processor"].items() if k != "vision_config"}
    config["img_processor"]["image_dim_out"] = 1024
    return config


def official_keys() -> dict[str, tuple]:
    """The 592 tensors of the official checkpoint with their shapes (PHI3_SPEC.md §2.9)."""
    keys = {"model.embed_tokens.weight": (32064, 3072), "model.norm.weight": (3072,), "lm_head.weight": (32064, 3072)}
    for i in range(32):
        p = f"model.layers.{i}."
        keys |= {
            p + "self_attn.qkv_proj.weight": (9216, 3072),
            p + "self_attn.o_proj.weight": (3072, 3072),
            p + "mlp.gate_up_proj.weight": (16384, 3072),
            p + "mlp.down_proj.weight": (3072, 8192),
            p + "input_layernorm.weight": (3072,),
            p + "post_attention_layernorm.weight": (3072,),
        }
    v = "model.vision_embed_tokens."
    keys |= {
        v + "glb_GN": (1, 1, 4096),
        v + "sub_GN": (1, 1, 1, 4096),
        v + "img_projection.0.weight": (3072, 4096),
        v + "img_projection.0.bias": (3072,),
        v + "img_projection.2.weight": (3072, 3072),
        v + "img_projection.2.bias": (3072,),
    }
    c = v + "img_processor.vision_model."
    keys |= {
        c + "embeddings.class_embedding": (1024,),
        c + "embeddings.patch_embedding.weight": (1024, 3, 14, 14),
        c + "embeddings.position_embedding.weight": (577, 1024),
        c + "pre_layrnorm.weight": (1024,),
        c + "pre_layrnorm.bias": (1024,),
        c + "post_layernorm.weight": (1024,),
        c + "post_layernorm.bias": (1024,),
    }
    for i in range(24):
        p = f"{c}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            keys |= {p + f"self_attn.{proj}.weight": (1024, 1024), p + f"self_attn.{proj}.bias": (1024,)}
        keys |= {
            p + "layer_norm1.weight": (1024,),
            p + "layer_norm1.bias": (1024,),
            p + "layer_norm2.weight": (1024,),
            p + "layer_norm2.bias": (1024,),
            p + "mlp.fc1.weight": (4096, 1024),
            p + "mlp.fc1.bias": (4096,),
            p + "mlp.fc2.weight": (1024, 4096),
            p + "mlp.fc2.bias": (1024,),
        }
    return keys


@pytest.fixture(scope="module")
def fixture_model(reference):
    return reference / "phi3v-tiny-random" / "model"


def test_official_config_reads_unchanged(fixture_model):
    config = Phi3VConfig(**official_config(fixture_model))
    assert config.rope_parameters["rope_type"] == "longrope"
    assert config.rope_parameters["original_max_position_embeddings"] == 4096
    assert len(config.rope_parameters["long_factor"]) == 48
    assert config.vision_config.hidden_size == 1024 and config.vision_config.num_hidden_layers == 24
    assert config.vision_config.hidden_act == "quick_gelu"


def test_official_key_set_loads_strictly_on_meta(fixture_model):
    config = Phi3VConfig(**official_config(fixture_model))
    with torch.device("meta"):
        model = Phi3VForCausalLM(config)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = official_keys()
    assert len(expected) == 592
    assert sorted(set(expected) - set(state)) == [] and sorted(set(state) - set(expected)) == []
    assert state == expected
    assert sum(p.numel() for p in model.parameters()) == 4_146_621_440


def test_fixture_loads_with_no_missing_or_unexpected_keys(fixture_model):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        fixture_model, trust_remote_code=False, dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), info
    with safe_open(str(fixture_model / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        state = model.state_dict()
        assert names == set(state)
        for name in names:
            torch.testing.assert_close(state[name], f.get_tensor(name).float(), rtol=0, atol=0)
    embeddings = model.model.vision_embed_tokens.img_processor.vision_model.embeddings
    assert torch.equal(embeddings.position_ids[0], torch.arange(577))  # rebuilt, not left uninitialised


@pytest.mark.slow
def test_auto_classes_need_no_remote_code_and_never_prompt(fixture_model):
    code = (
        "import phi3lab\n"
        "from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer\n"
        f"f = {str(fixture_model)!r}\n"
        "print(type(AutoConfig.from_pretrained(f)).__name__, type(AutoImageProcessor.from_pretrained(f)).__name__,"
        " type(AutoProcessor.from_pretrained(f)).__name__, type(AutoTokenizer.from_pretrained(f)).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Phi3VConfig", "Phi3VImageProcessor", "Phi3VProcessor", "TokenizersBackend"]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_load_uses_the_attention_choice_in_both_towers(fixture_model, attn):
    lab = phi3lab.load(fixture_model, attn=attn, verbose=False)
    assert lab.spec.modality == "vision" and type(lab.model).__name__ == "Phi3VForCausalLM"
    assert lab.model.config._attn_implementation == attn
    assert lab.model.config.vision_config._attn_implementation == attn
    assert lab.spec.stop_ids == (32007, 32000)  # the registry's, found from _name_or_path
    assert "num_crops   16" in lab.info()


def test_flash_request_on_this_machine_is_refused(fixture_model):
    with pytest.raises(phi3lab.AttentionRequestError):
        phi3lab.load(fixture_model, attn="flash_attention_2", verbose=False)


# --- §5.1 token counts and HD sizes -------------------------------------------------------------

TABLE_16 = [  # input W×H, padded W×H, grid rows×cols, tokens
    ((336, 336), (1344, 1344), (4, 4), 2509),
    ((1344, 1344), (1344, 1344), (4, 4), 2509),
    ((100, 100), (1344, 1344), (4, 4), 2509),
    ((2000, 2000), (1344, 1344), (4, 4), 2509),
    ((800, 600), (1344, 1008), (3, 4), 1921),
    ((640, 480), (1344, 1008), (3, 4), 1921),
    ((1024, 768), (1344, 1008), (3, 4), 1921),
    ((1300, 867), (1344, 1008), (3, 4), 1921),
    ((600, 800), (1008, 1344), (4, 3), 1933),
    ((1000, 500), (1680, 1008), (3, 5), 2353),
    ((672, 336), (1680, 1008), (3, 5), 2353),
    ((500, 1000), (1008, 1680), (5, 3), 2377),
    ((336, 672), (1008, 1680), (5, 3), 2377),
    ((1920, 1080), (1680, 1008), (3, 5), 2353),
    ((1080, 1920), (1008, 1680), (5, 3), 2377),
    ((1000, 100), (3360, 336), (1, 10), 1609),
    ((3000, 336), (2688, 336), (1, 8), 1321),
    ((8000, 50), (5376, 336), (1, 16), 2473),
    ((50, 8000), (336, 5376), (16, 1), 2653),
]


@pytest.mark.parametrize("size, padded, grid, tokens", TABLE_16, ids=[f"{w}x{h}" for (w, h), *_ in TABLE_16])
def test_hd_sizes_and_tokens_num_crops_16(size, padded, grid, tokens):
    layout = hd_layout(*size, 16)
    assert (layout.padded, layout.grid, layout.num_tokens) == (padded, grid, tokens)


@pytest.mark.parametrize(
    "size, crops, tokens, padded",
    [
        ((1234, 567), 1, 313, (336, 336)),
        ((336, 336), 4, 757, (672, 672)),
        ((336, 336), 8, 757, (672, 672)),
        ((800, 600), 4, 757, None),
        ((800, 600), 8, 757, None),
        ((1920, 1080), 4, 757, None),
        ((1920, 1080), 8, 1045, (1008, 672)),
        ((50, 8000), 4, 781, (336, 1344)),
        ((50, 8000), 8, 1405, (336, 2688)),
    ],
)
def test_tokens_for_other_num_crops(size, crops, tokens, padded):
    assert num_image_tokens(*size, crops) == tokens
    if padded:
        assert hd_layout(*size, crops).padded == padded


def test_resized_sizes_and_padding_box():
    layout = hd_layout(1300, 867)
    assert layout.resized == (1344, 896) and layout.pad_box == (0, 56, 1344, 952)
    portrait = hd_layout(867, 1300)
    assert portrait.transposed and portrait.resized == (896, 1344) and portrait.pad_box == (56, 0, 952, 1344)
    assert hd_layout(1920, 1080).image_sizes == (1008, 1680)


@pytest.mark.parametrize(
    "args, match", [((0, 10), "at least 1×1"), ((10, 10, 0), "num_crops"), ((100000, 1), "too elongated")]
)
def test_bad_sizes(args, match):
    with pytest.raises(ValueError, match=match):
        hd_layout(*args)


def test_clip_sees_each_distinct_crop_once_and_sharing_changes_nothing():
    """A picture that fits one crop has a global view made of the same pixels: CLIP runs on it
    once.  Batch padding crops are not run at all.  The tokens are those of running every crop."""
    from phi3lab.models.phi3_v.modeling import Phi3ImageEmbedding
    from phi3lab.tiny.train_vision import vision_config

    torch.manual_seed(0)
    embed = Phi3ImageEmbedding(vision_config()).eval()
    torch.nn.init.normal_(embed.sub_GN), torch.nn.init.normal_(embed.glb_GN)
    single = torch.randn(3, 336, 336)
    pixels = torch.zeros(2, 3, 3, 336, 336)
    pixels[0, 0] = pixels[0, 1] = single  # 336×336: global view + 1 crop, then a padding crop
    pixels[1] = torch.randn(3, 3, 336, 336)  # 336×672: global view + 2 crops
    sizes = torch.tensor([[336, 336], [336, 672]])

    crops, where = embed.views(pixels, [(1, 1), (1, 2)])
    assert crops == [(0, 0), (1, 0), (1, 1), (1, 2)] and where == [[0, 0], [1, 2, 3]]
    seen = []
    hook = embed.img_processor.vision_model.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    with torch.no_grad():
        shared = embed(pixels, sizes)
    hook.remove()
    assert seen == [4]

    plain = Phi3ImageEmbedding(vision_config()).eval()  # the plain rule: every crop of the grid through CLIP
    plain.load_state_dict(embed.state_dict())
    plain.share_identical_views = False
    assert plain.views(pixels, [(1, 1), (1, 2)], share=False)[1] == [[0, 1], [2, 3, 4]]
    with torch.no_grad():
        reference = plain(pixels, sizes)
    assert [t.shape for t in shared] == [t.shape for t in reference] == [(156 + 1 + 156, 128), (12 * 25 + 1 + 156, 128)]
    for a, b in zip(shared, reference):
        torch.testing.assert_close(a, b)

    pixels[0, 1, 0, 0, 0] += 1  # not the same pixels (e.g. built by hand): both views run
    assert embed.views(pixels, [(1, 1), (1, 2)])[1][0] == [0, 1]
