"""The Phi-3 family beyond mini and vision: registry facts, and random-weight stand-ins that load.

Phi-3.5-vision (several images and video frames, ``num_crops=4`` from its preprocessor config),
Phi-3-medium (grouped key/value heads) and Phi-4-mini (partial rotary, tied embeddings, another
tokenizer that cannot be checked offline: the loader says so).
"""

import dataclasses
import json
import warnings

import pytest
import torch
from PIL import Image

import phi3lab
from phi3lab.prompts.frames import frame_indices, frames_prompt, sample_frames
from phi3lab.prompts.patches import num_image_tokens
from phi3lab.runtime.registry import (
    KNOWN_MODELS,
    Architecture,
    UnverifiedModelWarning,
    lookup,
    spec_from_folder,
)
from phi3lab.runtime.standins import standin_config, write_standin

P35V = "microsoft/Phi-3.5-vision-instruct"
SIZES = [(800, 600), (336, 336), (1920, 1080)]


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    return {
        name: write_standin(root / name.split("/")[1], name)
        for name in (P35V, "microsoft/Phi-3-medium-4k-instruct", "microsoft/Phi-4-mini-instruct")
    }


@pytest.fixture(scope="module")
def p35v(standins):
    return phi3lab.load(standins[P35V], verbose=False)


# --- registry facts ------------------------------------------------------------------------------


def test_parameter_counts_follow_from_the_architecture():
    """Two sources agree: the published counts and the ones the shapes imply."""
    for spec in KNOWN_MODELS.values():
        assert spec.architecture.parameters == spec.parameters, spec.name


def test_phi3_medium_facts():
    for name, context in (
        ("microsoft/Phi-3-medium-4k-instruct", 4096),
        ("microsoft/Phi-3-medium-128k-instruct", 131072),
    ):
        spec = lookup(name)
        arch = spec.architecture
        assert (spec.context_length, spec.parameters, spec.recommended_dtype) == (context, 13_960_238_080, "bfloat16")
        assert (arch.layers, arch.hidden, arch.heads, arch.kv_heads, arch.head_dim) == (40, 5120, 40, 10, 128)
        assert spec.stop_ids == (32000, 32001, 32007) and spec.long_context == (context > 4096)
    assert lookup("microsoft/Phi-3-medium-4k-instruct").architecture.sliding_window == 2047


def test_phi4_mini_facts():
    spec = lookup("microsoft/Phi-4-mini-instruct")
    arch = spec.architecture
    assert (spec.family, spec.context_length, spec.parameters) == ("phi4", 131072, 3_836_021_760)
    assert (arch.vocab, arch.heads, arch.kv_heads, arch.head_dim) == (200064, 24, 8, 128)
    assert arch.partial_rotary_factor == 0.75 and arch.tied_embeddings
    assert spec.stop_ids == (200020, 199999)  # <|end|>, <|endoftext|>
    assert "could not be checked offline" in spec.unverified and spec.template == "phi4-mini"


def test_architecture_reads_a_config():
    config = json.loads((phi3lab.paths.embedded_dir() / "phi3lab-tiny" / "config.json").read_text())
    arch = Architecture.from_config(config)
    assert (arch.layers, arch.hidden, arch.vocab, arch.sliding_window) == (4, 128, 2064, 2047)


# --- Phi-3.5-vision --------------------------------------------------------------------------------


def test_phi35_vision_standin_has_the_published_config(standins):
    config = json.loads((standins[P35V] / "config.json").read_text())
    assert config["model_type"] == "phi3_v" and config["rope_scaling"]["type"] == "su"
    assert config["_attn_implementation"] == "flash_attention_2" and config["max_position_embeddings"] == 131072
    assert json.loads((standins[P35V] / "preprocessor_config.json").read_text())["num_crops"] == 4


def test_num_crops_comes_from_the_processor_config(p35v, standins, tmp_path):
    assert p35v.num_crops == p35v.spec.num_crops == 4 and p35v.spec.family == "phi3.5"
    assert p35v.attention.impl == "sdpa"  # the file's flash_attention_2 is not taken on a CPU
    assert "num_crops   4 (the processor's" in p35v.info()
    # the same checkpoint with 16 in its preprocessor_config.json: the folder wins over the registry's 4
    other = write_standin(tmp_path / "p35v-16", P35V, num_crops=16)
    lab = phi3lab.load(other, verbose=False)
    assert lab.num_crops == lab.spec.num_crops == 16 and lookup(P35V).num_crops == 4
    counts = lab.budget("<|image_1|>\nWhat is this?", images=[(800, 600)]).image_tokens
    assert counts == (num_image_tokens(800, 600, 16),)


def test_several_images_in_one_prompt(p35v):
    images = [Image.new("RGB", size, (40 * k, 90, 160)) for k, size in enumerate(SIZES)]
    text = "<|image_1|>\n<|image_2|>\n<|image_3|>\nCompare the three pictures."
    expected = [num_image_tokens(w, h, 4) for w, h in SIZES]
    inputs = p35v.encode(text, images)
    assert [im.num_tokens for im in inputs.images] == expected == [757, 757, 757]
    assert [im.num_crops for im in inputs.images] == [4, 4, 4]
    ids = inputs.input_ids[0]
    starts = [im.start for im in inputs.images]
    assert starts == sorted(starts) and all(a.end < b.start for a, b in zip(inputs.images, inputs.images[1:]))
    for k, im in enumerate(inputs.images, start=1):
        assert (ids[im.start : im.end] == -k).all() and ids[im.start - 1] >= 0 and ids[im.end] >= 0
    assert inputs["pixel_values"].shape == (3, 5, 3, 336, 336)  # num_crops + 1 slots per image
    budget = p35v.budget(text, images=SIZES)
    assert budget.image_tokens == tuple(expected) and budget.prompt_tokens == inputs.num_tokens
    table = p35v.tokens(text, images=SIZES)
    assert table.image_spans() == [(im.start, im.end) for im in inputs.images]
    rendered = p35v.render(text, images=images)
    assert rendered == f"<|user|>\n{text}<|end|>\n<|assistant|>\n"  # the model card's multi-image format
    with torch.no_grad():
        logits = p35v.model(**inputs).logits
    assert logits.shape[:2] == (1, inputs.num_tokens) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_video_frames_become_one_tag_each(p35v):
    clip = [Image.new("RGB", (192, 108), (k * 8, 0, 255 - k * 8)) for k in range(30)]
    text, chosen = frames_prompt(clip, "What changes over the clip?", max_frames=6)
    assert [clip.index(f) for f in chosen] == frame_indices(30, 6) == [2, 7, 12, 17, 22, 27]
    assert text.splitlines() == [f"<|image_{k}|>" for k in range(1, 7)] + ["What changes over the clip?"]
    budget = p35v.budget(text, images=chosen, max_new_tokens=16)
    assert budget.image_tokens == (num_image_tokens(192, 108, 4),) * 6
    assert budget.prompt_crosses_longrope  # six 757-token frames pass 4,096 tokens: said, not hidden
    answer = p35v.chat(text, chosen, max_new_tokens=2, stream=False)
    assert answer.prompt_tokens == budget.prompt_tokens


def test_frame_sampling_refuses_what_it_cannot_use():
    assert sample_frames(["a", "b"], 5) == ["a", "b"]
    with pytest.raises(TypeError, match="list\\(frames\\)"):
        sample_frames(iter(range(3)), 2)
    with pytest.raises(ValueError, match="no frames"):
        sample_frames([], 2)
    with pytest.raises(ValueError, match="count must be a whole number ≥ 1"):
        frame_indices(10, 0)


@pytest.mark.reference
def test_two_images_with_the_official_tokenizer_at_four_crops(reference, tmp_path):
    """The official Phi-3-vision tokenizer (shared by Phi-3.5-vision): the exact processor ids."""
    folder = write_standin(tmp_path / "p35v-official", P35V, tokenizer=reference / "phi3v-tiny-random" / "model")
    lab = phi3lab.load(folder, verbose=False)
    assert lab.spec.stop_ids == (32007, 32000)  # the published ids are this tokenizer's own
    images = [Image.new("RGB", (1344, 1344)), Image.new("RGB", (800, 600))]
    ids = lab.encode("<|image_1|>\n<|image_2|>\nCompare the two images.", images).input_ids[0].tolist()
    head = [1, 32010, 29871, 13]
    assert ids[:4] == head and ids[4 : 4 + 757] == [-1] * 757
    assert ids[761:764] == [1, 29871, 13] and ids[764 : 764 + 757] == [-2] * 757
    assert ids[1521:1524] == [1, 29871, 13] and ids[-4:] == [32007, 29871, 13, 32001]


# --- Phi-3-medium and Phi-4-mini stand-ins ----------------------------------------------------------


def test_phi3_medium_standin_loads_with_grouped_kv(standins):
    lab = phi3lab.load(standins["microsoft/Phi-3-medium-4k-instruct"], verbose=False)
    config = lab.model.config
    assert config.num_attention_heads == 4 * config.num_key_value_heads  # 40:10 shrunk, the grouping kept
    assert lab.spec.parameters == 13_960_238_080 and "40 query heads sharing 10" in lab.spec.note
    assert lab.chat("What is 2 plus 3?", max_new_tokens=3, stream=False).new_tokens == 3


def test_phi4_mini_is_loaded_but_its_tokenizer_is_said_unverified(standins):
    folder = standins["microsoft/Phi-4-mini-instruct"]
    with pytest.warns(UnverifiedModelWarning, match="could not be checked offline"):
        lab = phi3lab.load(folder, verbose=False)
    assert lab.spec.family == "phi4" and lab.spec.unverified and "unverified" in lab.info()
    assert lab.model.config.rope_parameters["partial_rotary_factor"] == 0.75 and lab.model.config.tie_word_embeddings
    # the stop ids are the folder's own (its generation_config.json), not the registry's 200020/199999
    own = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    assert list(lab.spec.stop_ids) == own and lab.template_revision == "unknown"
    assert lab.render("Hi") == "<|user|>Hi<|end|><|assistant|>"  # the checkpoint's own template, as it is


def test_phi4_mini_partial_rotary_capture_equals_eager(standins):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedModelWarning)  # said once, in the test above
        lab = phi3lab.load(standins["microsoft/Phi-4-mini-instruct"], verbose=False)
        eager = phi3lab.load(standins["microsoft/Phi-4-mini-instruct"], attn="eager", verbose=False)
    inputs = lab.encode("Name three colours.")
    _, cache = lab.run_with_cache("Name three colours.")
    with torch.no_grad():
        maps = eager.model(**inputs.to(eager.model.device), output_attentions=True).attentions
    for layer in range(lab.model.config.num_hidden_layers):
        torch.testing.assert_close(cache.attention(layer)[0], maps[layer][0].float(), atol=1e-5, rtol=0)


def test_a_larger_vocabulary_without_a_known_name_is_unverified(tmp_path, standins):
    folder = tmp_path / "fine-tune"
    folder.mkdir()
    config = json.loads((standins["microsoft/Phi-4-mini-instruct"] / "config.json").read_text())
    config.update(_name_or_path="someone/phi-4-mini-finetune", vocab_size=200064)
    (folder / "config.json").write_text(json.dumps(config))
    spec = spec_from_folder(folder, "someone/phi-4-mini-finetune")
    assert "200,064 ids, not Phi-3's 32,064" in spec.unverified
    phi3 = dataclasses.replace(lookup("microsoft/Phi-3-mini-4k-instruct"))
    config = standin_config(phi3, width="tiny", vocab=32064)
    (folder / "config.json").write_text(json.dumps({**config, "_name_or_path": "someone/phi-3-finetune"}))
    assert spec_from_folder(folder, "someone/phi-3-finetune").unverified == ""
