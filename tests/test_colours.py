"""phi3lab.colours: one sequential map, one diverging map centred at zero, readable to colour-blind eyes,
one scale per view, and a noise floor under which nothing is coloured."""

import base64
import math

import numpy as np
import pytest

from phi3lab import colours
from phi3lab.colours import (
    DIVERGING,
    SCORE_FLOOR,
    SEQUENTIAL,
    SHARE_FLOOR,
    delta_e,
    diverging,
    encode,
    legend_html,
    lightness,
    noise_floor,
    scale,
    sequential,
    simulate_cvd,
)

VISIONS = [None, "deuteranopia", "protanopia", "tritanopia"]


def _seen(colour: str, vision) -> str:
    return simulate_cvd(colour, vision) if vision else colour


@pytest.mark.parametrize("vision", VISIONS)
def test_the_sequential_map_darkens_step_by_step_for_every_colour_vision(vision):
    seen = [_seen(c, vision) for c in SEQUENTIAL]
    steps = np.diff([lightness(c) for c in seen])
    assert (steps < -4).all(), f"lightness must fall at every stop ({vision}): {steps}"
    assert min(delta_e(a, b) for a, b in zip(seen, seen[1:])) > 5, "neighbouring stops must be told apart"


@pytest.mark.parametrize("vision", VISIONS)
def test_the_diverging_map_is_centred_and_its_signs_stay_apart_for_colour_blind_eyes(vision):
    seen = [_seen(c, vision) for c in DIVERGING]
    middle = len(seen) // 2
    light = [lightness(c) for c in seen]
    assert light.index(max(light)) == middle, "zero must be the lightest colour"
    for k in range(1, middle + 1):
        below, above = seen[middle - k], seen[middle + k]
        if vision is None:  # (a protanope sees every red darker: strength is judged by normal vision)
            assert abs(lightness(below) - lightness(above)) < 10, f"±{k} steps must be equally strong"
        assert delta_e(below, above) > 15, f"the two signs at ±{k} steps look alike ({vision}): {below} {above}"


def test_zero_sits_in_the_middle_of_every_diverging_scale():
    s = scale([-0.5, 2.0], kind="score", label="Δ log p")
    assert s.ticks() == [-2.0, 0.0, 2.0] and s.vmax == 2.0
    just_above, just_below = s.colour(2 * SCORE_FLOOR), s.colour(-2 * SCORE_FLOOR)
    assert delta_e(just_above, DIVERGING[5]) < 3 and delta_e(just_below, DIVERGING[5]) < 3
    assert s.colour(2.0) == DIVERGING[-1] and s.colour(-2.0) == DIVERGING[0]
    assert lightness(s.colour(1.0)) == pytest.approx(lightness(s.colour(-1.0)), abs=8)


def test_shares_and_signed_scores_use_different_hues():
    far = min(delta_e(a, b) for a in SEQUENTIAL[2:] for b in DIVERGING if b != DIVERGING[5])
    assert far > 20, "a share must never look like a signed score"


def test_values_under_the_noise_floor_are_no_signal():
    assert sequential([0.0, SHARE_FLOOR / 2, 0.5]) == [None, None, SEQUENTIAL[-1]]
    s = scale([2.3e-6, -1.1e-6], kind="score", label="Δ log p")  # the ±2.3e-6 of target '▁is'
    assert not s.signal and s.colours([2.3e-6, -1.1e-6]) == [None, None]
    assert "no signal" in s.to_text() and "1.5e-05" in s.to_text()
    assert list(base64.b64decode(encode([2.3e-6, -1.1e-6], s))) == [0, 0]
    assert 'data-signal="false"' in legend_html(s) and "noise floor" in legend_html(s)


def test_one_scale_for_every_part_of_a_view():
    words, regions = np.array([23.5, -2.0]), np.array([[1.0, 0.0], [0.5, np.nan]])
    s = scale(words, regions, kind="score", label="Δ log p")
    assert s.vmax == 23.5  # the region's +1.0 is a faint colour, not the top of its own scale
    assert abs(s.fraction(1.0)) == pytest.approx(1 / 23.5)
    assert delta_e(s.colour(1.0), DIVERGING[5]) < 12 < delta_e(s.colour(23.5), DIVERGING[5])


def test_nan_and_infinity_are_no_signal_and_never_set_the_scale():
    s = scale([np.nan, np.inf, -np.inf, 0.25], kind="score", label="x")
    assert s.vmax == 0.25 and diverging([np.nan, np.inf, 0.25]) == [None, None, DIVERGING[-1]]


def test_the_bytes_sent_to_the_browser_round_trip_within_one_step():
    values = np.linspace(-3, 3, 41)
    s = scale(values, kind="score", label="x")
    q = np.frombuffer(base64.b64decode(encode(values, s)), np.uint8).astype(float)
    decoded = (q - 128) / 127 * s.vmax
    ok = np.abs(values) >= s.floor
    assert np.allclose(decoded[ok], values[ok], atol=s.vmax / 127) and (q[~ok] == 0).all()
    shares = np.linspace(0, 1, 30)
    t = scale(shares, kind="share", label="x")
    q = np.frombuffer(base64.b64decode(encode(shares, t)), np.uint8).astype(float)
    assert np.allclose(q[1:] / 255 * t.vmax, shares[1:], atol=t.vmax / 255) and q[0] == 0


def test_the_noise_floor_follows_the_arithmetic():
    assert noise_floor("float32", 16) == pytest.approx(8 * 2**-23 * 16) == SCORE_FLOOR
    assert noise_floor("bfloat16") > 1000 * noise_floor("float32")
    import torch

    assert noise_floor(torch.float16) == noise_floor("float16")
    assert 2.3e-6 < SCORE_FLOOR < 1e-3  # float noise is under it, a real effect of 0.001 nats is over it


def test_the_legend_prints_its_numbers():
    page = legend_html(scale([-0.04, 5.0], kind="score", label="attribution (Δ log p)"))
    assert "−5" in page and "+5" in page and "attribution (Δ log p)" in page and 'data-signal="true"' in page


def test_the_matplotlib_maps_are_the_same_stops():
    pytest.importorskip("matplotlib")
    cmap = colours.colormap("share")
    top = tuple(round(c * 255) for c in cmap(1.0)[:3])
    assert "#{:02x}{:02x}{:02x}".format(*top) == SEQUENTIAL[-1]
    assert cmap(np.ma.masked_array([0.5], mask=[True]))[0][3] == 0  # no signal: transparent


@pytest.mark.parametrize(
    "call, error, says",
    [
        (lambda: scale([1.0], kind="heat", label=""), ValueError, "kind must be 'share'"),
        (lambda: scale([1.0], kind="share", label="", floor=-1), ValueError, "floor must be a finite number ≥ 0"),
        (lambda: scale([1.0], kind="share", label="", vmax=math.nan), ValueError, "vmax must be a finite number"),
        (lambda: noise_floor("int8"), ValueError, "dtype must be one of"),
        (lambda: simulate_cvd("#ffffff", "colourblind"), ValueError, "deficiency must be one of"),
    ],
)
def test_bad_arguments_say_what_to_pass(call, error, says):
    with pytest.raises(error, match=says):
        call()
