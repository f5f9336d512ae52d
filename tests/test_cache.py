"""The inspection core: lab.encode -> Inputs, lab.run_with_cache -> Cache, on the embedded models."""

import pytest
import torch
from test_attention import eager

from phi3lab.inspect.capture import capture
from phi3lab.inspect.lens import logit_lens
from phi3lab.inspect.maps import image_heat, rollout
from phi3lab.inspect.memory import MemoryLimitError
from phi3lab.prompts.inputs import Inputs

QUESTION = "<|image_1|>\nWhat colour is the triangle?"


def eager_outputs(model, inputs):
    with eager(model), torch.no_grad():
        return model(**inputs, output_attentions=True, output_hidden_states=True, use_cache=False)


# --- Inputs ----------------------------------------------------------------------------------------


def test_inputs_go_straight_into_forward_and_generate(tiny):
    inputs = tiny.encode("What is 2 plus 3?")
    assert isinstance(inputs, Inputs) and set(inputs) == {"input_ids", "attention_mask"}
    assert inputs.table.ids == inputs["input_ids"][0].tolist() and len(inputs.table) == inputs.num_tokens
    assert inputs.table.prompt == tiny.render("What is 2 plus 3?")
    with torch.no_grad():
        assert tiny.model(**inputs).logits.shape[1] == inputs.num_tokens
        out = tiny.model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=list(tiny.spec.stop_ids))
    answer = tiny.tokenizer.decode(out[0, inputs.num_tokens :], skip_special_tokens=True).strip()
    assert answer == tiny.chat("What is 2 plus 3?", stream=False, max_new_tokens=8).text


def test_vision_inputs_carry_each_images_layout_and_span(vision, picture):
    inputs = vision.encode(QUESTION, [picture])
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}
    span = inputs.image(0)
    ids = inputs["input_ids"][0]
    assert (ids[span.start : span.end] == -1).all() and (ids[: span.start] >= 0).all() and (ids[span.end :] >= 0).all()
    assert (span.width, span.height) == picture.size and span.num_crops == vision.num_crops
    assert span.num_tokens == span.layout.num_tokens
    assert [r.segment for r in inputs.table.rows[span.start : span.end]] == ["image"] * span.num_tokens
    assert "image 1: " in inputs.to_text() and f"tokens {span.start}..{span.end - 1}" in inputs.to_text()
    with torch.no_grad():
        vision.model.generate(**inputs, max_new_tokens=2, do_sample=False)


def test_the_processors_output_goes_straight_into_generate(vision, picture):
    enc = vision.processor(vision.render(QUESTION, images=[picture]), [picture])
    with torch.no_grad():
        out = vision.model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 3


def test_image_index_errors_are_clear(tiny, vision, picture):
    with pytest.raises(IndexError, match="has no images"):
        tiny.encode("Hi").image(0)
    with pytest.raises(IndexError, match="has 1 image"):
        vision.encode(QUESTION, [picture]).image(1)
    with pytest.raises(TypeError, match="images must be a list of pictures.*images=\\[picture\\]"):
        vision.encode(QUESTION, picture)


def test_one_num_crops_truth(vision, picture):
    """After setting the processor's num_crops every counter agrees (it was 773 vs 329)."""
    processor = vision.processor.image_processor
    before = processor.num_crops
    photo = picture.resize((640, 480))
    try:
        processor.num_crops = 4
        assert vision.num_crops == 4
        chat = vision.chat(QUESTION, [photo], stream=False, max_new_tokens=2).prompt_tokens
        counts = {
            "chat": chat,
            "encode": vision.encode(QUESTION, [photo]).num_tokens,
            "tokens": len(vision.tokens(QUESTION, images=[photo])),
            "budget": vision.budget(QUESTION, images=[photo]).prompt_tokens,
        }
        assert len(set(counts.values())) == 1, counts
        processor.num_crops = 1
        assert vision.encode(QUESTION, [photo]).num_tokens < chat  # the value is read, not remembered
        assert vision.encode(QUESTION, [photo], num_crops=4).num_tokens == chat  # a per-call value wins
    finally:
        processor.num_crops = before


# --- Cache -----------------------------------------------------------------------------------------


def test_cache_attention_and_residuals_equal_eager(tiny):
    logits, cache = tiny.run_with_cache("My name is Ada. What is my name?")
    ref = eager_outputs(tiny.model, tiny.encode("My name is Ada. What is my name?"))
    torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=0)
    for layer in range(tiny.model.config.num_hidden_layers):
        torch.testing.assert_close(cache.attention(layer), ref.attentions[layer], atol=1e-4, rtol=0)
    torch.testing.assert_close(cache.embeddings(), ref.hidden_states[0], atol=1e-4, rtol=0)
    last = tiny.model.config.num_hidden_layers - 1
    for layer in range(last):
        torch.testing.assert_close(cache.residual(layer), ref.hidden_states[layer + 1], atol=1e-4, rtol=0)
    torch.testing.assert_close(tiny.model.model.norm(cache.residual(last)), ref.hidden_states[-1], atol=1e-4, rtol=0)
    assert cache.num_tokens == logits.shape[1] and cache.answer_rows == [logits.shape[1] - 1]


def test_cache_on_the_vision_model_equals_eager(vision, picture):
    _, cache = vision.run_with_cache(QUESTION, [picture], layers=[0, 3])
    ref = eager_outputs(vision.model, vision.encode(QUESTION, [picture]))
    for layer in (0, 3):
        torch.testing.assert_close(cache.attention(layer), ref.attentions[layer], atol=1e-4, rtol=0)
    with pytest.raises(KeyError, match="layer 1 of 'pattern' was not kept"):
        cache.attention(1)


def test_logit_lens_from_the_cache_equals_the_standalone_lens(tiny):
    inputs = tiny.encode("What is 2 plus 3?")
    _, cache = tiny.run_with_cache("What is 2 plus 3?")
    ours, theirs = cache.logit_lens(-1), logit_lens(tiny.model, tiny.tokenizer, dict(inputs), -1)
    assert ours.tokens == theirs.tokens and ours.position == theirs.position
    assert max(abs(a - b) for x, y in zip(ours.probs, theirs.probs) for a, b in zip(x, y)) < 1e-4


def test_generation_records_the_answers_rows(tiny):
    text = "My name is Ada. What is my name?"
    result, cache = tiny.generate_with_cache(text, max_new_tokens=8, positions="last")
    assert result.text == tiny.chat(text, stream=False, max_new_tokens=8).text == "Your name is Ada."
    n = cache.prompt_tokens
    assert cache.positions == list(range(n - 1, n - 1 + len(result.token_ids)))
    assert cache.answer_rows == list(range(len(result.token_ids)))
    full = tiny.encode(text)["input_ids"]
    full = torch.cat([full, torch.tensor([list(result.token_ids[:-1])])], dim=1)
    ref = eager_outputs(tiny.model, {"input_ids": full})
    torch.testing.assert_close(cache.attention(2), ref.attentions[2][:, :, n - 1 :], atol=1e-4, rtol=0)
    assert "answer: 'Your name is Ada.'" in cache.to_text()


def test_attention_rows_reads_rows_without_assembling_the_map(tiny):
    _, cache = tiny.generate_with_cache("What is 2 plus 3?", max_new_tokens=4)
    rows = [cache.answer_rows[-1], 0, *cache.answer_rows[:2]]  # a decode row, the first prompt row, unsorted
    picked = cache.attention_rows(1, rows)
    assert not cache._maps  # nothing assembled
    whole = cache.attention(1)
    assert torch.equal(picked, whole[:, :, rows]) and torch.equal(cache.attention_rows(1, rows), picked)
    assert torch.allclose(cache.mean_attention(layers=1, rows=rows), whole[0][:, rows].mean(dim=(0, 1)))


def test_rollout_rows_equal_full_rollout_both_ways(tiny):
    text = "My name is Ada. What is my name?"
    result, by_maps = tiny.generate_with_cache(text, max_new_tokens=6)
    _, by_qk = tiny.generate_with_cache(text, max_new_tokens=6, positions="last", rollout=True)
    maps = torch.stack([by_maps.attention(i) for i in range(tiny.model.config.num_hidden_layers)])
    full = rollout(maps)  # [N, N]
    rows = [by_maps.positions[r] for r in by_maps.answer_rows]
    torch.testing.assert_close(by_maps.rollout(), full[rows], atol=1e-5, rtol=0)
    torch.testing.assert_close(by_qk.rollout(), full[rows], atol=1e-5, rtol=0)
    torch.testing.assert_close(by_qk.rollout(chunk=3), full[rows], atol=1e-5, rtol=0)  # chunking changes nothing


def test_rollout_needs_what_it_needs(tiny):
    _, cache = tiny.run_with_cache("Hi", layers=[0])
    with pytest.raises(ValueError, match="layers='all'"):
        cache.rollout()
    _, cache = tiny.run_with_cache("Hi", positions="last")
    with pytest.raises(ValueError, match="rollout=True"):
        cache.rollout()


def test_image_heat_uses_the_layout_of_the_inputs(vision, picture):
    result, cache = vision.generate_with_cache(QUESTION, [picture], max_new_tokens=4, positions="last")
    heat = cache.image_heat(0)
    span = cache.inputs.image(0)
    sinks = cache.sinks(0).indices  # masked by default
    manual = image_heat(cache.mean_attention(), span.start, *picture.size, vision.num_crops, sinks)
    assert (heat.crops == manual.crops).all() and (heat.global_view == manual.global_view).all()
    assert 0 < heat.total <= 1 and heat.to_text().startswith(f"image {picture.width}×{picture.height}")
    shares = cache.head_shares("image")
    assert shares.shape == (vision.model.config.num_hidden_layers, vision.model.config.num_attention_heads)
    assert (
        abs(
            float(shares.mean())
            - float(
                torch.stack(
                    [cache.attention(i)[0][..., span.start : span.end].sum(-1).mean(-1) for i in cache.layers]
                ).mean()
            )
        )
        < 1e-6
    )
    with pytest.raises(IndexError, match="has 1 image"):
        cache.image_heat(1)
    with pytest.raises(ValueError, match="'attention' or 'rollout'"):
        cache.image_heat(0, source="gradients")


def test_nested_in_a_capture_and_repeated(tiny):
    with capture(tiny.model, layers=[1], positions="all") as outer, torch.no_grad():
        _, first = tiny.run_with_cache("Hi")
        _, second = tiny.run_with_cache("Hi")
    torch.testing.assert_close(first.attention(1), second.attention(1))
    assert outer.weights(1).shape[2] == 2 * first.num_tokens
    torch.testing.assert_close(outer.weights(1)[:, :, : first.num_tokens], first.attention(1))


def test_memory_is_checked_before_anything_runs(tiny):
    calls = []
    handle = tiny.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(MemoryLimitError, match="keeping pattern, embed, resid_post over .* prompt tokens"):
            tiny.generate_with_cache("What is 2 plus 3?", max_new_tokens=20, max_bytes=10_000)
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(max_new_tokens=4), TypeError, "use lab.generate_with_cache"),
        (dict(queries="last"), TypeError, "queries is now positions"),
        (dict(budget=10), TypeError, "budget is now max_bytes"),
        (dict(layers="last"), ValueError, "'all', an int"),
        (dict(positions="first"), ValueError, "'all', 'last'"),
        (dict(positions=slice(5, 2)), ValueError, "selects no positions"),
        (dict(positions=[99]), IndexError, "positions \\[99\\] do not exist"),
        (dict(sites=["resid"]), ValueError, "'resid' is not a site"),
        (dict(sites=[]), ValueError, "sites is empty"),
        (dict(max_bytes=-5), TypeError, "max_bytes must be"),
    ],
)
def test_bad_arguments(tiny, kwargs, error, words):
    with pytest.raises(error, match=words):
        tiny.run_with_cache("Hi", **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(max_new_tokens=-1), ValueError, "max_new_tokens must be at least 1"),
        (dict(max_new_tokens=2.5), TypeError, "max_new_tokens must be"),
        (dict(temperature=0.5), TypeError, "unexpected keyword argument"),
    ],
)
def test_bad_generation_arguments(tiny, kwargs, error, words):
    with pytest.raises(error, match=words):
        tiny.generate_with_cache("Hi", **kwargs)


def test_bad_rows(tiny):
    _, cache = tiny.run_with_cache("Hi")
    with pytest.raises(IndexError, match="the cache holds"):
        cache.logit_lens(row=99)
    with pytest.raises(TypeError, match="rows must be"):
        cache.rollout(rows="middle")


# --- interventions ---------------------------------------------------------------------------------


def test_edit_residual_and_heads_change_the_run_and_are_removed(tiny):
    from phi3lab.inspect.interventions import edit_heads, edit_residual, project_out

    inputs = tiny.encode("What is 2 plus 3?")
    with torch.no_grad():
        clean = tiny.model(**inputs).logits
        seen = []
        with edit_residual(tiny.model, lambda layer, h: seen.append(layer)):  # None: record only
            same = tiny.model(**inputs).logits
        assert seen == [0, 1, 2, 3] and torch.equal(same, clean)
        with edit_residual(tiny.model, lambda layer, h: torch.zeros_like(h), layers=[0]):
            zeroed = tiny.model(**inputs).logits
        assert not torch.allclose(zeroed, clean)
        # removing a direction from the embeddings equals running on projected embeddings
        d = torch.randn(tiny.model.config.hidden_size)
        with edit_residual(tiny.model, lambda layer, h: project_out(h, d), layers=[0]):
            projected = tiny.model(**inputs).logits
        embeds = project_out(tiny.model.model.embed_tokens(inputs["input_ids"]), d)
        torch.testing.assert_close(projected, tiny.model(inputs_embeds=embeds).logits, atol=1e-5, rtol=0)
        # zeroing every head of layer 2 equals zeroing its o_proj input
        with edit_heads(tiny.model, lambda layer, z: torch.zeros_like(z), layers=2):
            no_heads = tiny.model(**inputs).logits
        assert not torch.allclose(no_heads, clean)
        assert torch.equal(tiny.model(**inputs).logits, clean)  # everything removed


def test_edit_residual_mid_is_the_stream_between_attention_and_mlp(tiny):
    from phi3lab.inspect.interventions import edit_residual

    inputs = tiny.encode("What is 2 plus 3?")
    layer = tiny.model.model.layers[1]
    normed = []  # what the MLP's norm is given: the mid stream
    handle = layer.post_attention_layernorm.register_forward_pre_hook(lambda m, args: normed.append(args[0]))
    try:
        with torch.no_grad():
            clean = tiny.model(**inputs).logits
            mids = {}
            with edit_residual(tiny.model, lambda i, h: mids.setdefault(i, h.clone()), where="mid"):
                same = tiny.model(**inputs).logits
            assert sorted(mids) == [0, 1, 2, 3] and torch.equal(same, clean)
            torch.testing.assert_close(mids[1], normed[-1], atol=1e-6, rtol=0)
            # a steering vector added at mid reaches the MLP and the rest of the stream
            v = torch.randn(tiny.model.config.hidden_size)
            outs = {}
            with (
                edit_residual(tiny.model, lambda i, h: h + v, layers=[1], where="mid"),
                edit_residual(tiny.model, lambda i, h: outs.setdefault(i, h.clone()), layers=[1], where="output"),
            ):
                steered = tiny.model(**inputs).logits
            torch.testing.assert_close(normed[-1], mids[1] + v, atol=1e-5, rtol=0)
            expected = mids[1] + v + layer.mlp(layer.post_attention_layernorm(mids[1] + v))
            torch.testing.assert_close(outs[1], expected, atol=1e-5, rtol=0)
            assert not torch.allclose(steered, clean)
            # the stream entering the layer is read after an input edit of the same layer
            seen = {}
            with (
                edit_residual(tiny.model, lambda i, h: seen.setdefault(i, h.clone()), layers=[1], where="mid"),
                edit_residual(tiny.model, lambda i, h: h * 2, layers=[1], where="input"),
            ):
                tiny.model(**inputs)
            torch.testing.assert_close(seen[1], normed[-1], atol=1e-6, rtol=0)
            assert not torch.allclose(seen[1], mids[1])
        assert torch.equal(tiny.model(**inputs).logits, clean)  # everything removed
    finally:
        handle.remove()


def test_edit_arguments_are_checked(tiny):
    from phi3lab.inspect.interventions import edit_heads, edit_residual

    with pytest.raises(TypeError, match="fn must be a function"):
        edit_residual(tiny.model, 3)
    with pytest.raises(ValueError, match="one of 'input', 'mid', 'output', got 'middle'"):
        edit_residual(tiny.model, lambda *a: None, where="middle")
    with pytest.raises(IndexError, match="layers 0..3"):
        edit_heads(tiny.model, lambda *a: None, layers=[9])
    with pytest.raises(ValueError, match="must keep"), torch.no_grad():
        with edit_heads(tiny.model, lambda layer, z: z[:, :, :1], layers=0):
            tiny.model(**tiny.encode("Hi"))


def test_mid_needs_a_phi3_decoder_layer(tiny, monkeypatch):
    from phi3lab.inspect.interventions import edit_residual

    def hooks():
        return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in tiny.model.modules())

    before = hooks()
    monkeypatch.delattr(tiny.model.model.layers[2], "resid_attn_dropout")
    with pytest.raises(TypeError, match="where='mid' needs a Phi-3 decoder layer.*layer 2.*'input' or 'output'"):
        edit_residual(tiny.model, lambda *a: None, where="mid")  # layers 0 and 1 were hooked first
    assert hooks() == before  # nothing left behind
