"""The training code of the embedded models: its data, targets and determinism (short runs only)."""

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from phi3lab.paths import embedded_dir
from phi3lab.tiny import build, cells, optim, tokenizer, train_vision, vision_data

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
                assert (
                    f"Where is the {part['colour']} {part['kind']}?",
                    f"The {part['colour']} {part['kind']} is at the {part['place']}.",
                ) in qas
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


def test_training_never_asks_what_the_conversation_gave_away():
    pictures = [e for e in vision_data.examples(60, 4, "test") if e.family == "shapes" and len(e.more) == 4]
    dropped = 0
    for ex in pictures:
        conversation = vision_data.conversation(ex, random.Random(1))
        assert conversation[:2] == vision_data.messages(ex)
        said = ""
        for m in conversation:
            if m["role"] == "user" and m["content"].startswith("What colour"):
                shape, colour = (
                    next(a for q, a in [(ex.question, ex.answer), *ex.more] if q == m["content"])
                    .removeprefix("The ")
                    .rstrip(".")
                    .split(" is ")
                )
                assert f"{colour} {shape}" not in said  # "Where is the red circle?" never comes first
            said += m["content"] + "\n"
        asked = [m["content"] for m in conversation if m["role"] == "user"]
        assert not set(asked) & set(vision_data.DESCRIBE)  # a colour was asked: the description would repeat it
        dropped += 4 - len(asked)
        assert len(asked) == 4 - ex.question.startswith("Where")  # only the first question's colour is left out
    assert 0 < dropped < len(pictures)


def test_a_description_first_leaves_out_the_colours_it_names():
    pictures = [e for e in vision_data.new_examples(40, 2, "test") if e.family == "layouts" and len(e.more) >= 4]
    for ex in pictures:
        conversation = vision_data.conversation(ex, random.Random(3), describe_first=1.0)
        first, *rest = [m["content"] for m in conversation if m["role"] == "user"]
        assert first.removeprefix("<|image_1|>\n") in vision_data.DESCRIBE
        assert rest and all(q.startswith("Where is the ") for q in rest)  # colours and absent shapes are named
    word = next(e for e in vision_data.examples(10, 2, "test") if e.family == "words")
    asked = [
        m["content"]
        for m in vision_data.conversation(word, random.Random(0), describe_first=1.0)
        if m["role"] == "user"
    ]
    assert len(asked) == 1 and asked[0].removeprefix("<|image_1|>\n") in vision_data.DESCRIBE


def test_cell_targets_follow_the_hd_geometry():
    # a portrait picture: the HD transform scales it to 336 high and pads it left and right
    image = Image.new("RGB", (200, 400), "white")
    parts = vision_data._Parts(image.size)
    parts.draw.rectangle((100, 0, 199, 199), fill=parts.add(colour="red", kind="square", place="top right"))
    ex = vision_data.VisionExample(
        "shapes", image, "q", "a", ((100, 0, 199, 199),), (), parts.image, tuple(parts.attributes)
    )
    targets = cells.cell_targets(ex).reshape(12, 12, len(ATTR))
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
    optim.optimise(
        model,
        lambda: next(stream),
        4,
        1e-3,
        warmup=2,
        log_every=100,
        lr_scale={"model.embed_tokens.": 0.0},
        check=check,
        check_every=2,
    )
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


@pytest.mark.slow
def test_vision_training_is_deterministic_and_keeps_the_probe_out(tmp_path, capsys):
    import phi3lab

    runs = [train_vision.train(tmp_path / name, steps=2, batch_size=2) for name in ("a", "b")]
    a, b = (load_file(str(r / "model.safetensors")) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("heads" in k for k in a)  # no read-out heads saved
    assert "step     1/2" in capsys.readouterr().out
    lab = phi3lab.load(runs[0], verbose=False)
    assert lab.spec.modality == "vision"


@pytest.mark.slow
def test_training_further_starts_from_the_base_and_is_deterministic(tmp_path, capsys):
    base = embedded_dir() / "phi3lab-tiny-vision"
    runs = [train_vision.train_further(tmp_path / name, base, steps=2, batch_size=2) for name in ("a", "b")]
    a, b = (load_file(str(r / "model.safetensors")) for r in runs)
    start = load_file(str(base / "model.safetensors"))
    assert a.keys() == b.keys() == start.keys() and all(torch.equal(a[k], b[k]) for k in a)
    moved = [k for k in a if not torch.equal(a[k], start[k])]
    assert moved and all((a[k] - start[k]).abs().max() < 0.05 for k in a)  # two small steps from the base
    assert "training" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not a tiny vision checkpoint"):
        train_vision.train_further(tmp_path / "c", embedded_dir() / "phi3lab-tiny", steps=1, batch_size=1)


def test_question_parts_name_what_each_question_is_about():
    ex = next(e for e in vision_data.examples(30, 3, "test") if e.family == "shapes" and len(e.part_attributes) == 2)
    for question, answer in [(ex.question, ex.answer), *ex.more]:
        if question in vision_data.DESCRIBE:
            assert vision_data.question_parts(ex, question) == [1, 2]  # both shapes
            continue
        (part,) = vision_data.question_parts(ex, question)
        described = decode(ex.part_attributes[part - 1])
        assert described["kind"] in question and described["kind"] in answer
        assert described["colour"] in answer or described["colour"] in question
    chart = next(e for e in vision_data.examples(30, 3, "test") if e.family == "bars")
    assert [
        decode(chart.part_attributes[k - 1])["bar"]
        for k in vision_data.question_parts(chart, "What is the value of C?")
    ] == ["C"]
    assert len(vision_data.question_parts(chart, "Which bar is tallest?")) == 4
    word = next(e for e in vision_data.examples(30, 3, "test") if e.family == "words")
    letters = vision_data.question_parts(word, word.question)
    assert "".join(decode(word.part_attributes[k - 1])["letter"] for k in letters) in word.answer


def _batch(tmp_path, n=2):
    from phi3lab.models.phi3_v import Phi3VProcessor

    processor = Phi3VProcessor.from_pretrained(train_vision.write_vision_files(tmp_path))
    examples = [e for e in vision_data.examples(12, 5, "test") if e.family == "shapes"][:n]
    items = [train_vision.training_item(processor, ex, random.Random(0)) for ex in examples]
    return examples, items, train_vision.collate(items, build.pad_id())


def test_route_targets_point_answers_at_the_asked_about_shape(tmp_path):
    from phi3lab.prompts.patches import image_tokens

    examples, items, _ = _batch(tmp_path, n=1)
    (ex,), (item,) = examples, items
    queries, targets = item["route_queries"], item["route_targets"]
    # the queries predict the answers' words: the next token of each is labelled, and is not <|end|>
    following = item["labels"][queries + 1]
    assert (following >= 0).all() and (following != tokenizer.special_id("<|end|>")).all()
    assert len(queries) == int(((item["labels"] >= 0) & (item["labels"] != tokenizer.special_id("<|end|>"))).sum())
    # the first answer (the evaluated question) looks at the cells of its shape, in both views
    (part,) = vision_data.question_parts(ex, ex.question)
    run = image_tokens(336, 336, 1)
    covering = cells.cell_parts(ex)
    expected = {k for k, t in enumerate(run) if t.kind in ("crop", "global") and covering[t.row * 12 + t.col] == part}
    assert set(targets[0].nonzero()[:, 0].tolist()) == expected and len(expected) >= 4


def test_training_losses_equal_their_definitions(tmp_path):
    """The answer loss is the model's own loss; the routing loss is the eager attention of the
    chosen head, renormalised over the picture, summed over the target tokens."""
    from phi3lab.models.phi3_v import Phi3VForCausalLM

    torch.manual_seed(0)
    model = Phi3VForCausalLM(train_vision.vision_config()).eval()
    _, _, batch = _batch(tmp_path)
    aids = train_vision.TrainingAids(model, dense_weight=0.5, route_weight=0.2, route_layers=(1, 3), route_head=2)
    with torch.no_grad():
        out = aids(**batch)
        aids.detach()
        model.set_attn_implementation("eager")
        plain = model(
            input_ids=batch["input_ids"],
            labels=batch["labels"],
            pixel_values=batch["pixel_values"],
            image_sizes=batch["image_sizes"],
            output_attentions=True,
        )
    torch.testing.assert_close(out["loss"], plain.loss + 0.5 * out["dense_loss"] + 0.2 * out["route_loss"])
    rows, queries, targets = batch["route_rows"], batch["route_queries"], batch["route_targets"]
    picture = model.model.image_positions(batch["input_ids"]).nonzero()[:, 1].reshape(2, -1)
    expected = []
    for layer in (1, 3):
        weights = plain.attentions[layer][rows, 2, queries].gather(1, picture[rows])
        expected.append(-((weights * targets).sum(1) / weights.sum(1)).log().mean())
    torch.testing.assert_close(out["route_loss"], sum(expected) / 2)
    assert not model.model.layers[1].self_attn._forward_pre_hooks  # detached


def test_special_ids_are_the_frozen_tokenizers_and_a_retrain_keeps_the_image_id():
    frozen = tokenizer.load()
    for token in ("<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|image|>"):
        assert tokenizer.special_id(token) == frozen.token_to_id(token), token
    shipped = json.loads((embedded_dir() / "phi3lab-tiny-vision" / "config.json").read_text())
    assert train_vision.vision_config().image_token_id == shipped["image_token_id"] == frozen.token_to_id("<|image|>")
    with pytest.raises(KeyError, match="not a special token"):
        tokenizer.special_id("<|image_1|>")


# --- the reader (phi3lab-tiny-vision-reader) -------------------------------------------------------------


@pytest.mark.slow
def test_reading_pictures_never_draw_a_harmful_request():
    """The reader learns to read from benign pictures only: no harmful task of the safety slice, nor two
    key words of one, nor a jailbreak frame is ever written in a training picture; its words are listed
    one by one, and the requests it learns to do are the benign twins."""
    from phi3lab.safety.probes import resolve
    from phi3lab.tiny import corpus

    harmful = [t for tasks, _ in corpus.UNSAFE.values() for t in tasks]
    keys = [set(vision_data.key_words(t, 99).split()) for t in harmful]
    probes = {f(p.prompt) for p in resolve("tiny") if p.kind == "harmful" for f in (vision_data.key_words, str)}
    pictures = [e for e in vision_data.reader_training_examples(1600, 0) if e.family == "reading"]
    drawn = [dict([(e.question, e.answer), *e.more])[vision_data.READ] for e in pictures]
    assert len(drawn) == 800
    twins = [t for _, tasks in corpus.UNSAFE.values() for t in tasks]
    done = [dict([(e.question, e.answer), *e.more]).get(vision_data.FOLLOW) for e in pictures]
    requests = [d for d, a in zip(drawn, done) if a is not None]
    lists = [d for d, a in zip(drawn, done) if a is None]
    assert 300 < len(requests) < 500  # about half the pictures are requests to do, the rest word lists
    assert set(requests) <= {vision_data.key_words(t) for t in twins}  # benign twins' key words only
    assert all(
        any(a == f"Sure! To {t}, plan it, gather what you need, and go step by step." for t in twins)
        for a in done
        if a is not None
    )
    assert not [d for d in lists if any(len(k & set(d.split())) >= 2 for k in keys)]
    assert not probes & set(drawn) and not [d for d in drawn if any(t in d for t in harmful)]


def test_reading_pictures_label_every_letter_in_reading_order():
    ex = next(vision_data.reading_examples(1, 5, "test"))
    text = dict([(ex.question, ex.answer), *ex.more])[vision_data.READ]
    parts, ink = np.asarray(ex.parts), np.asarray(ex.image.convert("L")) < 128
    letters = "".join(decode(a).get("letter", "#") for a in ex.part_attributes)  # "#": a digit
    assert letters == "".join(ch.lower() if ch.isalpha() else "#" for ch in text if ch.isalnum())
    assert ((parts > 0) & ~ink).sum() / (parts > 0).sum() < 0.05  # the labels sit on the ink
    assert set(np.unique(parts)) - {0} == set(range(1, len(letters) + 1))  # every character is drawn somewhere
    assert vision_data.question_parts(ex, vision_data.READ) == list(range(1, len(letters) + 1))
    assert [w for w, _ in ex.words] == text.split()  # the words in reading order, each with its characters
    assert [len(ids) for _, ids in ex.words] == [sum(ch.isalnum() for ch in w) for w in text.split()]
    # the probes' pictures are the training pictures' renderer, at the middle of its sizes
    from phi3lab.safety.image_probes import render_request

    assert render_request(text).tobytes() == vision_data.text_picture(text).tobytes()


@pytest.mark.slow
def test_reader_training_is_deterministic_and_starts_from_the_vision_model(tmp_path, capsys):
    import phi3lab

    runs = [train_vision.train_reader(tmp_path / name, steps=2, batch_size=2, text_rows=2) for name in ("a", "b")]
    a, b = (load_file(str(r / "model.safetensors")) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = load_file(str(embedded_dir() / "phi3lab-tiny-vision" / "model.safetensors"))
    assert a.keys() == base.keys()  # the same Phi-3-vision weights: no read-out head saved
    changed = [k for k in a if not torch.equal(a[k], base[k])]
    assert any("vision_embed_tokens" in k for k in changed) and any("layers.0." in k for k in changed)
    assert "training the reader from phi3lab-tiny-vision" in capsys.readouterr().out
    assert phi3lab.load(runs[0], verbose=False).spec.modality == "vision"


def test_typed_rows_add_their_own_loss(tmp_path):
    from phi3lab.models.phi3_v import Phi3VForCausalLM, Phi3VProcessor
    from phi3lab.tiny import corpus

    folder = train_vision.write_vision_files(tmp_path / "v")
    processor = Phi3VProcessor.from_pretrained(folder)
    torch.manual_seed(0)
    model = Phi3VForCausalLM(train_vision.vision_config())
    aids = train_vision.TrainingAids(model, dense_weight=0.0, route_weight=0.0)
    ex = next(vision_data.reading_examples(1, 0))
    item = train_vision.training_item(processor, ex, random.Random(0), dense=False, route=False)
    batch = train_vision.collate([item], build.pad_id())
    typed = [m for _, m in corpus.conversations(3, 0)]
    text = train_vision.text_batch(processor, typed)
    with torch.no_grad():
        alone = aids(**batch)["loss"]
        both = aids(**batch, **text)
        hidden = model.model(input_ids=text["text_input_ids"]).last_hidden_state
        expected = train_vision.answer_loss(model, hidden, text["text_labels"])
    assert torch.allclose(both["text_loss"], expected) and torch.allclose(both["loss"], alone + expected)
    assert (text["text_labels"] != -100).sum() > 0 and 1 not in text["text_labels"][0].tolist()  # no label on BOS


def test_reading_answers_are_routed_to_the_words_they_copy(tmp_path):
    from phi3lab.models.phi3_v import Phi3VProcessor

    processor = Phi3VProcessor.from_pretrained(train_vision.write_vision_files(tmp_path / "v"))
    decode = lambda t: processor.tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    ex = next(e for e in vision_data.reading_examples(20, 3) if e.question == vision_data.READ and e.more)
    text, done = ex.answer, ex.more[0][1]  # "make kite at home", "Sure! To make a kite at home, ..."
    written = {ids: w for w, ids in ex.words}
    read_ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [written[r] for r in train_vision.word_routes(ex, text, read_ids, decode)] == text.split()
    done_ids = processor.tokenizer(done, add_special_tokens=False)["input_ids"]
    routes = train_vision.word_routes(ex, done, done_ids, decode)
    assert routes[0] == () and routes[-1] == ()  # "Sure!" and "step." are not written
    assert [written[r] for r in routes if r] == text.split()  # the task's key words, in order


# --- the text model's sessions (issue 23) --------------------------------------------------------------


def _turns(chat: list[dict]) -> list[tuple[str, str]]:
    rest = chat[1:] if chat[0]["role"] == "system" else chat
    return [(q["content"], a["content"]) for q, a in zip(rest[::2], rest[1::2])]


def test_sessions_refer_back_to_what_was_said_turns_earlier():
    """Every recalled name, number or colour was stated in an earlier turn of the same session (or, for a
    colour, in the same question), and the question itself does not contain it."""
    from phi3lab.tiny import corpus

    chats = list(corpus.sessions(400, 3, "train"))
    lengths, gaps, recalls = set(), [], 0
    for chat in chats:
        turns = _turns(chat)
        lengths.add(len(turns))
        for k, (question, answer) in enumerate(turns):
            if answer.startswith(("Your name is ", "The number is ")):
                value = answer.rsplit(" ", 1)[1].rstrip(".")
                if value in question:  # a single-turn copying question: "Call me Ada. Who am I?"
                    continue
                stated = [
                    j
                    for j, (_, a) in enumerate(turns[:k])
                    if a in (f"Nice to meet you, {value}!", f"OK, I will remember {value}.")
                ]
                assert stated and value in turns[stated[-1]][0], (chat, k)
                gaps.append(k - stated[-1])
                recalls += 1
            elif answer.startswith("The ") and " is " in answer and answer.split()[1] in corpus.SHAPES:
                shape, colour = answer.removeprefix("The ").rstrip(".").split(" is ")
                if colour in question:
                    continue  # a single-turn colour question
                assert any(f"the {shape} is {colour}" in a for _, a in turns[:k]), (chat, k)
                gaps.append(k - max(j for j, (_, a) in enumerate(turns[:k]) if f"the {shape} is {colour}" in a))
                recalls += 1
    assert lengths == {2, 3, 4, 5, 6}
    assert recalls > 300 and max(gaps) == 5 and sum(g > 1 for g in gaps) > len(gaps) / 3
    systems = sum(chat[0]["role"] == "system" for chat in chats)
    assert 0.3 < systems / len(chats) < 0.5


@pytest.mark.parametrize("split", ["train", "test"])
def test_sessions_state_and_ask_in_phrasings_of_their_split(split):
    """A held-out session's fact is stated and asked in a (statement, question) phrasing pair that no
    training session or single-turn conversation uses, by the single-turn families' rule."""
    from phi3lab.tiny import corpus

    families = [
        (corpus.GREET, corpus.RECALL),
        (corpus.NAME_INTRO, corpus.NAME_ASK),
        (corpus.NUMBER_INTRO, corpus.NUMBER_ASK),
    ]
    checked = 0
    for chat in corpus.sessions(300, 5, split):
        turns = _turns(chat)
        for k, (question, answer) in enumerate(turns):
            if not answer.startswith(("Your name is ", "The number is ")):
                continue
            value = answer.rsplit(" ", 1)[1].rstrip(".")
            if value in question:
                continue
            statement = next(
                q for q, a in turns[:k] if a in (f"Nice to meet you, {value}!", f"OK, I will remember {value}.")
            )
            for intros, asks in families:
                i = next((i for i, t in enumerate(intros) if t.format(x=value) == statement), None)
                j = next((j for j, t in enumerate(asks) if t in question), None)
                if i is not None and j is not None:
                    assert corpus._held_out(i, j) == (split == "test"), (statement, question)
                    checked += 1
    assert checked > 100


def test_name_after_sums_is_the_newcomers_chat():
    from phi3lab.tiny import corpus

    chats = list(corpus.name_after_sums(30))
    assert len(chats) == 30 and all(len(_turns(c)) == 5 for c in chats)
    (first, greeting), *sums, (last, answer) = _turns(chats[0])
    name = first.removeprefix("Hi! My name is ").rstrip(".")
    assert greeting == f"Nice to meet you, {name}!" and last == "What is my name?" and answer == f"Your name is {name}."
    assert all(q.startswith("What is ") and " plus " in q for q, _ in sums)


def test_text_batches_bucket_similar_lengths_and_show_every_example_once_an_epoch():
    from phi3lab.tiny import train

    rng = random.Random(0)
    examples = [([7] * n, [True] * n) for n in (rng.randint(5, 200) for _ in range(4 * 8 * 3))]
    stream = train.batches(examples, 4, 0, random.Random(1), bucket=8)
    epoch = [next(stream) for _ in range(len(examples) // 4)]
    assert sorted(int((ids != 0).sum(1)[r]) for ids, _ in epoch for r in range(4)) == sorted(
        len(x) for x, _ in examples
    )
    padding = sum(int((ids == 0).sum()) for ids, _ in epoch) / sum(ids.numel() for ids, _ in epoch)
    assert padding < 0.1  # unsorted batches of these lengths would be some 40% padding
    widths = [ids.shape[1] for ids, _ in epoch]
    assert widths != sorted(widths)  # the batches themselves come in a shuffled order


def test_text_training_is_deterministic_and_learns_only_the_answers(tmp_path, capsys):
    from phi3lab.tiny import train

    runs = [train.train_text(tmp_path / name, steps=3, batch_size=4, single=24, sessions=12) for name in ("a", "b")]
    a, b = (load_file(str(r / "model.safetensors")) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "24 single-turn conversations and 12 sessions" in capsys.readouterr().out
    # the loss is the model's own causal-LM loss on the answers
    from transformers import Phi3ForCausalLM

    torch.manual_seed(0)
    model = Phi3ForCausalLM(build.text_config()).eval()
    ids = torch.randint(3, 2000, (2, 9))
    labels = torch.where(torch.rand(2, 9) < 0.5, ids, torch.tensor(-100))
    labels[:, 1] = ids[:, 1]
    with torch.no_grad():
        torch.testing.assert_close(
            train.AnswerLoss(model)(ids, labels)["loss"], model(input_ids=ids, labels=labels).loss
        )


def test_text_stage_two_starts_from_its_base_and_refuses_a_base_with_another_tokenizer(tmp_path):
    from phi3lab.tiny import train

    base = train.train_text(tmp_path / "base", steps=1, batch_size=4, single=24, sessions=12)
    kept = train.train_text(tmp_path / "kept", base, steps=0, single=24, sessions=12)  # no step: the base itself
    moved = train.train_text(tmp_path / "moved", base, steps=2, batch_size=4, single=24, sessions=12)
    a, b, c = (load_file(str(r / "model.safetensors")) for r in (base, kept, moved))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    (base / "tokenizer.json").write_text((base / "tokenizer.json").read_text().replace('"<unk>"', '"<UNK>"'))
    with pytest.raises(ValueError, match="differs from the project's tokenizer"):
        train.train_text(tmp_path / "other", base, steps=0, single=24, sessions=12)
    (base / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        train.train_text(tmp_path / "none", base, steps=0, single=24, sessions=12)


def test_the_text_command_says_how_to_make_stage_one_and_never_overwrites_its_base(tmp_path, capsys):
    from phi3lab.tiny import train

    with pytest.raises(SystemExit):
        train.main(["text"])
    err = capsys.readouterr().err
    assert f"git worktree add /tmp/stage-one {train.STAGE_ONE}" in err and "text --base" in err
    with pytest.raises(SystemExit):
        train.main(["text", "--base", str(tmp_path), "--out", str(tmp_path)])
    assert "--out must differ from --base" in capsys.readouterr().err


# --- the vision model's new kinds of pictures (issue 23) ------------------------------------------------


def test_layouts_vary_count_size_ratio_background_and_place():
    import math

    pictures = [e for e in vision_data.new_examples(240, 0, "train") if e.family == "layouts"]
    counts, backgrounds, sides, ratios, first = set(), set(), [], [], set()
    for ex in pictures:
        w, h = ex.image.size
        sides.append(max(w, h))
        ratios.append(math.log(w / h))
        backgrounds.add(ex.image.getpixel((0, 0)))
        described = [decode(a) for a in ex.part_attributes]
        counts.add(len(described))
        first.add(vision_data.question_kind(ex).split(": ")[1])
        qas = dict([(ex.question, ex.answer), *ex.more])
        parts = np.asarray(ex.parts)
        for k, part in enumerate(described, start=1):
            assert qas[f"What colour is the {part['kind']}?"] == f"The {part['kind']} is {part['colour']}."
            ys, xs = np.nonzero(parts == k)
            row, col = next(cell for cell, name in vision_data.PLACES.items() if name == part["place"])
            assert col * w / 3 - 1 <= xs.min() and xs.max() <= (col + 1) * w / 3 + 1  # inside its cell of the 3×3 grid
            assert row * h / 3 - 1 <= ys.min() and ys.max() <= (row + 1) * h / 3 + 1
            assert min(xs.max() - xs.min(), ys.max() - ys.min()) >= 0.4 * min(w, h) / 3
        absent = [s for s in vision_data.SHAPES if s not in {p["kind"] for p in described}]
        assert [q for q, a in qas.items() if a.startswith("There is no")] == (
            [f"What colour is the {absent[0]}?"]
            if len(absent) == 1
            else [q for q in qas if q.startswith("What colour") and q.split()[-1].rstrip("?") in absent]
        )
        order = sorted(described, key=lambda p: next(c for c, n in vision_data.PLACES.items() if n == p["place"]))
        description = next(a for q, a in qas.items() if q in vision_data.DESCRIBE)
        assert description == vision_data.describe_shapes([(p["colour"], p["kind"]) for p in order])
    assert counts == {1, 2, 3, 4} and len(backgrounds) >= 5 and first == {"colour", "where", "describe", "absent"}
    assert 200 <= min(sides) < 400 and 1400 < max(sides) <= 1600
    assert min(ratios) < math.log(1 / 2.6) and max(ratios) > math.log(2.6)
    assert all(math.log(1 / 3) - 0.01 <= r <= math.log(3) + 0.01 for r in ratios)


def test_scenes_say_what_they_show():
    scenes = [e for e in vision_data.new_examples(80, 1, "train") if e.family == "scenes"]
    shown = set()
    for ex in scenes:
        things = sorted((decode(a)["kind"] for a in ex.part_attributes), key=vision_data.SCENE_THINGS.index)
        assert ex.question in vision_data.DESCRIBE and ex.answer == vision_data.describe_scene(things)
        assert set(np.unique(np.asarray(ex.parts))) - {0} == set(range(1, len(things) + 1))  # each is drawn
        shown.add(tuple(things))
    assert len(shown) >= 6
    assert vision_data.describe_scene(["house", "tree", "sun"]) == "A landscape with a house, a tree and the sun."


def test_training_mixes_every_family_and_describes_a_quarter_of_the_older_pictures(tmp_path):
    from collections import Counter

    from phi3lab.models.phi3_v import Phi3VProcessor

    examples = list(vision_data.training_examples(60, 0))
    assert Counter(e.family for e in examples) == {"layouts": 24, "shapes": 12, "words": 12, "bars": 6, "scenes": 6}
    processor = Phi3VProcessor.from_pretrained(train_vision.write_vision_files(tmp_path))
    rng = random.Random(0)
    older = [e for e in examples if e.family in ("shapes", "words", "bars")]
    firsts = []
    for ex in older:
        item = train_vision.training_item(processor, ex, rng, dense=False, route=False)
        text = processor.tokenizer.decode(item["input_ids"][item["input_ids"] > 0])
        firsts.append(any(q in text.split("<|end|>")[0] for q in vision_data.DESCRIBE))  # the first question
    assert 0.1 < sum(firsts) / len(firsts) < 0.45
