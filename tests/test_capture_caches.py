"""Captured attention rows equal eager attention for every KV-cache layout and Phi-3 attention variant,
generation included: past a sliding window (each row at its keys' true positions), static caches,
LongRoPE across its switch, partial rotary, grouped key/value heads; attribution's reuse of the prompt's
keys and values is exact past a window too.  (Issue: rows written from key 0 after the window slid.)"""

import contextlib

import pytest
import torch
from transformers import DynamicCache, Phi3Config, Phi3ForCausalLM
from transformers.cache_utils import DynamicLayer

from phi3lab.inspect.capture import capture


@contextlib.contextmanager
def eager(model):
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def random_model(**overrides) -> Phi3ForCausalLM:
    torch.manual_seed(0)
    settings = dict(
        vocab_size=120,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
    )
    settings.update(overrides)
    model = Phi3ForCausalLM(Phi3Config(**settings)).eval()
    model.set_attn_implementation("sdpa")
    return model


def generate_and_capture(model, ids, new=8, **generate):
    with capture(model, positions="last") as cap, torch.no_grad():
        out = model.generate(
            input_ids=ids, max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0, **generate
        )
    return cap, out


def eager_rows(model, out, prompt: int, new: int):
    """Eager attention of a full forward over the prompt and every fed-back token, at the answer's rows."""
    with eager(model), torch.no_grad():
        maps = model(input_ids=out[:, : prompt + new - 1], output_attentions=True).attentions
    return [m[:, :, prompt - 1 :] for m in maps]


@pytest.mark.parametrize("window", [None, 16])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generated_rows_equal_eager_for_every_cache_layout(cache, window):
    """Dynamic and static caches, with and without a sliding window (prompt 40 > window 16)."""
    model = random_model(sliding_window=window)
    ids = torch.randint(2, 120, (1, 40))
    kwargs = {} if cache == "dynamic" else {"cache_implementation": "static"}
    cap, out = generate_and_capture(model, ids, new=8, **kwargs)
    refs = eager_rows(model, out, 40, 8)
    for layer in range(2):
        got = cap.weights(layer)
        assert got.shape == refs[layer].shape  # rows over absolute positions 0 … 46
        torch.testing.assert_close(got, refs[layer], atol=1e-5, rtol=0)
        assert cap.positions(layer).tolist() == [list(range(39, 47))]
    if window:  # nothing outside the window: the last row sees only positions 31 … 46
        assert float(cap.weights(0)[0, :, -1, : 47 - window].sum()) == 0.0
        assert cap.weights(0)[0, :, -1, 47 - window :].sum(-1).allclose(torch.ones(8))


def test_rows_past_the_window_on_the_embedded_model(tiny):
    """The embedded model with a 24-token window: the answer's rows over a 56-token chat."""
    import phi3lab

    lab = phi3lab.load("tiny", verbose=False)
    lab.model.config.sliding_window = 24
    inputs = lab.encode("My name is Ada. I like green and the number seven. What is 2 plus 3? " * 2)
    n = inputs.num_tokens
    assert n > 2 * 24
    with capture(lab.model, positions="last") as cap, torch.no_grad():
        out = lab.model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    refs = eager_rows(lab.model, out, n, 6)
    for layer in range(lab.model.config.num_hidden_layers):
        torch.testing.assert_close(cap.weights(layer), refs[layer], atol=1e-5, rtol=0)


def test_run_with_cache_past_the_window_maps_to_the_right_tokens():
    """The Cache's answer rows (and what they look at) are the windowed model's, not shifted ones."""
    import phi3lab

    lab = phi3lab.load("tiny", verbose=False)
    lab.model.config.sliding_window = 20
    answer, cache = lab.generate_with_cache(
        "My name is Ada. What is 2 plus 3? " * 3, max_new_tokens=4, positions="last"
    )
    n = cache.num_tokens
    full = torch.tensor([list(cache.inputs.input_ids[0]) + list(cache.answer_ids[:-1])])
    with eager(lab.model), torch.no_grad():
        maps = lab.model(input_ids=full, output_attentions=True).attentions
    for layer in cache.layers:
        rows = cache.attention(layer)
        torch.testing.assert_close(rows, maps[layer][:, :, -rows.shape[2] :], atol=1e-5, rtol=0)
        assert float(rows[0, :, -1, : n - 20].sum()) == 0.0


def test_longrope_switch_while_generating_matches_the_eager_kernel():
    """LongRoPE switches from short to long factors past original_max_position_embeddings (4,096 on the
    real 128k models, 32 here) while generating; the captured rows equal eager generation's own rows
    (the keys cached before the switch keep their rotation, as in the kernel)."""
    head_dim = 8
    model = random_model(
        max_position_embeddings=128,
        original_max_position_embeddings=32,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": [1.0] * (head_dim // 2),
            "long_factor": [4.0] * (head_dim // 2),
            "original_max_position_embeddings": 32,
        },
    )
    ids = torch.randint(2, 120, (1, 28))
    cap, out = generate_and_capture(model, ids, new=10)
    with eager(model), torch.no_grad():
        ref = model.generate(
            input_ids=ids,
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            output_attentions=True,
            return_dict_in_generate=True,
        )
    assert torch.equal(ref.sequences, out)
    total = 28 + 9
    for layer in range(2):
        steps = [step[layer][:, :, -1:] for step in ref.attentions]  # the last row of each step
        expected = torch.cat([torch.nn.functional.pad(s, (0, total - s.shape[-1])) for s in steps], dim=2)
        torch.testing.assert_close(cap.weights(layer), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(partial_rotary_factor=0.5),  # Phi-4-mini rotates part of each head
        dict(num_key_value_heads=8),  # no grouping
        dict(num_key_value_heads=1),  # one key/value head for all
        dict(partial_rotary_factor=0.75, sliding_window=12),
    ],
)
def test_attention_variants_equal_eager_while_generating(overrides):
    model = random_model(**overrides)
    ids = torch.randint(2, 120, (1, 30))
    cap, out = generate_and_capture(model, ids, new=6)
    refs = eager_rows(model, out, 30, 6)
    for layer in range(2):
        torch.testing.assert_close(cap.weights(layer), refs[layer], atol=1e-5, rtol=0)


def test_an_unknown_cache_layer_is_refused_clearly():
    class Quantized(DynamicLayer):
        pass

    model = random_model()
    cache = DynamicCache()
    cache.layers = [Quantized() for _ in range(2)]
    ids = torch.randint(2, 120, (1, 10))
    with pytest.raises(NotImplementedError, match="uses Quantized.*default cache"):
        with capture(model) as _, torch.no_grad():
            model(input_ids=ids, past_key_values=cache, use_cache=True)


def test_attribution_prefix_reuse_is_exact_past_the_window():
    """The Scorer reuses the unperturbed prompt's keys and values; past a window it must still equal
    full forwards (it failed with the window's truncated cache cut at the first removed unit)."""
    import phi3lab
    from phi3lab.attribution.forward import Scorer
    from phi3lab.attribution.units import build_units
    from phi3lab.inspect.reuse import target_log_probs

    lab = phi3lab.load("tiny", verbose=False)
    lab.model.config.sliding_window = 12
    conversation = [
        {"role": "user", "content": "My name is Ada. I like green."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is 2 plus 3? What is my name?"},
    ]
    inputs = lab.encode(conversation)
    assert inputs.num_tokens > 3 * 12
    units = build_units(inputs, ["messages"])
    target = torch.tensor([lab.tokenizer.convert_tokens_to_ids("▁Ada")])
    scorer = Scorer(lab.model, inputs, units, target, baseline_id=lab.tokenizer.pad_token_id)
    presence = torch.ones(len(units), len(units))
    presence[torch.arange(len(units)), torch.arange(len(units))] = 0  # one unit removed per row
    got = scorer(presence)
    with torch.no_grad():
        embeds = scorer.embeddings(presence == 0)
        full = lab.model(inputs_embeds=embeds, use_cache=False).logits[:, -scorer.n_target :]
    torch.testing.assert_close(got, target_log_probs(full, scorer.target), atol=1e-4, rtol=0)
    assert (got - scorer.log_prob).abs().max() > 1e-3  # removals do change the score


@pytest.mark.slow
@pytest.mark.reference
def test_phi3_mini_4k_shape_past_its_window(reference):
    """At Phi-3-mini-4k-instruct's real width (hidden 3072, 32 heads, window 2,047; 2 of its 32 layers,
    random weights, the real tokenizer and template): a 2,100-token chat generating past the window
    gives answer rows equal to eager, and message attributions equal full forwards, both within 1e-4."""
    from transformers import AutoTokenizer

    from phi3lab.attribution.forward import Scorer
    from phi3lab.attribution.units import build_units
    from phi3lab.inspect.reuse import target_log_probs
    from phi3lab.runtime.attention_backend import select_attention
    from phi3lab.runtime.lab import Lab
    from phi3lab.runtime.registry import lookup

    torch.manual_seed(0)
    config = Phi3Config(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=2,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
        sliding_window=2047,
        pad_token_id=32000,
        eos_token_id=32000,
        bos_token_id=1,
    )
    model = Phi3ForCausalLM(config).eval()
    model.set_attn_implementation("sdpa")
    folder = reference / "phi3v-tiny-random" / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = (reference / "chat-templates" / "phi3-mini-2024-07.jinja").read_text()
    lab = Lab(
        model,
        tokenizer,
        select_attention(device="cpu", attn="sdpa"),
        lookup("microsoft/Phi-3-mini-4k-instruct"),
        folder,
        "local",
    )
    filler = " ".join(f"item {i} is {i * 7 % 13}." for i in range(236))
    conversation = [
        {"role": "user", "content": "Remember these. " + filler},
        {"role": "assistant", "content": "I will remember them."},
        {"role": "user", "content": "What is item 5?"},
    ]
    answer, cache = lab.generate_with_cache(conversation, max_new_tokens=6, positions="last")
    n = cache.prompt_tokens
    assert 2047 < n < 2300
    full = torch.tensor([list(cache.inputs.input_ids[0]) + list(cache.answer_ids[:-1])])
    with eager(model), torch.no_grad():
        maps = model(input_ids=full, output_attentions=True).attentions
    for layer in (0, 1):
        rows = cache.attention(layer)
        assert (rows - maps[layer][:, :, -rows.shape[2] :]).abs().max() < 1e-4

    inputs = lab.encode(conversation)
    units = build_units(inputs, ["messages"])
    target = torch.tensor(list(cache.answer_ids[:4]))
    scorer = Scorer(model, inputs, units, target, baseline_id=tokenizer.pad_token_id)
    presence = torch.ones(len(units), len(units))
    presence[torch.arange(len(units)), torch.arange(len(units))] = 0
    got = scorer(presence)
    with torch.no_grad():
        reference_scores = []
        for row in range(len(units)):
            embeds = scorer.embeddings(presence[row : row + 1] == 0)
            logits = model(inputs_embeds=embeds, use_cache=False, logits_to_keep=scorer.n_target).logits
            reference_scores.append(target_log_probs(logits, scorer.target))
    assert (got - torch.cat(reference_scores)).abs().max() < 1e-4
