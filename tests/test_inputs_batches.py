"""Inputs: positions by meaning, token ids taken directly, and batches padded once."""

import pytest
import torch

from phi3lab.prompts.inputs import Inputs

CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "My name is Ada."},
    {"role": "assistant", "content": "Hello Ada."},
    {"role": "user", "content": "What is my name?"},
]


def _text(inputs, positions) -> str:
    table = inputs.table
    return "".join(table.prompt[table.rows[p].start : table.rows[p].end] for p in positions)


def test_positions_by_word_role_and_turn(tiny):
    inputs = tiny.encode(CHAT)
    ada = inputs.positions("Ada")
    assert len(ada) == 2 and all("Ada" in _text(inputs, [p]) for p in ada)  # user 1 and assistant 1
    assert inputs.positions("Ada", role="assistant") == [ada[1]]
    assert _text(inputs, inputs.positions(role="user", turn=2)).strip() == "What is my name?"
    assert _text(inputs, inputs.positions(role="system")).strip() == "Answer briefly."
    assert _text(inputs, inputs.positions(turn=3)).strip() == "Hello Ada."  # the third message, any role
    users = inputs.positions(role="user")
    assert users == inputs.positions(role="user", turn=1) + inputs.positions(role="user", turn=2)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(text="Eve"), ValueError, "'Eve' does not occur in the conversation's text"),
        (dict(text="<|user|>"), ValueError, "template tokens never match"),
        (dict(role="robot"), ValueError, "role='robot' is not a role"),
        (dict(role="user", turn=3), ValueError, "this prompt has no user turn 3"),
        (dict(turn=0), ValueError, "numbered from 1"),
        (dict(), TypeError, "say which positions"),
        (dict(text=""), ValueError, "non-empty string"),
    ],
)
def test_bad_position_questions(tiny, kwargs, error, words):
    with pytest.raises(error, match=words):
        tiny.encode(CHAT).positions(**kwargs)


def test_image_positions(vision, picture):
    inputs = vision.encode("<|image_1|>\nWhat colour is the triangle?", [picture])
    span = inputs.image(0)
    assert inputs.image_positions(0) == list(range(span.start, span.end))
    assert all(inputs.table.rows[p].segment == "image" for p in inputs.image_positions(0))


def test_token_ids_are_taken_directly(tiny):
    encoded = tiny.encode("My name is Ada. What is my name?")
    ids = encoded.input_ids[0].tolist()
    for given in (ids, torch.tensor(ids), torch.tensor([ids])):
        inputs = tiny.encode(given)
        assert torch.equal(inputs.input_ids, encoded.input_ids)
        assert [r.segment for r in inputs.table.rows] == [r.segment for r in encoded.table.rows]
    assert inputs.positions("Ada") == encoded.positions("Ada")
    assert tiny.encode(encoded) is encoded  # an Inputs is taken as it is
    logits, cache = tiny.run_with_cache(ids)
    plain, _ = tiny.run_with_cache("My name is Ada. What is my name?")
    torch.testing.assert_close(logits, plain)


@pytest.mark.parametrize(
    "ids, error, words",
    [
        ([5, 99999], ValueError, "outside the vocabulary 0..2063"),
        ([5, -1], ValueError, "need their pictures"),
        (torch.tensor([[1, 2], [3, 4]]), ValueError, "give one row"),
    ],
)
def test_bad_token_ids(tiny, ids, error, words):
    with pytest.raises(error, match=words):
        tiny.encode(ids)


def test_a_batch_is_padded_once_and_reads_back_per_row(tiny):
    texts = ["Hi", "My name is Ada. What is my name?", "What is 2 plus 3?"]
    batch = tiny.encode_batch(texts)
    assert isinstance(batch, Inputs) and batch.batch_size == 3
    singles = [tiny.encode(t) for t in texts]
    width = max(s.num_tokens for s in singles)
    assert batch.num_tokens == width and batch.padding == [width - s.num_tokens for s in singles]
    for k, single in enumerate(singles):
        pad = batch.padding[k]
        assert batch.input_ids[k, pad:].tolist() == single.input_ids[0].tolist()
        assert batch.attention_mask[k].tolist() == [0] * pad + [1] * single.num_tokens
        assert batch.row(k).table == single.table
    assert batch.positions("Ada", row=1) == [batch.padding[1] + p for p in singles[1].positions("Ada")]
    assert "batch of 3 prompts" in batch.to_text()
    with pytest.raises(IndexError, match="rows 0..2"):
        batch.row(3)


def test_generation_and_sweeps_use_the_one_padding(tiny):
    """chat_batch answers as lab.chat does, row by row, from the padded batch."""
    texts = ["What is 2 plus 3?", "My name is Ada. What is my name?"]
    batch = tiny.chat_batch(texts, max_new_tokens=8)
    for text, result in zip(texts, batch):
        assert result.text == tiny.chat(text, stream=False, max_new_tokens=8).text


def test_a_padded_batch_through_the_hooks_matches_single_prompts(tiny):
    texts = ["Hi", "My name is Ada. What is my name?"]
    batch = tiny.encode_batch(texts)
    logits, cache = tiny.run_with_cache(batch, sites=["resid_post"])
    for k, text in enumerate(texts):
        single_logits, single = tiny.run_with_cache(text, sites=["resid_post"])
        pad = batch.padding[k]
        # positions shift by the pads: RoPE is relative, so only float rounding differs
        torch.testing.assert_close(cache["resid_post", 3][k, pad:], single["resid_post", 3][0], atol=2e-4, rtol=0)


def test_a_batch_of_pictures(vision, picture):
    from phi3lab import sample_image

    chart = sample_image("chart.png")
    batch = vision.encode_batch(
        ["<|image_1|>\nWhat colour is the triangle?", "<|image_1|>\nWhat is shown?"], images=[[picture], [chart]]
    )
    assert batch["pixel_values"].shape[0] == 2 and batch["image_sizes"].shape[0] == 2
    with pytest.raises(ValueError, match="one list per conversation"):
        vision.encode_batch(["<|image_1|>\nA?", "B?"], images=[[picture]])
