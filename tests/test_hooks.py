"""The hook core: named sites read and edited through one owner, equal to what the model computes."""

import threading

import pytest
import torch

from phi3lab.inspect.hooks import Hooks, NothingRecordedError
from phi3lab.inspect.kernel import rotate, split_heads
from phi3lab.inspect.memory import MemoryLimitError
from phi3lab.inspect.sites import SITES, Positions

PROMPT = "My name is Ada. What is my name?"


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _run(lab, hooks, text=PROMPT, **kwargs):
    inputs = lab.encode(text)
    with hooks, torch.no_grad():
        out = lab.model(**inputs, **kwargs)
    return inputs, out


# --- reading -----------------------------------------------------------------------------------------------


def test_every_text_site_reads_with_its_documented_shape(tiny):
    config = tiny.model.config
    hooks = Hooks(tiny.model)
    for name, site in SITES.items():
        if site.vision:
            continue
        hooks.read(name) if not site.per_layer else hooks.read(name, [1])
    inputs, out = _run(tiny, hooks)
    b, t, d, h = 1, inputs.num_tokens, config.hidden_size, config.num_attention_heads
    hd = d // h
    shapes = {
        "embed": (b, t, d),
        "resid_pre": (b, t, d),
        "attn_out": (b, t, d),
        "resid_mid": (b, t, d),
        "mlp_out": (b, t, d),
        "resid_post": (b, t, d),
        "q": (b, t, h, hd),
        "k": (b, t, config.num_key_value_heads, hd),
        "v": (b, t, config.num_key_value_heads, hd),
        "z": (b, t, h, hd),
        "pattern": (b, h, t, t),
        "logits": (b, t, config.vocab_size),
    }
    for name, shape in shapes.items():
        key = name if not SITES[name].per_layer else (name, 1)
        assert tuple(hooks[key].shape) == shape, name
    torch.testing.assert_close(hooks["logits"], out.logits)


def test_reads_equal_what_transformers_returns(tiny):
    inputs = tiny.encode(PROMPT)
    hooks = Hooks(tiny.model).read("embed").read("resid_post", "all").read("resid_pre", "all")
    with hooks, torch.no_grad():
        out = tiny.model(**inputs, output_hidden_states=True)
    torch.testing.assert_close(hooks["embed"], out.hidden_states[0], atol=0, rtol=0)
    for layer in range(3):  # the last hidden state has the final norm applied
        torch.testing.assert_close(hooks["resid_post", layer], out.hidden_states[layer + 1], atol=0, rtol=0)
        torch.testing.assert_close(hooks["resid_pre", layer + 1], hooks["resid_post", layer], atol=0, rtol=0)


def test_queries_and_keys_are_the_rotated_projections(tiny):
    inputs = tiny.encode(PROMPT)
    attn = tiny.model.model.layers[2].self_attn
    hooks = Hooks(tiny.model).read("q", 2).read("k", 2).read("v", 2).read("resid_pre", 2)
    with hooks, torch.no_grad():
        tiny.model(**inputs)
    with torch.no_grad():  # the same computation by hand, outside the block
        normed = tiny.model.model.layers[2].input_layernorm(hooks["resid_pre", 2])
        positions = torch.arange(inputs.num_tokens)[None]
        cos, sin = tiny.model.model.rotary_emb(normed, positions)
        q, k, v = split_heads(attn, attn.qkv_proj(normed), (cos, sin))
    for name, manual in zip("qkv", (q, k, v)):
        torch.testing.assert_close(hooks[name, 2], manual.transpose(1, 2), atol=1e-6, rtol=0)


def test_reads_remember_no_layer_inputs(tiny):
    """What the q/k/v and pattern reads remember of each attention call is the rotation, the mask and the
    cache, never the layer's input (keeping it held every layer's hidden states through the forward:
    rollout's extra memory at Phi-3 width went from 0.07 to 0.16 of eager's, benchmarks/attention_capture.py)."""
    inputs = tiny.encode(PROMPT)
    hooks = Hooks(tiny.model).read("q", "all").read("pattern", 1)
    with hooks, torch.no_grad():
        tiny.model(**inputs)
        remembered = [v for k, v in vars(hooks._local).items() if isinstance(k, tuple) and k[0] == "attn"]
        assert len(remembered) == tiny.model.config.num_hidden_layers
        for call in remembered:
            assert set(call) == {"position_embeddings", "attention_mask", "past_key_values"}
            assert not any(
                v is not None and v.shape[-1] == tiny.model.config.hidden_size
                for v in call.values()
                if isinstance(v, torch.Tensor)
            )


def test_positions_and_heads_select_what_is_kept(tiny):
    inputs = tiny.encode(PROMPT)
    n = inputs.num_tokens
    hooks = Hooks(tiny.model).read("z", 1, heads=[0, 2], positions=[1, -1]).read("resid_post", 0, positions="last")
    with hooks, torch.no_grad():
        tiny.model(**inputs)
    full = Hooks(tiny.model).read("z", 1)
    with full, torch.no_grad():
        tiny.model(**inputs)
    torch.testing.assert_close(hooks["z", 1], full["z", 1][:, [1, n - 1]][:, :, [0, 2]])
    assert hooks.positions("z", 1).tolist() == [1, n - 1]
    assert hooks.positions("resid_post", 0).tolist() == [n - 1]


def test_positions_across_generation():
    p = Positions("last")
    assert p.rows(seen=0, length=6, prompt=6).tolist() == [5]
    assert p.rows(seen=6, length=1, prompt=6).tolist() == [0]  # each new token is the last of its forward
    fixed = Positions([2, -1])
    assert fixed.rows(seen=0, length=6, prompt=6).tolist() == [2, 5]
    assert fixed.rows(seen=6, length=1, prompt=6).tolist() == []  # a fixed position is not a new token
    assert Positions([2], new=True).rows(seen=7, length=1, prompt=6).tolist() == [0]
    assert Positions(slice(-2, None)).rows(seen=0, length=6, prompt=6).tolist() == [4, 5]
    assert Positions(lambda p: p % 2 == 0).rows(seen=0, length=5, prompt=5).tolist() == [0, 2, 4]


@pytest.mark.parametrize(
    "spec, error, words",
    [
        ("first", ValueError, "'all', 'last'"),
        (slice(5, 2), ValueError, "selects no positions"),
        (slice(0, 4, -1), ValueError, "step forward"),
        ([], TypeError, "non-empty list"),
        ([1.5], TypeError, "list of ints"),
        (True, TypeError, "positions must be"),
        (3.0, TypeError, "positions must be"),
    ],
)
def test_bad_positions(spec, error, words):
    with pytest.raises(error, match=words):
        Positions(spec)


def test_bad_reads_and_edits_say_what_to_do(tiny, vision):
    hooks = Hooks(tiny.model)
    with pytest.raises(ValueError, match="'resid' is not a site; the sites are embed, resid_pre"):
        hooks.read("resid")
    with pytest.raises(ValueError, match="'embed' has no layers"):
        hooks.read("embed", 2)
    with pytest.raises(ValueError, match="no heads axis"):
        hooks.read("resid_post", heads=1)
    with pytest.raises(ValueError, match="can be read but not edited"):
        hooks.edit("pattern", lambda v, at: v)
    with pytest.raises(ValueError, match="Phi-3-vision site"):
        hooks.read("clip", 0)
    with pytest.raises(TypeError, match="function of \\(value, at\\)"):
        hooks.edit("z", "zero")
    with pytest.raises(IndexError, match="layers 0..3"):
        hooks.read("q", 9)
    with pytest.raises(ValueError, match="keep='disk' is not a choice"):
        hooks.read("q", 0, keep="disk")
    with pytest.raises(TypeError, match="expected a torch model"):
        Hooks("tiny")
    _run(tiny, hooks.read("q", 0))
    with pytest.raises(NothingRecordedError, match="nothing was recorded for 'k'"):
        hooks["k", 0]
    with pytest.raises(TypeError, match="'q' is per layer"):
        hooks["q"]
    with pytest.raises(TypeError, match="image_embeds takes 'all' or picture numbers"):
        Hooks(vision.model).read("image_embeds", [-1])


# --- editing -----------------------------------------------------------------------------------------------


def test_an_edit_changes_the_run_and_a_no_op_edit_does_not(tiny):
    inputs = tiny.encode(PROMPT)
    with torch.no_grad():
        plain = tiny.model(**inputs).logits
    for site in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post", "q", "k", "v", "z", "embed"):
        layers = {} if site == "embed" else {"layers": 1}
        _, same = _run(tiny, Hooks(tiny.model).edit(site, lambda v, at: v.clone(), **layers))
        torch.testing.assert_close(same.logits, plain, atol=1e-5, rtol=0, msg=site)
        _, changed = _run(tiny, Hooks(tiny.model).edit(site, lambda v, at: v * 0.5, **layers))
        assert (changed.logits - plain).abs().max() > 1e-3, site


def test_a_head_zeroed_at_z_equals_removing_its_o_proj_columns(tiny):
    inputs = tiny.encode(PROMPT)
    o_proj = tiny.model.model.layers[2].self_attn.o_proj
    head_dim = tiny.model.model.layers[2].self_attn.head_dim
    _, edited = _run(tiny, Hooks(tiny.model).edit("z", lambda z, at: torch.zeros_like(z), 2, heads=[3]))
    saved = o_proj.weight.data.clone()
    try:
        o_proj.weight.data[:, 3 * head_dim : 4 * head_dim] = 0
        with torch.no_grad():
            manual = tiny.model(**inputs).logits
    finally:
        o_proj.weight.data.copy_(saved)
    torch.testing.assert_close(edited.logits, manual, atol=1e-5, rtol=0)


def test_a_rotated_key_edit_is_written_back_before_the_rotation(tiny):
    """Edit the rotated key of one position to another position's rotated key: the pattern read after the
    edit sees exactly those keys."""
    inputs = tiny.encode(PROMPT)

    def copy_key(k, at):
        k = k.clone()
        k[:, 3] = k[:, 5]
        return k

    hooks = Hooks(tiny.model).edit("k", copy_key, 1).read("k", 1)
    with hooks, torch.no_grad():
        tiny.model(**inputs)
    keys = hooks["k", 1]
    torch.testing.assert_close(keys[:, 3], keys[:, 5], atol=1e-5, rtol=0)


def test_edits_see_positions_and_heads_and_at(tiny):
    calls = []

    def note(value, at):
        calls.append((at.site, at.layer, at.step, at.positions.tolist(), at.heads, tuple(value.shape)))
        return None

    inputs, _ = _run(tiny, Hooks(tiny.model).edit("z", note, [0, 2], heads=[1], positions=[2, 4]))
    assert calls == [("z", 0, 0, [2, 4], (1,), (1, 2, 1, 32)), ("z", 2, 0, [2, 4], (1,), (1, 2, 1, 32))]


def test_wrong_edit_results_are_refused(tiny):
    with pytest.raises(ValueError, match="returned shape .* must keep the shape"):
        _run(tiny, Hooks(tiny.model).edit("resid_post", lambda v, at: v[:, :1], 0))
    with pytest.raises(TypeError, match="returned a float"):
        _run(tiny, Hooks(tiny.model).edit("resid_post", lambda v, at: 1.0, 0))
    assert _hook_count(tiny.model) == _hook_count(tiny.model)  # nothing left behind (checked below too)


def test_outer_edits_are_seen_by_inner_reads(tiny):
    inputs = tiny.encode(PROMPT)
    with Hooks(tiny.model).edit("resid_pre", lambda v, at: v * 0 + 1.0, 2), torch.no_grad():
        inner = Hooks(tiny.model).read("resid_pre", 2)
        with inner:
            tiny.model(**inputs)
    assert bool((inner["resid_pre", 2] == 1.0).all())


# --- the block ---------------------------------------------------------------------------------------------


def test_hooks_are_removed_on_exit_and_on_error(tiny):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    before, interface = _hook_count(tiny.model), dict(ALL_ATTENTION_FUNCTIONS.__dict__)
    with Hooks(tiny.model).read("pattern", "all").edit("z", lambda z, at: None, 1):
        assert _hook_count(tiny.model) > before
        assert dict(ALL_ATTENTION_FUNCTIONS.__dict__) == interface  # nothing global is patched
    assert _hook_count(tiny.model) == before
    with pytest.raises(ZeroDivisionError), Hooks(tiny.model).read("q", 0):
        _ = 1 / 0
    assert _hook_count(tiny.model) == before
    with pytest.raises(ValueError), Hooks(tiny.model).edit("resid_post", lambda v, at: v[:, :1], 0), torch.no_grad():
        tiny.model(**tiny.encode("Hi"))
    assert _hook_count(tiny.model) == before


def test_reads_count_against_the_memory_limit(tiny):
    with pytest.raises(MemoryLimitError, match="reading 'resid_post'.*read fewer sites"):
        _run(tiny, Hooks(tiny.model, max_bytes=1000).read("resid_post", "all"))
    hooks = Hooks(tiny.model, max_bytes=10**6).read("resid_post", "all")
    inputs, _ = _run(tiny, hooks)
    assert hooks.nbytes == 4 * 4 * inputs.num_tokens * tiny.model.config.hidden_size


def test_graph_reads_keep_gradients(tiny):
    inputs = tiny.encode(PROMPT)
    hooks = Hooks(tiny.model).read("q", 1, keep="graph").read("resid_post", 1, keep="graph")
    with hooks:
        tiny.model(**inputs)
    assert hooks["q", 1].requires_grad and hooks["resid_post", 1].requires_grad
    hooks["q", 1].sum().backward()
    assert tiny.model.model.layers[1].self_attn.qkv_proj.weight.grad is not None
    tiny.model.zero_grad(set_to_none=True)


def test_a_pre_hook_called_without_kwargs_is_skipped(tiny):
    """torch registers a pre-hook and its with_kwargs flag in two steps (and removes them in two), so another
    thread's forward can call it without kwargs in between; it must not raise (it failed once in CI with
    "_track() missing 1 required positional argument: 'kwargs'")."""
    layer = tiny.model.model.layers[0]
    before = set(layer._forward_pre_hooks)
    with Hooks(tiny.model).read("resid_pre", layers=[0]):
        added = [layer._forward_pre_hooks[k] for k in layer._forward_pre_hooks if k not in before]
        assert added
        for hook in added:
            assert hook(layer, (torch.zeros(1, 3, tiny.model.config.hidden_size),)) is None  # the race window
    assert set(layer._forward_pre_hooks) == before


def test_two_threads_on_one_model_keep_separate_records(tiny):
    """Each block sees only its own thread's forwards: no mixed records (the chat widget answering in the
    background while a notebook runs run_with_cache, or two run_with_cache at once)."""
    prompts = {"a": "What is 2 plus 3?", "b": "My name is Ada. What is my name? Spell the word apple."}
    results, errors = {}, []
    barrier = threading.Barrier(2)

    def work(key):
        try:
            barrier.wait()
            for _ in range(3):
                answer, cache = tiny.generate_with_cache(prompts[key], max_new_tokens=4, positions="last")
            results[key] = (answer, cache)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for key, (answer, cache) in results.items():
        n = cache.prompt_tokens
        assert cache.positions == list(range(n - 1, n - 1 + len(answer.token_ids)))  # one row per own token
        alone_answer, alone = tiny.generate_with_cache(prompts[key], max_new_tokens=4, positions="last")
        torch.testing.assert_close(cache.attention(3), alone.attention(3), atol=1e-6, rtol=0)


def test_a_background_chat_does_not_reach_an_open_block(tiny):
    hooks = Hooks(tiny.model).read("resid_post", 0)
    inputs = tiny.encode("Hi")
    with hooks, torch.no_grad():
        chat = threading.Thread(target=lambda: tiny.chat("What is 2 plus 3?", stream=False, max_new_tokens=5))
        chat.start()
        chat.join()
        tiny.model(**inputs)
    assert len(hooks.calls("resid_post", 0)) == 1 and hooks["resid_post", 0].shape[1] == inputs.num_tokens


# --- Phi-3-vision sites ------------------------------------------------------------------------------------


def test_vision_sites(vision, picture):
    inputs = vision.encode("<|image_1|>\nWhat colour is the triangle?", [picture])
    span = inputs.image(0)
    clip_layers = len(vision.model.model.vision_embed_tokens.img_processor.vision_model.encoder.layers) - 1  # run
    hooks = Hooks(vision.model).read("image_embeds").read("clip", [0, clip_layers - 1]).read("embed")
    with hooks, torch.no_grad():
        vision.model(**inputs)
    assert hooks["image_embeds", 0].shape == (span.num_tokens, vision.model.config.hidden_size)
    torch.testing.assert_close(hooks["embed"][0, span.start : span.end], hooks["image_embeds", 0])
    with pytest.raises(IndexError, match=f"layers 0..{clip_layers - 1}"):
        Hooks(vision.model).read("clip", clip_layers)  # the top layer never runs: nothing to read there
    views = span.layout.grid[0] * span.layout.grid[1] + 1  # crops and the global view (identical views run once)
    assert 1 <= hooks["clip", 0].shape[0] <= views and hooks["clip", 0].shape == hooks["clip", clip_layers - 1].shape
    # an edit of the picture's tokens reaches the embeddings the decoder reads
    edited = Hooks(vision.model).edit("image_embeds", lambda v, at: v * 0).read("embed")
    with edited, torch.no_grad():
        vision.model(**inputs)
    assert float(edited["embed"][0, span.start : span.end].abs().max()) == 0.0
    assert float(edited["embed"][0, : span.start].abs().max()) > 0


# --- rotation helper ---------------------------------------------------------------------------------------


def test_rotation_round_trip_with_partial_rotary():
    x = torch.randn(1, 2, 5, 8)
    angle = torch.rand(1, 5, 2).repeat(1, 1, 2)  # the first 4 of 8 channels turn
    from phi3lab.inspect.kernel import unrotate

    turned = rotate(x, angle.cos(), angle.sin())
    assert torch.equal(turned[..., 4:], x[..., 4:])
    torch.testing.assert_close(unrotate(turned, angle.cos(), angle.sin()), x, atol=1e-6, rtol=0)
