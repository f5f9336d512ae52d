"""lab.verify(): every site against transformers' own outputs, on every embedded model and the reference."""

import pytest

import phi3lab


@pytest.mark.parametrize("name", ["tiny", "tiny-vision", "tiny-vision-reader", "tiny-vision-control"])
@pytest.mark.slow
def test_every_embedded_model_verifies(name, picture):
    lab = phi3lab.load(name, verbose=False)
    args = ("<|image_1|>\nWhat colour is the triangle?", [picture]) if "vision" in name else ()
    result = lab.verify(*args)
    assert result.ok, result.to_text()
    names = {c.name for c in result.checks}
    assert {
        "pattern",
        "resid_post",
        "embed",
        "logits (hooks on)",
        "Σ_heads z W_O = attn_out",
        "z = pattern · v",
    } <= names
    hooks_on = next(c for c in result.checks if c.name == "logits (hooks on)")
    assert hooks_on.max_abs == 0.0  # reading changes nothing


@pytest.mark.reference
@pytest.mark.slow
def test_the_reference_fixture_verifies(reference):
    import numpy as np
    from PIL import Image

    lab = phi3lab.load(reference / "phi3v-tiny-random" / "model", attn="sdpa", verbose=False)
    image = Image.fromarray((np.random.RandomState(0).rand(300, 400, 3) * 255).astype("uint8"))
    result = lab.verify("<|image_1|>\nWhat is it?", [image])
    assert result.ok, result.to_text()


def test_a_wrong_rotation_fails_the_check(tiny, monkeypatch):
    """verify can fail: with the hook core's RoPE broken, the pattern no longer matches eager attention."""
    from phi3lab.inspect import kernel

    monkeypatch.setattr(kernel, "rotate", lambda x, cos, sin: x)
    result = tiny.verify()
    assert not result.ok
    failing = [c.name for c in result.checks if not c.ok]
    assert "pattern" in failing and "SOME CHECKS FAIL" in result.to_text()


def test_the_text_form(tiny):
    text = tiny.verify().to_text()
    lines = text.splitlines()
    assert lines[0].startswith("verify phi3lab-tiny: ") and "all checks pass" in lines[0]
    assert lines[1].split()[:2] == ["site", "against"]
    assert all(line.rstrip().endswith("ok") for line in lines[2:])
