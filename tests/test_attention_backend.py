"""Every branch of the attention/dtype/device choice, on simulated machines."""

import pytest
import torch

from phi3lab import AttentionRequestError, select_attention
from phi3lab.runtime.hardware import Probes

CPU = Probes()
MAC = Probes(mps=True)
V100 = Probes(
    cuda=True,
    capability=(7, 0),
    gpu_name="Tesla V100",
    cuda_bf16=False,
    flash_attn=False,
    flash_attn_error="the flash_attn package is not installed",
)
V100_FLASH = Probes(cuda=True, capability=(7, 0), gpu_name="Tesla V100", cuda_bf16=False, flash_attn=True)
A100 = Probes(cuda=True, capability=(8, 0), gpu_name="A100", cuda_bf16=True, flash_attn=True)
A100_NOFLASH = Probes(
    cuda=True,
    capability=(8, 0),
    gpu_name="A100",
    cuda_bf16=True,
    flash_attn=False,
    flash_attn_error="the flash_attn package is not installed",
)
H100 = Probes(cuda=True, capability=(9, 0), gpu_name="H100", cuda_bf16=True, flash_attn=True)
BROKEN_FLASH = Probes(
    cuda=True,
    capability=(9, 0),
    gpu_name="H100",
    cuda_bf16=True,
    flash_attn=False,
    flash_attn_error="flash_attn is installed but does not import (ImportError: undefined symbol)",
)


def test_cpu_defaults_to_sdpa_float32():
    c = select_attention(probes=CPU)
    assert (c.impl, c.dtype, c.device) == ("sdpa", torch.float32, "cpu")
    assert "CPU" in c.reason


def test_mps_uses_sdpa_half():
    c = select_attention(probes=MAC)
    assert (c.impl, c.dtype, c.device) == ("sdpa", torch.float16, "mps")


@pytest.mark.parametrize("probes", [A100, H100], ids=["cc8.0", "cc9.0"])
def test_ampere_or_newer_with_flash_picks_flash_bf16(probes):
    c = select_attention(probes=probes)
    assert (c.impl, c.dtype, c.device) == ("flash_attention_2", torch.bfloat16, "cuda")
    assert "flash_attn imports" in c.reason


def test_old_gpu_gets_sdpa_fp16_and_says_why():
    c = select_attention(probes=V100_FLASH)
    assert (c.impl, c.dtype) == ("sdpa", torch.float16)
    assert "7.0" in c.reason and "8.0" in c.reason


def test_gpu_without_flash_package_gets_sdpa():
    c = select_attention(probes=A100_NOFLASH)
    assert (c.impl, c.dtype) == ("sdpa", torch.bfloat16)
    assert "not installed" in c.reason


def test_broken_flash_build_is_not_used():
    c = select_attention(probes=BROKEN_FLASH)
    assert c.impl == "sdpa" and "does not import" in c.reason


def test_float32_on_gpu_rules_out_flash():
    c = select_attention(dtype="float32", probes=H100)
    assert (c.impl, c.dtype) == ("sdpa", torch.float32)
    assert "float16 or bfloat16" in c.reason


def test_need_weights_gives_eager_everywhere():
    for probes in (CPU, MAC, V100, H100):
        c = select_attention(need_weights=True, probes=probes)
        assert c.impl == "eager" and "output_attentions" in c.reason


def test_explicit_choices_are_honoured():
    assert select_attention(attn="eager", probes=H100).impl == "eager"
    assert select_attention(attn="sdpa", probes=H100).impl == "sdpa"
    c = select_attention(attn="flash_attention_2", dtype="float16", probes=A100)
    assert (c.impl, c.dtype) == ("flash_attention_2", torch.float16)
    assert "explicitly" in c.reason


@pytest.mark.parametrize(
    "kwargs, probes, expected",
    [
        (dict(attn="flash_attention_2"), CPU, "only on NVIDIA GPUs"),
        (dict(attn="flash_attention_2"), A100_NOFLASH, "pip install flash-attn"),
        (dict(attn="flash_attention_2"), V100_FLASH, "older than the 8.0"),
        (dict(attn="flash_attention_2", dtype="float32"), H100, "pass dtype='bfloat16'"),
        (dict(attn="flash_attention_2", need_weights=True), H100, "use attn='eager'"),
        (dict(attn="sdpa", need_weights=True), CPU, "use attn='eager'"),
        (dict(dtype="bfloat16"), V100, "no bfloat16 support"),
        (dict(device="cuda"), CPU, "sees no CUDA GPU"),
        (dict(device="mps"), CPU, "Metal backend is not available"),
        (dict(device="tpu"), CPU, "unknown device"),
        (dict(dtype="int8"), CPU, "unknown dtype"),
        (dict(dtype=torch.int8), CPU, "not supported"),
        (dict(attn="flash3"), CPU, "unknown attention implementation"),
        (dict(attn="sdpa"), Probes(sdpa=False), "no scaled_dot_product_attention"),
    ],
)
def test_impossible_requests_fail_with_a_fix(kwargs, probes, expected):
    with pytest.raises(AttentionRequestError) as info:
        select_attention(probes=probes, **kwargs)
    assert expected in str(info.value)


def test_torch_without_sdpa_falls_back_to_eager():
    c = select_attention(probes=Probes(sdpa=False))
    assert c.impl == "eager" and "scaled_dot_product_attention" in c.reason


def test_dtype_names_and_devices():
    c = select_attention(device="cuda:1", dtype="bf16", probes=H100)
    assert (c.device, c.dtype) == ("cuda:1", torch.bfloat16)
    assert select_attention(dtype=torch.float16, probes=CPU).dtype is torch.float16


def test_choice_is_frozen_and_printable():
    c = select_attention(probes=CPU)
    with pytest.raises(AttributeError):
        c.impl = "eager"
    assert str(c) == "sdpa · float32 · cpu — CPU: sdpa is the fastest kernel that runs here"
