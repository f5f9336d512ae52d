"""Activation patching: the batched, prefix-reusing grid equals one plainly patched forward per cell."""

import pytest
import torch

from phi3lab.inspect.hooks import Hooks
from phi3lab.inspect.patching import patch

QUESTION = "My name is Ada. What is my name?"


@pytest.fixture(scope="module")
def prompts(tiny):
    start = tiny.tokenizer.convert_tokens_to_ids(["▁Your", "▁name", "▁is"])
    clean = tiny.encode(QUESTION).input_ids[0].tolist() + start
    corrupted = tiny.encode(QUESTION.replace("Ada", "Ben")).input_ids[0].tolist() + start
    return clean, corrupted


def _single(tiny, clean, corrupted, site, layer, position, head=None):
    """One plainly patched forward: the clean value copied into the corrupted run, no batching, no reuse."""
    read = Hooks(tiny.model).read(site, layer)
    with read, torch.no_grad():
        tiny.model(input_ids=torch.tensor([clean]))
    value = read[site, layer]

    def put(v, at):
        v = v.clone()
        if head is None:
            v[:, position] = value[:, position]
        else:
            v[:, position, head] = value[:, position, head]
        return v

    with Hooks(tiny.model).edit(site, put, layer), torch.no_grad():
        return tiny.model(input_ids=torch.tensor([corrupted])).logits[0, -1]


@pytest.mark.slow
def test_the_grid_equals_single_patched_forwards(tiny, prompts):
    clean, corrupted = prompts
    result = patch(tiny, clean, corrupted, site="resid_pre", answer="▁Ada.", wrong="▁Ben.", batch_size=7)
    ada, ben = tiny.tokenizer.convert_tokens_to_ids(["▁Ada.", "▁Ben."])
    assert result.grid.shape == (4, len(clean)) and result.dims == ("layer", "position")
    for layer in range(4):
        for position in range(len(clean)):
            logits = _single(tiny, clean, corrupted, "resid_pre", layer, position)
            assert abs(float(logits[ada] - logits[ben]) - float(result.grid[layer, position])) < 1e-4
    # the name is carried at its own position before layer 0 and at the last position afterwards
    name = tiny.encode(QUESTION).positions("Ada")[0]
    assert result.normalized[0, name] > 0.9 and result.normalized[1:, -1].min() > 0.9
    assert abs(float(result.normalized[0, 0])) < 0.05  # the template's first token carries nothing


def test_head_sites_give_a_layer_position_head_grid(tiny, prompts):
    clean, corrupted = prompts
    result = patch(tiny, clean, corrupted, site="z", positions=[-1], answer="▁Ada.", wrong="▁Ben.")
    assert result.dims == ("layer", "position", "head") and result.grid.shape == (4, 1, 4)
    ada, ben = tiny.tokenizer.convert_tokens_to_ids(["▁Ada.", "▁Ben."])
    logits = _single(tiny, clean, corrupted, "z", 0, len(clean) - 1, head=2)
    assert abs(float(logits[ada] - logits[ben]) - float(result.grid[0, 0, 2])) < 1e-4
    whole = patch(tiny, clean, corrupted, site="z", positions=None, layers=0, answer="▁Ada.", wrong="▁Ben.")
    assert whole.dims == ("layer", "head") and whole.grid.shape == (1, 4)


def test_the_default_metric_reads_both_runs_predictions(tiny, prompts):
    clean, corrupted = prompts
    result = patch(tiny, clean, corrupted, layers=[0], positions=[-1])
    assert "'▁Ada.' − '▁Ben.'" in result.metric and result.clean > 0 > result.corrupted
    text = result.to_text(top=2)
    assert "activation patching of 'resid_pre'" in text and "restored by layer 0, position" in text
    ((value, cell),) = result.top(1)
    assert cell["layer"] == 0 and value == pytest.approx(float(result.normalized.max()))


def test_a_custom_metric(tiny, prompts):
    clean, corrupted = prompts
    ada = tiny.tokenizer.convert_tokens_to_ids("▁Ada.")
    result = patch(
        tiny, clean, corrupted, layers=[3], positions=[-1], metric=lambda logits: torch.log_softmax(logits, -1)[:, ada]
    )
    assert result.clean > result.corrupted and result.metric == "<lambda>"


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(corrupted="My name is Cleopatra the Great. What is my name?"), ValueError, "same length"),
        (dict(corrupted=QUESTION), ValueError, "both predict"),
        (dict(site="pattern"), ValueError, "cannot be patched"),
        (dict(site="resid_post", heads=1), ValueError, "heads= applies to the head sites"),
        (dict(positions=[99]), IndexError, "positions \\[99\\] do not exist"),
        (dict(positions="some"), ValueError, "positions='some'"),
        (dict(answer="Ada is here"), ValueError, "pass one token"),
        (dict(batch_size=0), ValueError, "batch_size must be at least 1"),
        (dict(metric="logit"), TypeError, "metric must be a function"),
    ],
)
def test_bad_patching_requests(tiny, kwargs, error, words):
    args = dict(corrupted="My name is Ben. What is my name?")
    args.update(kwargs)
    corrupted = args.pop("corrupted")
    with pytest.raises(error, match=words):
        patch(tiny, QUESTION, corrupted, **args)


def test_the_plot_is_centred_at_zero_with_a_scale(tiny, prompts):
    import matplotlib

    matplotlib.use("Agg")
    clean, corrupted = prompts
    result = patch(tiny, clean, corrupted, layers=[0, 1], answer="▁Ada.", wrong="▁Ben.")
    fig, ax = result.plot()
    image = ax.images[0]
    low, high = image.get_clim()
    assert low == -high and len(fig.axes) == 2  # symmetric limits and a colour bar
