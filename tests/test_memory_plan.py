"""The memory plan (dtype and weight quantization from the available memory), on simulated machines.

Machines are written by hand as :class:`Probes` and :class:`DeviceMemory`, as the attention choice is
tested; the models are the registry's real numbers, so the figures are Phi-3's.
"""

import math

import pytest
import torch

import phi3lab
from phi3lab.runtime import memory as memory_module
from phi3lab.runtime.hardware import DeviceMemory, Probes
from phi3lab.runtime.memory import (
    HEADROOM,
    NotEnoughMemoryError,
    QuantizationError,
    Usage,
    Weights,
    estimate_memory,
    plan_memory,
)
from phi3lab.runtime.registry import lookup

GiB = 2**30
MINI = lookup("microsoft/Phi-3-mini-4k-instruct").architecture
VISION = lookup("microsoft/Phi-3-vision-128k-instruct").architecture
MEDIUM = lookup("microsoft/Phi-3-medium-4k-instruct").architecture
LAPTOP_CPU = Probes(torchao=True, bitsandbytes=True)
BARE_CPU = Probes()  # no quantization backend installed
RTX_4060 = Probes(
    cuda=True, capability=(8, 9), gpu_name="RTX 4060 Laptop", cuda_bf16=True, bitsandbytes=True, gpu_count=1
)
RTX_4060_NO_BNB = Probes(cuda=True, capability=(8, 9), gpu_name="RTX 4060 Laptop", cuda_bf16=True)
MAC = Probes(mps=True, torchao=True, bitsandbytes=True)


def cpu(available_gib: float, total_gib: float = 16) -> DeviceMemory:
    return DeviceMemory("cpu", int(available_gib * GiB), int(total_gib * GiB))


def cuda(available_gib: float, total_gib: float = 8) -> DeviceMemory:
    return DeviceMemory("cuda", int(available_gib * GiB), int(total_gib * GiB))


# --- the estimate ----------------------------------------------------------------------------------


def test_weights_are_the_published_parameters_times_the_element_size():
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2)):
        assert estimate_memory(MINI, dtype).weights == 3_821_079_552 * size
    # the figures: 15.3 GB in float32, 7.6 GB in bfloat16 (decimal gigabytes)
    assert round(estimate_memory(MINI, torch.float32).weights / 1e9, 1) == 15.3
    assert round(estimate_memory(MINI, torch.bfloat16).weights / 1e9, 1) == 7.6


def test_quantization_shrinks_only_the_projections():
    full = Weights.from_architecture(MINI)
    projections = MINI.linear_parameters
    rest = MINI.parameters - projections
    rows = MINI.layers * sum(r for r, _ in MINI.linear_shapes)
    assert full.nbytes(torch.bfloat16, "int8") == projections + 4 * rows + 2 * rest
    nf4 = full.nbytes(torch.bfloat16, "nf4")
    assert 0.5 * projections + 2 * rest < nf4 < 0.53 * projections + 2 * rest
    assert nf4 < full.nbytes(torch.bfloat16, "int8") < full.nbytes(torch.bfloat16) / 1.6


def test_the_checkpoint_headers_count_what_the_model_holds(tiny):
    from safetensors import safe_open

    with safe_open(tiny.path / "model.safetensors", framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    weights = Weights.from_shapes(shapes)
    assert weights.parameters == tiny.num_parameters
    assert len(weights.projections) == 4 * tiny.model.config.num_hidden_layers  # qkv, o, gate_up, down per layer
    assert tiny.memory.estimate.weights == weights.nbytes(torch.float32)


def test_activations_grow_with_context_batch_and_use():
    chat_1k = estimate_memory(MINI, torch.bfloat16, Usage("chat", 1024))
    chat_4k = estimate_memory(MINI, torch.bfloat16, Usage("chat", 4096))
    assert chat_4k.activations > 2 * chat_1k.activations and chat_4k.weights == chat_1k.weights
    assert chat_4k.workspace > 4 * chat_1k.workspace  # and the T² mask
    # Phi-3-mini-4k's sliding window (2,047) caps the KV cache
    assert chat_4k.kv_cache == 2 * 32 * 2047 * 32 * 96 * 2
    sweep = estimate_memory(MINI, torch.bfloat16, Usage("sweep", 1024, batch=8))
    assert sweep.kv_cache == 8 * chat_1k.kv_cache
    capture = estimate_memory(MINI, torch.bfloat16, Usage("capture", 1024))
    assert capture.kv_cache == 0 and capture.logits == 1024 * 32064 * 2
    assert capture.kept == 4 * 33 * 1024 * 3072  # the float32 residual stream before and after every layer
    eager = estimate_memory(MINI, torch.bfloat16, Usage("capture", 4096, need_weights=True))
    assert eager.kept > 32 * 32 * 4096 * 4096 * 2  # every layer's maps: over 32 GiB at 4k tokens


def test_images_count_for_a_vision_model():
    text_only = estimate_memory(VISION, torch.bfloat16, Usage("chat", 1024))
    four_images = estimate_memory(VISION, torch.bfloat16, Usage("chat", 1024, images=4, num_crops=16))
    assert four_images.workspace > text_only.workspace  # the CLIP tower on 4 × 17 crops is the widest step


def test_bad_usage_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="use must be one of 'chat', 'capture', 'sweep'"):
        Usage("train")
    with pytest.raises(ValueError, match="context must be a whole number ≥ 1"):
        Usage("chat", 0)
    with pytest.raises(ValueError, match="batch must be a whole number ≥ 1"):
        Usage("sweep", 1024, batch=True)


# --- the choice ----------------------------------------------------------------------------------


def test_a_16_gb_laptop_gets_bfloat16_where_float32_does_not_fit():
    """The issue's laptop: float32 (15.3 GB of weights) cannot fit, bfloat16 (7.6 GB) does."""
    plan = plan_memory(MINI, device="cpu", probes=LAPTOP_CPU, memory=cpu(14))
    assert (plan.dtype, plan.quantize) == (torch.bfloat16, None)
    assert "float32 needs" in plan.reason and "bfloat16 fits" in plan.reason and "14.0 GiB available" in plan.reason
    assert "emulated" in plan.reason  # this simulated CPU has no native bf16: said, not hidden
    native = plan_memory(MINI, device="cpu", probes=Probes(cpu_bf16=True), memory=cpu(14))
    assert "emulated" not in native.reason


def test_float32_stays_where_it_fits():
    plan = plan_memory(MINI, device="cpu", probes=LAPTOP_CPU, memory=cpu(60, 64))
    assert plan.dtype == torch.float32 and plan.reason.startswith("float32 fits")


def test_the_available_memory_decides_not_the_total():
    with pytest.raises(NotEnoughMemoryError) as info:
        plan_memory(MINI, device="cpu", probes=LAPTOP_CPU, memory=cpu(5, 64), name="Phi-3-mini")
    assert "5.0 GiB available (of 64.0 GiB" in str(info.value)


def test_activations_can_tip_the_choice():
    """bf16 weights (7.1 GiB) fit 8 GiB, but not with a 4k-token chat's KV cache and workspace."""
    memory = cpu(8.5)
    assert estimate_memory(MINI, torch.bfloat16).weights < HEADROOM * memory.available
    with pytest.raises(NotEnoughMemoryError, match="chat at 4,096 tokens"):
        plan_memory(MINI, device="cpu", probes=BARE_CPU, memory=memory, usage=Usage("chat", 4096))
    short = plan_memory(MINI, device="cpu", probes=BARE_CPU, memory=memory, usage=Usage("chat", 256))
    assert short.dtype == torch.bfloat16


def test_an_explicit_dtype_is_the_only_dtype_taken():
    plan = plan_memory(MINI, device="cpu", dtype=torch.bfloat16, probes=LAPTOP_CPU, memory=cpu(60, 64))
    assert plan.dtype == torch.bfloat16 and plan.reason.startswith("bfloat16 fits")
    with pytest.raises(NotEnoughMemoryError) as info:
        plan_memory(MINI, device="cpu", dtype=torch.float32, probes=LAPTOP_CPU, memory=cpu(14), name="Phi-3-mini")
    message = str(info.value)
    assert "float32: 17.0 GiB" in message and "too big" in message
    assert "fits if asked for: dtype='bfloat16'" in message  # the way out, with the argument to pass


def test_quantize_auto_on_a_small_laptop_uses_torchao_int8():
    plan = plan_memory(MINI, device="cpu", quantize="auto", probes=LAPTOP_CPU, memory=cpu(6, 8))
    assert (plan.quantize, plan.backend, plan.dtype) == ("int8", "torchao", torch.bfloat16)
    assert "bfloat16 needs" in plan.reason and "int8 (torchao) + bfloat16 fits" in plan.reason
    # without quantize="auto" the same machine refuses, and says quantization would fit
    with pytest.raises(NotEnoughMemoryError) as info:
        plan_memory(MINI, device="cpu", probes=LAPTOP_CPU, memory=cpu(6, 8))
    assert "fits if asked for: dtype='bfloat16', quantize='int8'" in str(info.value)
    assert "allow weight quantization (quantize='auto')" in str(info.value)


def test_quantize_auto_takes_nf4_when_int8_is_too_big():
    plan = plan_memory(MINI, device="cpu", quantize="auto", probes=LAPTOP_CPU, memory=cpu(4.2, 8))
    assert (plan.quantize, plan.backend) == ("nf4", "bitsandbytes")


def test_an_8_gb_gpu_quantizes_with_bitsandbytes():
    plan = plan_memory(
        MINI, device="cuda", default_dtype=torch.bfloat16, quantize="auto", probes=RTX_4060, memory=cuda(7.5)
    )
    assert plan.dtype == torch.bfloat16 and (plan.quantize, plan.backend) == ("int8", "bitsandbytes")
    nf4 = plan_memory(MINI, device="cuda", quantize="nf4", probes=RTX_4060, memory=cuda(7.5))
    assert (nf4.quantize, nf4.backend) == ("nf4", "bitsandbytes")
    assert nf4.estimate.weights < plan.estimate.weights


def test_phi3_medium_on_a_24_gb_gpu_needs_quantization():
    card = DeviceMemory("cuda", 23 * GiB, 24 * GiB)
    with pytest.raises(NotEnoughMemoryError, match="bfloat16: 27.6 GiB"):
        plan_memory(MEDIUM, device="cuda", probes=RTX_4060, memory=card)
    plan = plan_memory(MEDIUM, device="cuda", quantize="auto", probes=RTX_4060, memory=card)
    assert plan.quantize == "int8" and plan.estimate.total < HEADROOM * card.available


def test_quantization_without_its_backend_says_what_to_install():
    with pytest.raises(QuantizationError, match="bitsandbytes.*not installed.*pip install bitsandbytes"):
        plan_memory(MINI, device="cuda", quantize="nf4", probes=RTX_4060_NO_BNB, memory=cuda(7.5))
    with pytest.raises(QuantizationError, match="torchao"):
        plan_memory(MINI, device="cpu", quantize="int8", probes=BARE_CPU, memory=cpu(6))
    with pytest.raises(QuantizationError, match="Apple MPS"):
        plan_memory(
            MINI,
            device="mps",
            default_dtype=torch.float16,
            quantize="int8",
            probes=MAC,
            memory=DeviceMemory("mps", 6 * GiB, 8 * GiB),
        )
    with pytest.raises(QuantizationError, match="'int8' or 'nf4'"):
        plan_memory(MINI, device="cpu", quantize="int4", probes=LAPTOP_CPU, memory=cpu(6))


def test_auto_without_backends_lists_why_each_quantization_cannot_run():
    with pytest.raises(NotEnoughMemoryError) as info:
        plan_memory(MINI, device="cpu", quantize="auto", probes=BARE_CPU, memory=cpu(6, 8), name="Phi-3-mini")
    message = str(info.value)
    assert "int8 (no backend) + bfloat16" in message and "torchao package is not installed" in message
    assert "nf4 (no backend) + bfloat16" in message and "bitsandbytes package is not installed" in message
    assert "device_map='auto'" in message and "phi3lab.load('tiny')" in message


def test_an_eager_capture_of_4k_tokens_is_refused_before_loading():
    with pytest.raises(NotEnoughMemoryError) as info:
        plan_memory(
            MINI, device="cpu", probes=LAPTOP_CPU, memory=cpu(40, 64), usage=Usage("capture", 4096, need_weights=True)
        )
    assert "a capture at 4,096 tokens with eager attention maps" in str(info.value)
    assert "a shorter context=" in str(info.value)


def test_unknown_memory_is_said_not_assumed():
    plan = plan_memory(MINI, device="cpu", probes=LAPTOP_CPU, memory=DeviceMemory("cpu", None, None))
    assert plan.dtype == torch.float32 and "unknown, so it was not checked" in plan.reason


def test_the_plan_prints_every_option_with_its_verdict():
    plan = plan_memory(MINI, device="cpu", quantize="auto", probes=LAPTOP_CPU, memory=cpu(6, 8))
    lines = plan.to_text().splitlines()
    assert lines[0] == "memory plan for chat at 4,096 tokens on cpu: 6.0 GiB available of 8.0 GiB:"
    chosen = [line for line in lines if line.lstrip().startswith("→")]
    assert len(chosen) == 1 and "int8 (torchao)" in chosen[0]
    assert sum("too big" in line for line in lines) == 2  # float32 and bfloat16


# --- load() on simulated memory ------------------------------------------------------------------


def _totals(monkeypatch, **kwargs) -> dict:
    """Each option's total for the embedded model, from a plan made with unknown memory."""
    monkeypatch.setattr(memory_module, "probe_memory", lambda device: DeviceMemory(device, None, None))
    plan = phi3lab.load("tiny", verbose=False, **kwargs).memory
    return {(o.dtype, o.quantize): o.estimate.total for o in plan.options}


def test_load_switches_to_bfloat16_when_float32_does_not_fit(monkeypatch):
    totals = _totals(monkeypatch, context=512)
    between = (totals[(torch.float32, None)] + totals[(torch.bfloat16, None)]) / 2 / HEADROOM
    monkeypatch.setattr(memory_module, "probe_memory", lambda device: DeviceMemory(device, int(between), 2**34))
    lab = phi3lab.load("tiny", verbose=False, context=512)
    assert lab.attention.dtype == torch.bfloat16 and lab.model.dtype == torch.bfloat16
    assert lab.memory.reason.startswith("float32 needs") and "bfloat16 fits" in lab.memory.reason
    assert "memory" in lab.info() and lab.memory.reason in lab.info()
    assert lab.chat("What is 2 plus 3?", stream=False, max_new_tokens=4).text is not None


@pytest.mark.skipif(not phi3lab.runtime.hardware.probe().torchao, reason="torchao is not installed (phi3lab[quant])")
def test_load_quantizes_when_asked_and_nothing_else_fits(monkeypatch):
    totals = _totals(monkeypatch, context=64)
    int8, bf16 = totals[(torch.bfloat16, "int8")], totals[(torch.bfloat16, None)]
    assert int8 < bf16
    between = (int8 + bf16) / 2 / HEADROOM
    monkeypatch.setattr(memory_module, "probe_memory", lambda device: DeviceMemory(device, int(between), 2**34))
    with pytest.raises(NotEnoughMemoryError, match="quantize='int8'"):
        phi3lab.load("tiny", verbose=False, context=64)
    lab = phi3lab.load("tiny", verbose=False, context=64, quantize="auto")
    assert lab.quantization == "int8" and len(lab.quantized_modules()) == 16


def test_load_refuses_bad_quantize_and_use_before_reading_files():
    with pytest.raises(QuantizationError, match="got 'fp4'"):
        phi3lab.load("no-such-model", quantize="fp4")
    with pytest.raises(ValueError, match="use must be one of"):
        phi3lab.load("no-such-model", use="train")


def test_hardware_report_shows_memory_and_what_fits():
    laptop = cpu(14)
    text = phi3lab.hardware_report(LAPTOP_CPU, laptop).to_text()
    assert "memory          cpu: 14.0 GiB available of 16.0 GiB" in text
    lines = {line.split(":")[0].strip(): line for line in text.splitlines() if "microsoft/" in line}
    assert "bfloat16 · cpu" in lines["microsoft/Phi-3-mini-4k-instruct"]
    assert "nf4 (bitsandbytes) weights" in lines["microsoft/Phi-3-medium-4k-instruct"]  # int8 (15 GiB) is too big
    bare = phi3lab.hardware_report(BARE_CPU, laptop).to_text()
    assert "Phi-3-medium-4k-instruct: does not fit: 14.0 GiB available" in bare
    assert math.isclose(HEADROOM, 0.9)
