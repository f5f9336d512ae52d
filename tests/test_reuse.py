"""Forwards that start part-way (phi3lab.inspect.reuse): the numbers of a whole forward, at a part of its cost."""

import pytest
import torch

from phi3lab.inspect import reuse
from phi3lab.inspect.hooks import Hooks
from phi3lab.inspect.kernel import embed_inputs


def _reference(query, key, value, groups):
    """Attention with an explicit end-aligned causal mask, written out."""
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    m, n = query.shape[2], key.shape[2]
    allowed = torch.arange(n)[None, :] <= torch.arange(m)[:, None] + (n - m)
    scores = (query @ key.transpose(-1, -2)) / query.shape[-1] ** 0.5
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ value


@pytest.mark.parametrize("m, n, groups", [(5, 12, 1), (7, 7, 1), (3, 40, 2), (1, 9, 4)])
def test_end_aligned_attention_equals_the_masked_softmax(m, n, groups):
    torch.manual_seed(m * n)
    query = torch.randn(2, 4, m, 16)
    key, value = torch.randn(2, 4 // groups, n, 16), torch.randn(2, 4 // groups, n, 16)
    expected = _reference(query, key, value, groups)
    out, weights = reuse.end_aligned_attention(torch.nn.Module(), query, key, value, None)
    assert weights is None and out.shape == (2, m, 4, 16)
    torch.testing.assert_close(out.transpose(1, 2), expected, atol=1e-5, rtol=1e-5)
    if m < n:  # both ways of computing it: split at the cache (CPU) and torch's lower-right bias (elsewhere)
        full_key, full_value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        torch.testing.assert_close(
            reuse._split_at_cache(query, full_key, full_value, None), expected, atol=1e-5, rtol=0
        )
        torch.testing.assert_close(reuse._lower_right(query, full_key, full_value, None), expected, atol=1e-5, rtol=0)


def test_a_padding_mask_or_a_biting_window_is_refused():
    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 10, 8)
    with pytest.raises(ValueError, match="without padding"):
        reuse.end_aligned_attention(torch.nn.Module(), q, k, k, torch.ones(1, 1, 3, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="exceed the attention window"):
        reuse.end_aligned_attention(torch.nn.Module(), q, k, k, None, sliding_window=8)


@pytest.fixture(scope="module")
def embeds(tiny):
    ids = tiny.encode("My name is Ada. What is 2 plus 3?").input_ids
    with torch.inference_mode():
        return embed_inputs(tiny.model, ids)


def _edit(at_position):
    def put(value, at):
        local = at_position - int(at.positions[0])
        if local < 0:  # the forward starts after the edited position
            return None
        value = value.clone()
        value[:, local] *= -1.0
        return value

    return put


@pytest.mark.parametrize("first", [0, 1, 6])
def test_a_forward_from_a_position_equals_the_whole_forward(tiny, embeds, first):
    """An edit at position 6 or later, started at ``first``: the logits of the whole edited forward."""
    model = tiny.model
    with torch.inference_mode():
        run = reuse.unedited_run(model, embeds, 3)
        assert torch.equal(run.logits, model(inputs_embeds=embeds, logits_to_keep=3).logits)
        with Hooks(model).edit("embed", _edit(6)):
            whole = model(inputs_embeds=embeds, logits_to_keep=3).logits
            started = reuse.forward_from(model, embeds[:, first:].expand(2, -1, -1), run, first, 3)
    assert started.shape == (2, 3, whole.shape[-1])
    torch.testing.assert_close(started, whole.expand(2, -1, -1), atol=1e-4, rtol=0)
    assert model.config._attn_implementation == "sdpa"  # restored


def test_starting_after_an_edit_misses_it_which_is_why_callers_start_at_the_first(tiny, embeds):
    """The test above can fail: a forward started after the edited position does not see the edit."""
    model = tiny.model
    with torch.inference_mode():
        run = reuse.unedited_run(model, embeds, 1)
        with Hooks(model).edit("embed", _edit(6)):
            late = reuse.forward_from(model, embeds[:, 7:], run, 7, 1)
            whole = model(inputs_embeds=embeds, logits_to_keep=1).logits
    assert (late - whole).abs().max() > 1e-2 and torch.allclose(late, run.logits, atol=1e-4)


def test_the_implementation_is_restored_after_an_error(tiny, embeds):
    with pytest.raises(RuntimeError, match="boom"), reuse.reusing(tiny.model):
        assert tiny.model.config._attn_implementation == reuse.NAME
        raise RuntimeError("boom")
    assert tiny.model.config._attn_implementation == "sdpa"
    run = reuse.unedited_run(tiny.model, embeds, 1)
    with pytest.raises(ValueError, match="pass the positions from first to the end"):
        reuse.forward_from(tiny.model, embeds[:, 3:], run, 2, 1)


def test_under_a_biting_window_the_models_own_attention_gives_the_same_numbers(tiny, embeds):
    """A window shorter than the sequence: the end-aligned kernel does not apply, and the forward from a
    position still equals the whole (windowed) forward."""
    model = tiny.model
    config = model.config
    before = config.sliding_window
    assert reuse.end_aligned_applies(model, embeds.shape[1])
    try:
        config.sliding_window = 6
        assert not reuse.end_aligned_applies(model, embeds.shape[1]) and reuse.end_aligned_applies(model, 6)
        with torch.inference_mode():
            run = reuse.unedited_run(model, embeds, 2)
            with Hooks(model).edit("embed", _edit(9)):
                whole = model(inputs_embeds=embeds, logits_to_keep=2).logits
                started = reuse.forward_from(model, embeds[:, 9:], run, 9, 2)
    finally:
        config.sliding_window = before
    torch.testing.assert_close(started, whole, atol=1e-4, rtol=0)
    with torch.inference_mode(), Hooks(model).edit("embed", _edit(9)):
        unwindowed = model(inputs_embeds=embeds, logits_to_keep=2).logits
    assert (unwindowed - whole).abs().max() > 1e-2  # the window changed the numbers: the check above means something


def test_target_log_probs_reads_each_target_token_under_its_own_position():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 11)
    target = [5, 0, 10, 5]
    expected = torch.stack(
        [torch.stack([torch.log_softmax(logits[r, t], -1)[target[t]] for t in range(4)]) for r in range(3)]
    )
    torch.testing.assert_close(reuse.target_log_probs(logits, target), expected)
    torch.testing.assert_close(reuse.target_log_probs(logits, torch.tensor([target])), expected)
    assert reuse.target_log_probs(logits, [5, 0, 10, 6])[:, 3].ne(expected[:, 3]).all()  # the id read matters
