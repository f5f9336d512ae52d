"""Attention-map computations, the logit lens, and that every view draws and returns (fig, ax)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from phi3lab.inspect.capture import capture  # noqa: E402
from phi3lab.inspect.lens import logit_lens  # noqa: E402
from phi3lab.inspect.maps import head_summary, image_heat, image_runs, rollout, top_keys  # noqa: E402
from phi3lab.prompts.patches import num_image_tokens  # noqa: E402
from phi3lab.views import plotting  # noqa: E402


def test_rollout_of_one_layer_is_the_mixed_attention():
    a = torch.softmax(torch.randn(1, 2, 5, 5), dim=-1)
    expected = 0.5 * torch.eye(5) + 0.5 * a[0].mean(0)
    torch.testing.assert_close(rollout(a), expected / expected.sum(-1, keepdim=True))
    two = rollout(torch.softmax(torch.randn(3, 2, 6, 6), -1))
    torch.testing.assert_close(two.sum(-1), torch.ones(6))
    with pytest.raises(ValueError, match="capture with positions='all'"):
        rollout(torch.rand(2, 1, 1, 6))


def test_head_summary_and_top_keys():
    w = torch.zeros(2, 3, 4, 10)
    w[1, 2, :, 7] = 1.0
    share = head_summary(w, [7])
    assert share[1, 2] == 1.0 and share.sum() == 1.0
    assert top_keys(torch.tensor([0.1, 0.7, 0.2]), ["a", "b", "c"], top=2) == [
        (1, "b", pytest.approx(0.7)),
        (2, "c", pytest.approx(0.2)),
    ]


def test_image_runs():
    ids = torch.tensor([1, 5, -1, -1, -1, 1, -2, -2, 9])
    assert image_runs(ids) == [(2, 5), (6, 8)]
    assert image_runs(torch.tensor([3, 44, 44, 3]), image_token_id=44) == [(1, 3)]


def test_image_heat_puts_each_token_in_its_cell():
    w, h, crops = 500, 300, 4
    n = num_image_tokens(w, h, crops)
    row = torch.zeros(10 + n)
    row[10 + 0] = 0.5  # first crop cell (0, 0)
    row[10 + n - 2] = 0.25  # last global cell (11, 11)
    row[10 + 24] = 0.25  # first row separator
    heat = image_heat(row, 10, w, h, crops)
    assert heat.crops[0, 0] == 0.5 and heat.global_view[11, 11] == 0.25 and heat.separators == 0.25
    assert heat.total == pytest.approx(1.0)
    assert heat.to_pixels("crops").shape == (h, w)
    assert "crops 0.500, global view 0.250, separators 0.250" in heat.to_text()


def test_logit_lens_last_layer_is_the_model_prediction(tiny):
    inputs = tiny.tokenizer([tiny.render("What is 2 plus 3?")], return_tensors="pt")
    lens = logit_lens(tiny.model, tiny.tokenizer, dict(inputs))
    with torch.no_grad():
        top = int(tiny.model(**inputs).logits[0, -1].argmax())
    assert lens.tokens[-1][0] == tiny.tokenizer.convert_ids_to_tokens(top)
    assert len(lens.layers) == tiny.model.config.num_hidden_layers + 1
    text = lens.to_text()
    assert text.splitlines()[0] == f"logit lens at position {inputs['input_ids'].shape[1] - 1}"
    assert "<table" in lens._repr_html_() and "logit lens at position" in lens._repr_html_()


def test_the_logit_lens_html_colours_probabilities_on_the_share_map_from_0_to_1():
    from phi3lab import colours
    from phi3lab.inspect.lens import LogitLens

    lens = LogitLens(
        position=3,
        layers=("embeddings", "layer 0"),
        tokens=(("<b>", "▁a"), ("▁cat", "▁dog")),
        probs=((0.05, 1e-9), (0.9, 0.1)),
    )
    page = lens._repr_html_()
    for p in (0.05, 0.9, 0.1):  # on a fixed 0 … 1 scale: 0.05 stays pale though it tops its layer
        colour = colours.sequential([p], vmax=1.0)[0]
        assert f"background:{colour};color:{colours.text_on(colour)}" in page
    assert colours.lightness(colours.sequential([0.05], vmax=1.0)[0]) > 90
    assert page.count(f"outline:1px dashed {colours.NO_SIGNAL}") == 1  # 1e-9: under the floor, uncoloured
    assert 'class="phi3lab-legend" data-kind="share" data-signal="true"' in page and "<span>1</span>" in page
    assert "&#x27;&lt;b&gt;&#x27; 0.05" in page and "'<b>'" not in page  # a token is text, escaped
    assert "rgba(37,99,235" not in page


def test_every_view_draws(tiny):
    import matplotlib.pyplot as plt

    table = tiny.tokens("My name is Ada. What is my name?")
    inputs = tiny.tokenizer([table.prompt], return_tensors="pt", add_special_tokens=False)
    with capture(tiny.model, positions="all") as cap, torch.no_grad():
        tiny.model(**inputs)
    maps = cap.stacked()[:, 0]
    image = Image.new("RGB", (300, 200), "white")
    heat = image_heat(torch.rand(num_image_tokens(300, 200, 4)), 0, 300, 200, 4)
    for fig, ax in [
        plotting.token_heatmap(maps[3].mean(0), table),
        plotting.layer_head_grid(head_summary(maps, [5])),
        plotting.rollout_map(rollout(maps), table),
        plotting.image_attention(image, heat, "crops"),
        plotting.image_attention(image, heat, "global"),
        plotting.patch_layout(image, 4),
    ]:
        assert fig is ax.figure and ax.has_data() or ax.patches
        maps = {im.get_cmap().name for a in fig.axes for im in a.images if im.get_array().ndim == 2}
        maps |= {c.cmap.name for a in fig.axes for c in a.collections if c.get_array() is not None}  # colour bars
        assert maps <= {"phi3lab_share", "phi3lab_veil"}, f"shares drawn outside the one sequential map: {maps}"
        plt.close(fig)


def _pixel(ax, x: float, y: float) -> tuple[int, int, int]:
    """RGB of the drawn figure at data point (x, y)."""
    fig = ax.figure
    fig.canvas.draw()
    px, py = ax.transData.transform((x, y))
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return tuple(int(v) for v in rgba[rgba.shape[0] - 1 - int(py), int(px), :3])


def test_patch_layout_shows_the_picture_in_its_box_over_white_padding():
    import matplotlib.pyplot as plt

    from phi3lab.prompts.patches import CELL, hd_layout

    image = Image.new("RGB", (640, 420), (200, 30, 30))
    fig, ax = plotting.patch_layout(image, 16)
    left, top, right, bottom = hd_layout(640, 420, 16).pad_box
    inside = _pixel(ax, left + 5.5 * CELL, top + 4.5 * CELL)  # a cell's middle, away from the grid lines
    assert abs(inside[0] - 200) < 25 and inside[1] < 60, f"picture box drawn as {inside}, not the picture's red"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == [f"the picture, resized to {right - left}×{bottom - top}", "white padding"]
    plt.close(fig)
    fig, ax = plotting.patch_layout(Image.new("RGB", (336, 336)), 1)  # no padding, no padding entry
    assert "white padding" not in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)


def test_image_attention_keeps_the_pictures_colours_where_the_attention_is():
    import matplotlib.pyplot as plt

    image = Image.new("RGB", (336, 336), (255, 140, 0))  # the orange square of the colour question
    n = num_image_tokens(336, 336, 1)
    row = torch.zeros(n)
    row[0] = 1.0  # all attention on the crop's first cell (top left)
    fig, ax = plotting.image_attention(image, image_heat(row, 0, 336, 336, 1), "crops")
    hot, cold = _pixel(ax, 14, 14), _pixel(ax, 300, 300)
    assert all(abs(a - b) <= 2 for a, b in zip(hot, (255, 140, 0))), f"the attended cell must stay orange, got {hot}"
    expected = _veiled((255, 140, 0), 1.0)
    assert all(abs(a - b) <= 3 for a, b in zip(cold, expected)) and cold[0] > cold[1] > cold[2], (cold, expected)
    colourbar = fig.axes[-1]
    assert colourbar is not ax and colourbar.get_ylabel().startswith("share of attention per cell")
    assert [t.get_text() for t in colourbar.get_yticklabels()] == ["0", "0.5", "1"]
    plt.close(fig)


def test_image_attention_outlines_sinks_and_not_one_questions_candidates():
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    image = Image.new("RGB", (336, 336), "white")
    row = torch.full((num_image_tokens(336, 336, 1),), 0.001)
    candidates = image_heat(row, 0, 336, 336, 1, candidates=[5, 6], evidence="1 question × 4 layers")
    fig, ax = plotting.image_attention(image, candidates, "crops")
    assert not [p for p in ax.patches if isinstance(p, Rectangle)] and ax.get_legend() is None
    assert "no sink masked for 2 candidate token(s) (found from 1 question × 4 layers)" in candidates.to_text()
    plt.close(fig)
    sinks = image_heat(row, 0, 336, 336, 1, [5], evidence="5 questions × 4 layers")
    fig, ax = plotting.image_attention(image, sinks, "crops")
    assert len([p for p in ax.patches if isinstance(p, Rectangle)]) == 2  # white under dotted grey: one cell
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["attention sink (masked, 1 cell)"]
    assert "1 sink token(s) (found from 5 questions × 4 layers) masked" in sinks.to_text()
    plt.close(fig)


def test_heatmaps_have_labelled_colour_bars_and_show_the_space_piece(tiny):
    import matplotlib.pyplot as plt

    table = tiny.tokens("My name is Ada.")
    fig, ax = plotting.token_heatmap(torch.rand(3, len(table)), table)
    assert fig.axes[0].get_ylabel() == "query" and fig.axes[1].get_ylabel().startswith("share of attention\n")
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert "▁" in ticks and "·" not in "".join(ticks)
    plt.close(fig)
    fig, ax = plotting.layer_head_grid(torch.rand(2, 4))
    assert fig.axes[-1].get_ylabel().startswith("share of attention") and "no signal" in fig.axes[-1].get_ylabel()
    plt.close(fig)


def test_values_under_the_noise_floor_are_left_blank_in_a_heatmap(tiny):
    import matplotlib.pyplot as plt

    table = tiny.tokens("My name is Ada.")
    w = torch.full((2, len(table)), 1e-9)
    w[0, 1] = 0.5
    fig, ax = plotting.token_heatmap(w, table)
    drawn = ax.images[0].get_array()
    assert drawn.mask.sum() == w.numel() - 1 and not drawn.mask[0, 1]
    plt.close(fig)


def _veiled(rgb, strength: float) -> tuple[int, ...]:
    """A picture colour under the veil at ``strength`` (1: no signal) — the rule of phi3lab.colours."""
    from phi3lab.colours import VEIL, VEIL_ALPHA

    veil = [int(VEIL[i : i + 2], 16) for i in (1, 3, 5)]
    a = VEIL_ALPHA * strength
    return tuple(round(c * (1 - a) + v * a) for c, v in zip(rgb, veil))


class _Attribution:
    """What the attribution figures read: a word scoring +23.5 and four picture regions, one at +1.0."""

    def __init__(self, scores):
        import types

        self.units = [types.SimpleNamespace(label="square?", image=None, box=None)] + [
            types.SimpleNamespace(
                label=f"r{k}", image=0, box=(168 * (k % 2), 168 * (k // 2), 168 * (k % 2) + 168, 168 * (k // 2) + 168)
            )
            for k in range(4)
        ]
        self.scores = torch.tensor(scores, dtype=torch.float32)
        self.method, self.kinds, self.target_tokens = "ablation", ("words", "image-regions"), ["▁red", "▁is"]
        self.target_text = "red is"
        picture = Image.new("RGB", (336, 336), (255, 140, 0))
        self.inputs = types.SimpleNamespace(image=lambda i: types.SimpleNamespace(image=picture))

    def row(self, token=None):
        return self.scores.sum(0) if token is None else self.scores[token]

    def token_name(self, token=None):
        return "the whole answer" if token is None else repr(self.target_tokens[token])

    def segments(self):
        return [("user", [("[image 1]", None), (" square?", 0)])]

    def image_map(self, image=0, token=None):
        heat = np.zeros((336, 336))
        for unit, value in zip(self.units[1:], self.row(token)[1:].tolist()):
            x0, y0, x1, y1 = unit.box
            heat[y0:y1, x0:x1] = value
        return heat


def test_the_words_and_the_picture_share_one_scale():
    import matplotlib.pyplot as plt

    attr = _Attribution([[23.5, 1.0, 0.0, 0.0, -0.5], [2.3e-6, -1e-6, 0.0, 0.0, 0.0]])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    plotting.attribution_text(attr, token=0, ax=left)
    plotting.attribution_image(attr, token=0, ax=right)
    bars = [a for a in fig.axes if a not in (left, right)]
    assert [[t.get_text() for t in b.get_yticklabels()] for b in bars] == [["−23.5", "0", "+23.5"]] * 2
    region = _pixel(right, 84, 84)  # +1.0 of 23.5: nearly veiled, not solid colour
    expected = _veiled((255, 140, 0), 1 - 1 / 23.5)
    assert all(abs(a - b) <= 3 for a, b in zip(region, expected)), f"a weak region must look weak: {region}"
    plt.close(fig)


def test_two_attributions_drawn_with_one_vmax_share_their_scale():
    """Notebook 03 §4: ablation (±0.04) and Shapley (±5) looked equally dark, each on its own scale."""
    import matplotlib.pyplot as plt

    from phi3lab.colours import scale

    weak, strong = _Attribution([[0.04, 0, 0, 0, 0]] * 2), _Attribution([[5.0, 0, 0, 0, 0]] * 2)
    top = max(float(a.scores.abs().max()) for a in (weak, strong))
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(8, 6))
    faces = []
    for ax, attr in ((a, weak), (b, strong)):
        plotting.attribution_text(attr, token=0, ax=ax, vmax=top)
        faces.append([t.get_bbox_patch().get_facecolor() for t in ax.texts if t.get_text() == "square?"][0])
    plotting.attribution_heatmap(weak, ax=c, vmax=top)
    expected = [scale([top], kind="score", label="").colour(v) for v in (0.04, 5.0)]
    assert [_hex(f) for f in faces] == expected and expected[0] != expected[1]
    bars = [x for x in fig.axes if x not in (a, b, c)]
    assert [[t.get_text() for t in bar.get_yticklabels()] for bar in bars] == [["−5", "0", "+5"]] * 3
    plt.close(fig)


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgba[:3])


def test_noise_level_attributions_are_drawn_uncoloured():
    import matplotlib.pyplot as plt

    attr = _Attribution([[23.5, 1.0, 0.0, 0.0, -0.5], [2.3e-6, -1e-6, 0.0, 0.0, 0.0]])
    fig, ax = plotting.attribution_text(attr, token=1)
    faces = [t.get_bbox_patch().get_facecolor() for t in ax.texts if t.get_text() == "square?"]
    assert faces and faces[0][3] == 0, "a score of 2.3e-6 is rounding noise: no fill"
    assert "no signal" in ax.get_title()
    plt.close(fig)
    fig, ax = plotting.attribution_image(attr, token=1)
    assert [p for p in ax.patches if p.get_edgecolor()[3] > 0] == [], "no region rims for noise"
    plt.close(fig)


def test_text_forms_of_heatmap_and_grid(tiny):
    from phi3lab.inspect.maps import grid_text, rows_text

    table = tiny.tokens("My name is Ada. What is my name?")
    w = torch.zeros(2, len(table))
    w[0, 3], w[1, 1] = 1.0, 1.0
    text = rows_text(w, table)
    first, second = text.splitlines()
    assert first.startswith(f"{len(table) - 2:>5} ") and "@3 1.00" in first and "@1 1.00" in second
    grid = torch.zeros(4, 4)
    grid[2, 1] = 0.5
    out = grid_text(grid)
    assert out.splitlines()[0] == "layer × head: strongest layer 2 head 1 (0.500)" and len(out.splitlines()) == 6


def test_a_patching_grid_speaks_the_colour_language():
    import types

    import matplotlib.pyplot as plt

    from phi3lab.views.patching import patching_grid

    values = torch.tensor([[0.9, -0.25, 1e-7], [0.0, 0.5, -0.9]])
    result = types.SimpleNamespace(
        normalized=values,
        grid=values,
        metric="logit difference",
        layers=[0, 1],
        dims=("layer", "position"),
        positions=[0, 1, 2],
        tokens=["▁a", "▁b", "▁c"],
        site="resid_pre",
        clean=2.0,
        corrupted=-1.0,
    )
    fig, ax = patching_grid(result)
    drawn = ax.images[0].get_array()
    assert drawn.mask.tolist() == [[False, False, True], [True, False, False]]  # noise and zero: no signal
    bar = fig.axes[-1]
    # a restored share is drawn on a ±1 scale at least (0.9 looks like 0.9 of the gap, not like all of it) …
    assert [t.get_text() for t in bar.get_yticklabels()] == ["−1", "0", "+1"] and "no signal" in bar.get_ylabel()
    plt.close(fig)
    fig, ax = patching_grid(result, normalized=False)  # … the raw metric on its own largest magnitude
    assert [t.get_text() for t in fig.axes[-1].get_yticklabels()] == ["−0.9", "0", "+0.9"]
    plt.close(fig)
