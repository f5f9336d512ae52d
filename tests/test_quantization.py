"""Quantized models on the CPU: the same module tree, hooks that fire, and inspection that runs.

torchao's int8 weight-only and bitsandbytes' NF4 both run on the CPU here (torch 2.13); the lead's hook
core (named sites on ``self_attn``, ``qkv_proj``, ``o_proj``, ``mlp``, the decoder layers, ``lm_head``)
relies on what these tests check.
"""

import pytest
import torch

import phi3lab
from phi3lab.runtime.hardware import probe
from phi3lab.runtime.quantization import SKIPPED_MODULES, quantized_modules, weight_of

pytestmark = pytest.mark.slow  # heavy: the full test command runs it, --fast leaves it out

PROBES = probe()
BACKENDS = {"int8": PROBES.torchao, "nf4": PROBES.bitsandbytes}
PROJECTIONS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def needs(quantize: str):
    return pytest.mark.skipif(
        not BACKENDS[quantize],
        reason=f"{'torchao' if quantize == 'int8' else 'bitsandbytes'} is not installed (pip install phi3lab[quant])",
    )


@pytest.fixture(
    scope="module", params=[pytest.param("int8", marks=needs("int8")), pytest.param("nf4", marks=needs("nf4"))]
)
def quantized(request):
    return phi3lab.load("tiny", quantize=request.param, verbose=False)


def test_exactly_the_decoder_projections_are_quantized(quantized, tiny):
    names = set(quantized.quantized_modules())
    layers = tiny.model.config.num_hidden_layers
    assert names == {f"model.layers.{i}.{p}" for i in range(layers) for p in PROJECTIONS}
    assert quantized.quantization in ("int8", "nf4") and quantized_modules(tiny.model) == {}
    # the output head and the embedding keep the compute dtype: lm_head stays exact
    assert quantized.model.lm_head.weight.dtype == quantized.attention.dtype
    assert quantized.model.model.embed_tokens.weight.dtype == quantized.attention.dtype


def test_the_module_tree_keeps_its_names(quantized, tiny):
    assert sorted(n for n, _ in quantized.model.named_modules()) == sorted(n for n, _ in tiny.model.named_modules())


def test_forward_hooks_fire_on_the_named_sites_and_see_tensors(quantized):
    model = quantized.model
    layer = model.model.layers[1]
    sites = {
        "layer": layer,
        "self_attn": layer.self_attn,
        "qkv_proj": layer.self_attn.qkv_proj,
        "o_proj": layer.self_attn.o_proj,
        "mlp": layer.mlp,
        "lm_head": model.lm_head,
    }
    seen = {}

    def keep(name):
        def hook(module, args, output):
            seen[name] = output[0] if isinstance(output, tuple) else output

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in sites.items()]
    pre = []
    handles.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda m, args: pre.append(args[0])))
    try:
        inputs = quantized.encode("What is 2 plus 3?")
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    assert set(seen) == set(sites)
    assert all(type(t) is torch.Tensor for t in seen.values())  # plain tensors, not quantized subclasses
    hidden, tokens = model.config.hidden_size, inputs.num_tokens
    assert seen["qkv_proj"].shape == (1, tokens, 3 * hidden) and seen["o_proj"].shape == (1, tokens, hidden)
    assert pre[0].shape == (1, tokens, hidden) and seen["lm_head"].shape[-1] == model.config.vocab_size


def test_quantized_outputs_differ_but_stay_close(quantized, tiny):
    inputs = tiny.encode("What is 2 plus 3?")
    with torch.no_grad():
        ref = tiny.model(**inputs).logits.float()
        out = quantized.model(**inputs).logits.float()
    assert not torch.equal(ref, out)  # really quantized
    cosine = torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0)
    assert cosine > 0.9, f"cosine {cosine:.3f}"


def test_run_with_cache_and_attribute_run_on_a_quantized_model(quantized, tiny):
    answer, cache = quantized.generate_with_cache("What is 2 plus 3?", max_new_tokens=3)
    _, plain = tiny.generate_with_cache("What is 2 plus 3?", max_new_tokens=3)
    assert cache.attention(0).shape[:2] == plain.attention(0).shape[:2]
    assert torch.isfinite(cache.attention(0)).all() and torch.isfinite(cache.residual(1)).all()
    rows = cache.attention(0).sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-3, rtol=0)  # each row a distribution
    attr = quantized.attribute("My name is Ada. What is my name?", units="words", method="ablation")
    assert "ablation" in attr.to_text() and len(attr.units) == 8


@needs("nf4")
def test_a_quantized_vision_model_keeps_its_clip_tower_whole(vision, picture):
    lab = phi3lab.load("tiny-vision", quantize="nf4", verbose=False)
    names = lab.quantized_modules()
    assert names and not any("vision_embed_tokens" in n for n in names)
    assert "model.vision_embed_tokens" in SKIPPED_MODULES
    _, cache = lab.generate_with_cache("<|image_1|>\nWhat colour is the triangle?", [picture], max_new_tokens=2)
    heat = cache.image_heat(0)
    assert heat.crops.size and "num_crops" in heat.to_text()


@needs("int8")
def test_the_same_checkpoint_unquantized_for_comparison():
    lab = phi3lab.load("tiny", quantize="int8", dtype="bfloat16", context=512, verbose=False)
    full = lab.unquantized()
    assert full.quantization is None and full.quantized_modules() == {}
    assert full.path == lab.path and full.attention.dtype == torch.bfloat16 and full.memory.usage.context == 512
    assert "int8 (torchao)" in lab.info() and "int8" not in full.info().split("size")[1].splitlines()[0]


def test_info_counts_parameters_as_published(quantized, tiny):
    assert quantized.num_parameters == tiny.num_parameters
    size = next(line for line in quantized.info().splitlines() if line.startswith("size"))
    assert quantized.memory.weights_name in size


def test_weight_of_gives_the_matrix_a_quantized_layer_multiplies_by(quantized, tiny):
    """What verify()'s ``Σ_heads z W_O = attn_out`` check needs: ``o_proj.weight`` itself is packed codes."""
    for name in ("self_attn.o_proj", "mlp.down_proj"):
        module = quantized.model.get_submodule(f"model.layers.2.{name}")
        full = tiny.model.get_submodule(f"model.layers.2.{name}").weight
        weight = weight_of(module)
        assert weight.shape == full.shape
        x = torch.randn(5, weight.shape[1], dtype=quantized.attention.dtype)
        with torch.no_grad():
            torch.testing.assert_close(
                module(x), torch.nn.functional.linear(x, weight.to(x.dtype)), atol=1e-4, rtol=1e-3
            )
        error = (weight.float() - full.float()).abs().max() / full.abs().max()
        assert 0 < error < 0.2  # quantized: close to the published matrix, not equal to it
    assert weight_of(tiny.model.lm_head) is tiny.model.lm_head.weight


@pytest.mark.parametrize(
    "quantize", [pytest.param("int8", marks=needs("int8")), pytest.param("nf4", marks=needs("nf4"))]
)
def test_verify_on_a_quantized_model_states_the_difference(quantize):
    """The hook core reads a quantized model's sites exactly (every check passes), and verify states how
    far quantization moved the logits and the residual stream from the same checkpoint unquantized."""
    lab = phi3lab.load("tiny", quantize=quantize, verbose=False)
    result = lab.verify()
    assert result.ok, result.to_text()
    assert result.quantized and result.quantization[0][0] == "logits"
    moved = dict(result.quantization)
    assert 0 < moved["logits"] < 5  # moved, but not far
    assert "(stated, not a check)" in result.to_text()
    assert not phi3lab.load("tiny", verbose=False).verify().quantized


def _bf16_kernel() -> bool:
    if not BACKENDS["nf4"]:
        return False
    from phi3lab.runtime.quantization import import_backend

    return bool(import_backend("bitsandbytes").functional.has_avx512bf16())


@needs("nf4")
def test_nf4_layers_compute_in_the_models_dtype_on_every_cpu():
    """bitsandbytes repacks NF4 weights for a bfloat16 kernel on CPUs with AVX512-BF16 (results would then
    depend on the CPU); load switches that off, so a forward leaves the weights as loaded."""
    lab = phi3lab.load("tiny", quantize="nf4", verbose=False)
    lab.run_with_cache("What is 2 plus 3?")
    layers = [m for m in lab.model.modules() if type(getattr(m, "weight", None)).__name__ == "Params4bit"]
    assert layers and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    assert not any(m.support_avx512bf16_for_cpu for m in layers)


@pytest.mark.skipif(not _bf16_kernel(), reason="this CPU has no AVX512-BF16: bitsandbytes never repacks here")
def test_weight_of_reads_a_layer_repacked_for_the_bf16_kernel():
    lab = phi3lab.load("tiny", quantize="nf4", verbose=False)
    module = lab.model.get_submodule("model.layers.1.mlp.down_proj")
    before = weight_of(module)
    module.support_avx512bf16_for_cpu = True  # as bitsandbytes sets it on such a CPU
    x = torch.randn(5, module.in_features)
    with torch.no_grad():
        out = module(x)
    assert module.weight.quant_state.packing_format_for_cpu  # repacked: the codes are laid out anew
    weight = weight_of(module)
    assert weight.shape == before.shape
    torch.testing.assert_close(weight.float(), before.float(), atol=0.02 * before.abs().max().item(), rtol=0)
    torch.testing.assert_close(out, torch.nn.functional.linear(x, weight.to(x.dtype)), atol=0.05, rtol=0.02)
