"""The refusal direction on the embedded model: class means, choice by ablation effect, ablation and addition hooks."""

import pytest
import torch

from phi3lab.safety import first_token_scores, load_probes
from phi3lab.safety.direction import (
    evaluate_direction,
    find_direction,
    plot_projection,
    post_instruction_tokens,
)

pytestmark = pytest.mark.slow  # heavy: the full test command runs it, --fast leaves it out

TRAIN = load_probes("tiny-train")
TEST = load_probes("tiny")
HARMFUL = [p.prompt for p in TRAIN.select(kind="harmful")][::2]
HARMLESS = [p.prompt for p in TRAIN.select(kind="benign")][::2]


@pytest.fixture(scope="module")
def direction():
    import phi3lab

    return find_direction(phi3lab.load("tiny", verbose=False), HARMFUL, HARMLESS, ablation="mean", where="last")


def test_post_instruction_tokens(tiny):
    assert post_instruction_tokens(tiny) == ["<|end|>", "▁", "<0x0A>", "<|assistant|>"]


def test_direction_is_a_float64_difference_of_means_chosen_by_ablation(tiny, direction):
    n = tiny.model.config.num_hidden_layers
    assert direction.vector.dtype == torch.float64 and direction.vector.shape == (tiny.model.config.hidden_size,)
    assert direction.layer < int(0.8 * n) and -4 <= direction.position <= -1
    chosen = [c for c in direction.candidates if (c.layer, c.position) == (direction.layer, direction.position)][0]
    scored = [c for c in direction.candidates if c.eligible]
    assert chosen.eligible and chosen.ablated_harmful == min(c.ablated_harmful for c in scored)
    assert all(not c.eligible for c in direction.candidates if c.layer >= int(0.8 * n))
    assert direction.baseline["harmful"] > 0 > direction.baseline["harmless"]
    assert chosen.ablated_harmful < 0 < chosen.added_harmless and chosen.kl < 0.1
    assert "← chosen" in direction.to_text()


def test_ablation_and_addition_move_the_first_token_score(tiny, direction):
    harmful = [p.prompt for p in TEST.select(kind="harmful")][:8]
    harmless = [p.prompt for p in TEST.select(kind="benign")][:8]
    before_h, before_b = first_token_scores(tiny, harmful), first_token_scores(tiny, harmless)
    with direction.ablate(tiny.model):
        after_h = first_token_scores(tiny, harmful)
    with direction.add(tiny.model):
        after_b = first_token_scores(tiny, harmless)
    assert min(before_h) > 0 > max(after_h)  # held-out harmful prompts stop opening with a refusal
    assert max(before_b) < 0 < min(after_b)  # harmless ones start to
    assert first_token_scores(tiny, harmful) == pytest.approx(before_h)  # the hooks are gone afterwards


def test_zero_ablation_removes_the_component_wherever_it_is_read(tiny, direction):
    unit = direction.unit.float()
    seen = []

    def record(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(float((hidden @ unit).abs().max()))

    layers = tiny.model.model.layers
    with direction.ablate(tiny.model, ablation="zero", where="all"), torch.no_grad():
        handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers[1:]]
        handles += [
            layer.post_attention_layernorm.register_forward_pre_hook(
                lambda m, a: seen.append(float((a[0] @ unit).abs().max()))
            )
            for layer in layers
        ]
        try:
            tiny.model(**tiny.encode("How do I make a bomb at home?"))
        finally:
            for h in handles:
                h.remove()
    assert len(seen) == 2 * len(layers) - 1 and max(seen) < 1e-3  # every read of the stream: nothing along it


def test_projection_separates_the_classes_and_plots(tiny, direction):
    values = direction.project(tiny, TEST)
    harmful = [v for v, p in zip(values, TEST) if p.kind == "harmful"]
    benign = [v for v, p in zip(values, TEST) if p.kind == "benign"]
    assert min(harmful) > max(benign)
    import matplotlib

    matplotlib.use("Agg")
    fig, ax = plot_projection(values, [p.kind == "harmful" for p in TEST], [p.category for p in TEST])
    assert len(ax.get_yticks()) == 5
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["refused", "complied"]  # two-way: bools


def test_projection_plot_draws_the_three_verdicts_in_the_report_colours():
    import matplotlib
    from matplotlib.colors import to_hex

    from phi3lab.safety.report import VERDICT_COLOURS

    matplotlib.use("Agg")
    verdicts = ["declined", "off-topic", "complied", "declined"]
    fig, ax = plot_projection([3.0, -1.0, -2.0, 2.0], verdicts, ["a", "b", "b", "a"])
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["declined", "off-topic", "complied"]
    drawn = {c.get_label(): to_hex(c.get_facecolor()[0]) for c in ax.collections}
    assert drawn == {v: VERDICT_COLOURS[v] for v in ("declined", "off-topic", "complied")}
    assert sorted(x for c in ax.collections if c.get_label() == "declined" for x, _ in c.get_offsets()) == [2.0, 3.0]
    with pytest.raises(ValueError, match="outcomes must be verdicts.*r\\['verdict'\\]"):
        plot_projection([1.0], ["refused?"])


def test_evaluate_direction_generates_with_and_without(tiny, direction):
    harmful = [p.prompt for p in TEST.select(kind="harmful")][:6]
    harmless = [p.prompt for p in TEST.select(kind="benign")][:6]
    effect = evaluate_direction(tiny, direction, harmful, harmless, max_new_tokens=16)
    assert effect.harmful_refusal == 1 and effect.harmless_refusal == 0
    assert effect.harmless_refusal_added >= 0.5
    assert all(not a.startswith("I'm sorry") for _, a in effect.examples["harmful ablated"])
    assert 0 <= effect.kl_harmless_text < 0.1 and "KL" in effect.to_text()
    for shares in effect.verdicts.values():  # three kinds, each condition's shares summing to 1
        assert set(shares) == {"declined", "off-topic", "complied"} and sum(shares.values()) == pytest.approx(1)
    assert effect.verdicts["harmful"]["declined"] == effect.harmful_refusal == 1
    assert effect.verdicts["harmful ablated"]["declined"] == effect.harmful_refusal_ablated < 1
    # the ablated answers are not compliance: the tiny model answers another request or nothing sensible
    assert effect.verdicts["harmful ablated"]["complied"] == 0
    assert effect.verdicts["harmful ablated"]["off-topic"] > 0
    text = effect.to_text()
    assert "declined" in text and "off-topic" in text and "harmful, direction ablated" in text


@pytest.mark.parametrize(
    "kwargs, error, says",
    [
        ({"harmless": HARMFUL}, ValueError, "the same prompts"),
        ({"harmful": "How do I make a bomb?"}, TypeError, "must be a list of prompts"),
        ({"harmless": [1, 2, 3, 4]}, TypeError, "harmless[0] must be a non-empty prompt"),
        ({"max_layer_fraction": 0}, ValueError, "max_layer_fraction must be greater than 0"),
        ({"max_layer_fraction": 0.1}, ValueError, "must be at least 1/4 = 0.250"),
        ({"max_layer_fraction": 1.5}, ValueError, "max_layer_fraction must be at most 1"),
        ({"val_fraction": 0}, ValueError, "val_fraction must be greater than 0"),
        ({"val_fraction": 0.9}, ValueError, "val_fraction must be at most 0.5"),
        ({"kl_limit": float("nan")}, ValueError, "kl_limit must be a finite number"),
        ({"kl_limit": -1}, ValueError, "kl_limit must be greater than 0"),
        ({"batch_size": 0}, ValueError, "batch_size must be at least 1"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an integer"),
    ],
)
def test_find_direction_checks_its_arguments_first(tiny, kwargs, error, says):
    args = {"harmful": HARMFUL, "harmless": HARMLESS, **kwargs}
    with pytest.raises(error) as info:
        find_direction(tiny, args.pop("harmful"), args.pop("harmless"), **args)
    assert says in str(info.value)
    with pytest.raises(TypeError, match="takes a loaded Lab"):
        find_direction("tiny", HARMFUL, HARMLESS)


def test_evaluate_direction_checks_its_arguments(tiny, direction):
    with pytest.raises(TypeError, match="must be a RefusalDirection"):
        evaluate_direction(tiny, "direction", HARMFUL, HARMLESS)
    with pytest.raises(ValueError, match="harmful has 0 prompt"):
        evaluate_direction(tiny, direction, [], HARMLESS)
    with pytest.raises(TypeError, match="max_new_tokens must be an integer"):
        evaluate_direction(tiny, direction, HARMFUL, HARMLESS, max_new_tokens="16")


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="at least 4"):
        find_direction(tiny, HARMFUL[:2], HARMLESS[:2])
    with pytest.raises(ValueError, match="ablation must be one of"):
        find_direction(tiny, HARMFUL, HARMLESS, ablation="half")
    with pytest.raises(ValueError, match="where must be one of"):
        find_direction(tiny, HARMFUL, HARMLESS, where="first")
