"""The training code of the embedded models: its data, targets and determinism (short runs only)."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from phi3lab.tiny import build, tokenizer, train, train_vision, vision_data

ATTR = list(vision_data.ATTRIBUTES)


def decode(attrs: dict[str, int]) -> dict[str, str]:
    return {k: vision_data.ATTRIBUTES[k][v - 1] for k, v in attrs.items() if v}


@pytest.mark.parametrize("family, covered", [("shapes", 0.99), ("bars", 0.9), ("words", 0.85)])
def test_part_maps_cover_the_ink_and_agree_with_the_answers(family, covered):
    for ex in [e for e in vision_data.examples(30, 11, "test") if e.family == family][:5]:
        parts, ink = np.asarray(ex.parts), np.asarray(ex.image.convert("L")) < 200
        assert ex.parts.size == ex.image.size
        assert (ink & (parts > 0)).sum() / ink.sum() > covered  # all that is drawn is labelled (but a chart's axes)
        assert ((parts > 0) & ~ink).sum() / (parts > 0).sum() < 0.05  # and nothing else
        described = [decode(a) for a in ex.part_attributes]
        qas = [(ex.question, ex.answer), *ex.more]
        if family == "shapes":
            for part in described:
                assert (f"Where is the {part['colour']} {part['kind']}?",
                        f"The {part['colour']} {part['kind']} is at the {part['place']}.") in qas
        elif family == "bars":
            for part in (p for p in described if p["kind"] == "bar"):
                assert (f"What is the value of {part['bar']}?", f"{part['bar']} is {part['value']}.") in qas
        else:
            word = "".join(p["letter"] for p in described)  # the parts run left to right
            assert ex.answer == f"The word is {word}."
            columns = [np.nonzero(parts == k)[1].mean() for k in range(1, len(word) + 1)]
            assert columns == sorted(columns)


def test_training_asks_every_question_about_a_picture_once():
    ex = next(e for e in vision_data.examples(10, 2, "test") if e.family == "bars")
    conversation = vision_data.conversation(ex, random.Random(0))
    assert conversation[:2] == vision_data.messages(ex)  # the evaluated single turn comes first
    asked = [m["content"].removeprefix("<|image_1|>\n") for m in conversation if m["role"] == "user"]
    assert sorted(asked) == sorted([ex.question, *(q for q, _ in ex.more)])
    assert len(set(asked)) == len(asked) >= 4


def test_cell_targets_follow_the_hd_geometry():
    # a portrait picture: the HD transform scales it to 336 high and pads it left and right
    image = Image.new("RGB", (200, 400), "white")
    parts = vision_data._Parts(image.size)
    parts.draw.rectangle((100, 0, 199, 199), fill=parts.add(colour="red", kind="square", place="top right"))
    ex = vision_data.VisionExample("shapes", image, "q", "a", ((100, 0, 199, 199),), (), parts.image,
                                   tuple(parts.attributes))
    targets = train_vision.cell_targets(ex).reshape(12, 12, len(ATTR))
    covered = targets[..., ATTR.index("kind")] == vision_data.ATTRIBUTES["kind"].index("square") + 1
    # the picture lands at x 84..252 (scale 0.84), the square at x 168..252, y 0..168: cells 6..8, rows 0..5
    rows, cols = np.nonzero(covered.numpy())
    assert set(rows) == set(range(6)) and set(cols) == {6, 7, 8}
    assert (targets[covered][:, ATTR.index("colour")] == 1).all()  # red
    assert (targets[~covered] == 0).all()


def test_labels_cover_every_answer_and_its_end_only(tmp_path):
    from phi3lab.models.phi3_v import Phi3VProcessor

    processor = Phi3VProcessor.from_pretrained(train_vision.write_vision_files(tmp_path))
    ex = next(e for e in vision_data.examples(10, 2, "test") if e.family == "shapes" and e.more)
    conversation = vision_data.conversation(ex, random.Random(0))
    end, assistant = tokenizer.special_id("<|end|>"), tokenizer.special_id("<|assistant|>")
    item = train_vision.encode(processor, conversation, ex.image, end, assistant)
    labelled = item["labels"][item["labels"] >= 0]
    answers = [m["content"] for m in conversation if m["role"] == "assistant"]
    assert [a.strip() for a in processor.tokenizer.decode(labelled).split("<|end|>")[:-1]] == answers
    assert (labelled == end).sum() == len(answers)


def test_position_table_tells_every_patch_apart():
    table = train_vision.position_table(24, 64)
    assert table.shape == (577, 64) and (table[0] == 0).all()
    patches = table[1:]
    distances = torch.cdist(patches, patches) + torch.eye(576) * 1e9
    assert distances.min() > 0.1  # no two patches share a code
    # the first half encodes the row only, the second half the column only
    grid = patches.reshape(24, 24, 64)
    assert torch.allclose(grid[:, :1, :32], grid[:, 5:6, :32]) and torch.allclose(grid[:1, :, 32:], grid[5:6, :, 32:])


def _text_run(check=None):
    torch.manual_seed(0)
    from transformers import Phi3ForCausalLM

    model = Phi3ForCausalLM(build.text_config())
    gen = torch.Generator().manual_seed(1)
    batches = [{"input_ids": (ids := torch.randint(0, 2000, (2, 12), generator=gen)), "labels": ids} for _ in range(4)]
    stream = iter(batches)
    train.optimise(model, lambda: next(stream), 4, 1e-3, warmup=2, log_every=100,
                   lr_scale={"model.embed_tokens.": 0.0}, check=check, check_every=2)
    return model


def test_optimise_is_deterministic_and_the_progress_check_changes_nothing(capsys):
    seen = []
    a, b = _text_run(), _text_run(check=seen.append)
    assert seen == [2]
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    from transformers import Phi3ForCausalLM

    torch.manual_seed(0)
    start = Phi3ForCausalLM(build.text_config())
    assert torch.equal(a.model.embed_tokens.weight, start.model.embed_tokens.weight)  # lr scale 0: frozen
    assert not torch.equal(a.lm_head.weight, start.lm_head.weight)


def test_vision_training_is_deterministic_and_keeps_the_probe_out(tmp_path, capsys):
    import phi3lab

    runs = [train_vision.train(tmp_path / name, steps=2, batch_size=2) for name in ("a", "b")]
    a, b = (load_file(str(r / "model.safetensors")) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("heads" in k for k in a)
    assert "step     1/2" in capsys.readouterr().out
    lab = phi3lab.load(runs[0], verbose=False)
    assert lab.spec.modality == "vision"
