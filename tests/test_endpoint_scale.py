"""Bigger machines: device maps over several GPUs planned on the meta device, the gpu extra, gpu_check on a CPU."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import phi3lab
from phi3lab.runtime.loading import plan_device_map

ROOT = Path(__file__).resolve().parent.parent


def mini_config():
    """Phi-3-mini-4k-instruct's sizes (3.8 B parameters), built without its files."""
    from transformers import Phi3Config

    return Phi3Config(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )


def layer_devices(plan: dict) -> dict[int, object]:
    """Layer index → its device; fails if one layer was split over two devices."""
    out: dict[int, object] = {}
    for name, device in plan.items():
        m = re.match(r"model\.layers\.(\d+)(\.|$)", name)
        if m:
            layer = int(m.group(1))
            assert out.setdefault(layer, device) == device, f"layer {layer} split: {plan}"
    return out


def test_mini_spread_over_three_gpus_whole_layers():
    plan = plan_device_map(mini_config(), torch.bfloat16, max_memory={0: "3GiB", 1: "3GiB", 2: "3GiB", "cpu": "64GiB"})
    layers = layer_devices(plan)
    assert sorted(layers) == list(range(32)) or plan.get("model.layers") is not None
    assert set(plan.values()) == {0, 1, 2}  # 7.6 GB of bf16 weights on three 3 GiB GPUs, nothing on the CPU
    order = [layers[i] for i in range(32)]
    assert order == sorted(order)  # consecutive layers, GPU 0 first
    assert plan["model.embed_tokens"] == 0 and plan["lm_head"] == 2


def test_mini_sequential_and_cpu_overflow():
    plan = plan_device_map(
        mini_config(), torch.bfloat16, strategy="sequential", max_memory={0: "4GiB", 1: "40GiB", "cpu": "64GiB"}
    )
    layers = layer_devices(plan)
    assert 0 in layers.values() and 1 in layers.values()
    assert sum(d == 0 for d in layers.values()) > 10  # the first GPU filled first
    overflow = plan_device_map(
        mini_config(), torch.bfloat16, strategy="sequential", max_memory={0: "2GiB", 1: "2GiB", "cpu": "64GiB"}
    )
    assert "cpu" in overflow.values() and overflow["model.embed_tokens"] == 0


def test_vision_encoder_layers_are_not_split():
    from transformers import AutoConfig

    import phi3lab.models  # noqa: F401

    config = AutoConfig.from_pretrained(ROOT / "data" / "models" / "phi3lab-tiny-vision")
    plan = plan_device_map(config, torch.float32, max_memory={0: "3MiB", 1: "3MiB", 2: "3MiB", "cpu": "1GiB"})
    assert len(set(plan.values())) >= 2
    for name in plan:
        assert not re.search(r"EncoderLayer|layers\.\d+\.(self_attn|mlp)\.", name), name


def test_bad_device_map():
    with pytest.raises(ValueError, match="device_map must be one of"):
        plan_device_map(mini_config(), strategy="everywhere")


def test_load_with_device_map_auto_answers_the_same():
    plain = phi3lab.load("tiny", verbose=False)
    for device_map in ("auto", {"": "cpu"}):  # no GPU here: accelerate's plan puts everything on the CPU
        spread = phi3lab.load("tiny", device_map=device_map, verbose=False)
        assert {p.device.type for p in spread.model.parameters()} == {"cpu"}
        assert spread.chat("What is 2 plus 3?", stream=False).text == plain.chat("What is 2 plus 3?", stream=False).text


def test_gpu_extra_and_conda_variant_in_sync():
    import tomllib
    import yaml

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("flash-attn") for r in extras["gpu"])
    env = yaml.safe_load((ROOT / "environment-gpu.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    base = yaml.safe_load((ROOT / "environment.yml").read_text())
    base_pip = next(d["pip"] for d in base["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert [r for r in pip if r not in extras["gpu"]] == base_pip  # the CPU file plus the gpu extra, nothing else
    assert all(r in pip for r in extras["gpu"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="measures on a GPU machine; this checks the CPU path")
@pytest.mark.slow
def test_gpu_check_on_a_cpu_says_so_and_exits_0():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA GPU" in done.stdout
