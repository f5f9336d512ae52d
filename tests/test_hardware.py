from phi3lab import hardware_report
from phi3lab.runtime.hardware import Probes, probe


def test_probe_on_this_machine_is_consistent():
    p = probe()
    assert isinstance(p, Probes)
    assert p.default_device in ("cpu", "cuda", "mps")
    if not p.cuda:
        assert p.capability is None and p.gpu_name is None
    if not p.flash_attn:
        assert p.flash_attn_error


def test_report_for_a_simulated_gpu_lists_everything():
    gpu = Probes(
        cuda=True, capability=(8, 6), gpu_name="RTX 3090", gpu_memory=24 * 2**30, cuda_bf16=True, flash_attn=True
    )
    text = hardware_report(gpu).to_text()
    assert "RTX 3090 · 24.0 GiB · compute capability 8.6" in text
    assert "bf16 on GPU     yes" in text
    assert "flash-attn      imports" in text
    lines = text.splitlines()
    at = lines.index("attention per dtype:")
    assert lines[at + 1].split()[:2] == ["float32", "sdpa"]
    assert lines[at + 2].split()[:2] == ["float16", "flash_attention_2"]
    assert lines[at + 3].split()[:2] == ["bfloat16", "flash_attention_2"]
    # no memory was simulated: the plans say it is unknown rather than use this machine's
    assert "memory          cuda: ? available of 24.0 GiB" in text
    assert "available memory of cuda is unknown" in text


def test_report_shows_refusals():
    old = Probes(cuda=True, capability=(7, 0), gpu_name="V100", cuda_bf16=False)
    text = str(hardware_report(old))
    assert "bfloat16  refused — dtype bfloat16 was requested but V100" in text
    assert "torch" in text and "transformers" in text
