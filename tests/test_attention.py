"""Attention capture under sdpa equals eager output_attentions; budgets refuse what will not fit."""

import contextlib

import pytest
import torch
from transformers import Phi3Config, Phi3ForCausalLM

from phi3lab.inspect.capture import capture, output_attentions_bytes
from phi3lab.inspect.hooks import NothingRecordedError
from phi3lab.inspect.memory import MemoryLimitError


@contextlib.contextmanager
def eager(model):
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def eager_maps(model, **inputs):
    with eager(model), torch.no_grad():
        return model(**inputs, output_attentions=True).attentions


def test_capture_equals_eager_on_the_embedded_model(tiny):
    assert tiny.model.config._attn_implementation == "sdpa"
    inputs = tiny.tokenizer([tiny.render("My name is Ada. What is my name?")], return_tensors="pt")
    with capture(tiny.model, positions="all") as cap, torch.no_grad():
        tiny.model(**inputs)
    for layer, ref in enumerate(eager_maps(tiny.model, **inputs)):
        torch.testing.assert_close(cap.weights(layer), ref, atol=1e-5, rtol=0)


def test_capture_equals_eager_on_the_vision_fixture(reference):
    import numpy as np
    from PIL import Image

    import phi3lab

    lab = phi3lab.load(reference / "phi3v-tiny-random" / "model", attn="sdpa", verbose=False)
    image = Image.fromarray((np.random.RandomState(0).rand(300, 400, 3) * 255).astype("uint8"))
    enc = lab.processor(lab.render("<|image_1|>\nWhat is it?", images=[image]), [image], num_crops=4)
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
    with capture(lab.model, layers=[1], positions="all") as cap, torch.no_grad():
        lab.model(**inputs)
    torch.testing.assert_close(cap.weights(1), eager_maps(lab.model, **inputs)[1], atol=1e-5, rtol=0)


def test_heads_and_query_selections(tiny):
    inputs = tiny.tokenizer([tiny.render("Spell the word apple.")], return_tensors="pt")
    ref = eager_maps(tiny.model, **inputs)[2]
    n = inputs["input_ids"].shape[1]
    for queries, rows in [
        ("last", [n - 1]),
        ([0, -2], [0, n - 2]),
        (slice(2, 5), [2, 3, 4]),
        (lambda r: r[r % 3 == 0], list(range(0, n, 3))),
    ]:
        with capture(tiny.model, layers=2, heads=[1, 3], positions=queries) as cap, torch.no_grad():
            tiny.model(**inputs)
        torch.testing.assert_close(cap.weights(2), ref[:, [1, 3]][:, :, rows], atol=1e-5, rtol=0)
        assert cap.positions(2).tolist() == [rows]


def test_generation_records_one_row_per_new_token(tiny):
    inputs = tiny.tokenizer([tiny.render("What is 2 plus 3?")], return_tensors="pt")
    with capture(tiny.model, layers=[0, 3], positions="last") as cap, torch.no_grad():
        out = tiny.model.generate(**inputs, max_new_tokens=5, do_sample=False, eos_token_id=None)
    n = inputs["input_ids"].shape[1]
    weights = cap.weights(3)  # [1, heads, 5 steps, keys]
    assert weights.shape[2] == 5 and cap.positions(3).tolist() == [list(range(n - 1, n + 4))]
    full = out[:, : n + 4]  # the last new token is never fed back
    ref = eager_maps(tiny.model, input_ids=full)[3]
    torch.testing.assert_close(weights, ref[:, :, n - 1 : n + 4], atol=1e-5, rtol=0)


def test_left_padded_batch(tiny):
    tok = tiny.tokenizer
    texts = [tiny.render("Hi"), tiny.render("My name is Ada. What is my name?")]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    pad = tok.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    with capture(tiny.model, layers=[1], positions="all") as cap, torch.no_grad():
        tiny.model(input_ids=input_ids, attention_mask=mask)
    ref = eager_maps(tiny.model, input_ids=input_ids, attention_mask=mask)[1]
    real = mask.bool()
    for b in range(2):  # compare the real (unpadded) query rows
        torch.testing.assert_close(cap.weights(1)[b][:, real[b]], ref[b][:, real[b]], atol=1e-5, rtol=0)


def test_sliding_window_mask_is_the_kernels():
    torch.manual_seed(0)
    config = Phi3Config(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=6,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = Phi3ForCausalLM(config).eval()
    model.set_attn_implementation("sdpa")
    ids = torch.randint(2, 100, (1, 20))
    with capture(model, positions="all") as cap, torch.no_grad():
        model(input_ids=ids)
    ref = eager_maps(model, input_ids=ids)
    for layer in range(2):
        torch.testing.assert_close(cap.weights(layer), ref[layer], atol=1e-5, rtol=0)
    assert float(cap.weights(0)[0, :, -1, :10].sum()) == 0.0  # outside the window


def test_budget_refuses_with_advice(tiny):
    inputs = tiny.tokenizer([tiny.render("What is 2 plus 3?")], return_tensors="pt")
    with pytest.raises(MemoryLimitError, match="read fewer sites, layers, heads or positions"):
        with capture(tiny.model, positions="all", max_bytes=1000), torch.no_grad():
            tiny.model(**inputs)
    with capture(tiny.model, positions="last", max_bytes=10_000) as cap, torch.no_grad():
        tiny.model(**inputs)
    assert 0 < cap.nbytes <= 10_000


def test_output_attentions_estimate(tiny):
    assert output_attentions_bytes(tiny.model, 100) == 4 * 4 * 4 * 100 * 100


def test_bad_layer_or_head(tiny):
    with pytest.raises(IndexError, match="layers 0..3"):
        capture(tiny.model, layers=[7])
    with pytest.raises(IndexError, match="heads 0..3"):
        capture(tiny.model, heads=[9])


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(layers=[1.7]), TypeError, "list of ints"),
        (dict(layers="last"), ValueError, "'all', an int"),
        (dict(layers=[]), TypeError, "non-empty"),
        (dict(layers=True), TypeError, "int"),
        (dict(heads="some"), ValueError, "heads='some' is not a choice"),
        (dict(heads=[0.5]), TypeError, "heads must be"),
        (dict(positions="first"), ValueError, "'all', 'last'"),
        (dict(positions=[1.5]), TypeError, "list of ints"),
        (dict(positions=None), TypeError, "positions must be"),
        (dict(positions=slice(5, 2)), ValueError, "selects no positions"),
        (dict(max_bytes=-1), TypeError, "max_bytes"),
        (dict(max_bytes="1GB"), TypeError, "max_bytes"),
    ],
)
def test_arguments_are_checked_at_construction(tiny, kwargs, error, words):
    with pytest.raises(error, match=words):
        capture(tiny.model, **kwargs)


def test_capture_takes_a_lab_and_says_what_to_pass_otherwise(tiny):
    inputs = tiny.encode("Hi")
    with capture(tiny, layers=0) as cap, torch.no_grad():  # a Lab is read through its model
        tiny.model(**inputs)
    assert cap.weights(0).shape[2] == inputs.num_tokens
    with pytest.raises(TypeError, match="no Phi-3 decoder layers"):
        capture(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="expected a torch model, got str"):
        capture("tiny")


def test_out_of_range_rows_and_missing_layers_are_named(tiny):
    inputs = tiny.tokenizer([tiny.render("Hi")], return_tensors="pt")
    n = inputs["input_ids"].shape[1]
    with pytest.raises(IndexError, match=f"positions \\[-{n + 5}\\] do not exist: the prompt has {n} positions"):
        with capture(tiny.model, layers=0, positions=[-(n + 5)]), torch.no_grad():
            tiny.model(**inputs)
    with capture(tiny.model, layers=[0, 1]) as cap:
        pass
    with pytest.raises(NothingRecordedError, match="run the model inside the capture block"):
        cap.stacked()
    with capture(tiny.model, layers=[0, 1]) as cap, torch.no_grad():
        tiny.model(**inputs)
    with pytest.raises(KeyError, match=r"layer 3 was not captured; captured layers: \[0, 1\]"):
        cap.weights(3)


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_the_models_own_and_removed(tiny):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    before, interface = _hook_count(tiny.model), dict(ALL_ATTENTION_FUNCTIONS.__dict__)
    with capture(tiny.model, layers=[0, 2]):
        assert _hook_count(tiny.model) == before + 5  # layer 0's tracker, a pre-hook and a qkv hook per layer
        assert dict(ALL_ATTENTION_FUNCTIONS.__dict__) == interface  # nothing global is patched
    assert _hook_count(tiny.model) == before
    with pytest.raises(ZeroDivisionError), capture(tiny.model):
        _ = 1 / 0
    assert _hook_count(tiny.model) == before  # removed on errors too


def test_nested_and_repeated_captures_each_see_every_forward(tiny):
    inputs = tiny.tokenizer([tiny.render("Spell the word apple.")], return_tensors="pt")
    ref = eager_maps(tiny.model, **inputs)
    with torch.no_grad(), capture(tiny.model, layers="all", positions="all") as outer:
        with capture(tiny.model, layers=[1], positions="last") as inner:
            tiny.model(**inputs)
        tiny.model(**inputs)
    assert inner.weights(1).shape[2] == 1 and outer.weights(1).shape[2] == 2 * inputs["input_ids"].shape[1]
    torch.testing.assert_close(inner.weights(1), ref[1][:, :, -1:], atol=1e-5, rtol=0)
    for _ in range(2):  # repeated use gives the same, fresh records
        with capture(tiny.model, layers=[1], positions="all") as again, torch.no_grad():
            tiny.model(**inputs)
        torch.testing.assert_close(again.weights(1), ref[1], atol=1e-5, rtol=0)


def test_a_capture_leaves_other_models_and_threads_alone(tiny):
    import threading

    torch.manual_seed(0)
    config = Phi3Config(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
    )
    other = Phi3ForCausalLM(config).eval()
    other.set_attn_implementation("sdpa")
    ids = torch.randint(2, 100, (1, 12))
    inputs = tiny.tokenizer([tiny.render("Hi")], return_tensors="pt")
    results = {}

    def run_other():
        with capture(other, layers=[0], positions="all") as cap_other, torch.no_grad():
            for _ in range(3):
                other(input_ids=ids)
        results["other"] = cap_other

    with capture(tiny.model, layers=[0], positions="all") as cap, torch.no_grad():
        thread = threading.Thread(target=run_other)
        thread.start()
        for _ in range(3):
            tiny.model(**inputs)
        thread.join()
    assert cap.weights(0).shape[2] == 3 * inputs["input_ids"].shape[1]
    assert results["other"].weights(0).shape[2] == 3 * 12
    torch.testing.assert_close(
        results["other"].weights(0)[:, :, :12], eager_maps(other, input_ids=ids)[0], atol=1e-5, rtol=0
    )


def test_output_attentions_is_checked_before_running(tiny):
    from phi3lab.inspect.capture import guard_output_attentions

    inputs = tiny.tokenizer([tiny.render("What is 2 plus 3?")], return_tensors="pt")
    handle = guard_output_attentions(tiny.model, max_bytes=100)
    try:
        with eager(tiny.model), pytest.raises(MemoryLimitError, match="output_attentions=True on 1×"):
            tiny.model(**inputs, output_attentions=True)
        with torch.no_grad():
            tiny.model(**inputs)  # without output_attentions nothing is checked
    finally:
        handle.remove()


def test_capture_equals_eager_on_the_embedded_vision_model():
    import phi3lab
    from phi3lab.tiny.vision_data import sample_images

    lab = phi3lab.load("tiny-vision", verbose=False)
    image = sample_images()["shapes.png"]
    enc = lab.processor(lab.render("<|image_1|>\nWhat colour is the triangle?", images=[image]), [image])
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
    with capture(lab.model, layers=[0, 3], positions="all") as cap, torch.no_grad():
        lab.model(**inputs)
    ref = eager_maps(lab.model, **inputs)
    for layer in (0, 3):
        torch.testing.assert_close(cap.weights(layer), ref[layer], atol=1e-5, rtol=0)
