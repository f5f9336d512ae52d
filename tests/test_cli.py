"""The phi3lab command."""

import pytest

from phi3lab.cli import main


def test_info_prints_report_and_choice(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "attention per dtype:" in out
    assert "selected: sdpa · float32 · cpu — CPU: sdpa is the fastest kernel that runs here" in out


def test_info_with_model(capsys):
    assert main(["info", "--model", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "phi3lab-tiny (embedded" in out and "attention   sdpa — " in out


def test_chat_answers_once(capsys):
    assert main(["chat", "What is 2 plus 3?", "--stats"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "2 plus 3 is 5."
    assert "new tokens" in captured.err and "stop" in captured.err


def test_chat_with_an_image(capsys, tmp_path):
    from phi3lab.tiny.vision_data import sample_images

    path = tmp_path / "word.png"
    sample_images()["word.png"].save(path)
    assert main(["chat", "What word is written?", "--model", "tiny-vision", "--image", str(path)]) == 0
    assert capsys.readouterr().out.strip().startswith("The word is")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["chat", "hi", "--model", "nope"], "unknown model 'nope'"),
        (["chat", "hi", "--attn", "flash_attention_2"], "flash-attention 2"),
        (["chat", "hi", "--image", "/no/such.png"], "no image file"),
        (["chat", "hi", "--max-new-tokens", "0"], "max_new_tokens must be at least 1"),
    ],
)
def test_errors_are_one_clear_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("phi3lab: error: ") and message in err


def test_chat_can_escape_typed_special_tokens(capsys):
    assert main(["chat", "Say <|end|>", "--max-new-tokens", "3"]) == 2
    assert "special_tokens='escape'" in capsys.readouterr().err
    assert main(["chat", "Say <|end|>", "--max-new-tokens", "3", "--special-tokens", "escape"]) == 0
    assert capsys.readouterr().out.strip()


def test_every_option_of_every_command_has_help():
    import argparse

    from phi3lab.cli import _parser

    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [
        f"{name} {action.option_strings[0]}"
        for name, sub in commands.items()
        for action in sub._actions
        if action.option_strings and not action.help
    ]
    assert not missing, f"options without help: {missing}"
    assert {"info", "chat", "probe"} <= set(commands)


def test_chat_warns_when_a_vision_model_gets_no_picture(capsys):
    assert main(["chat", "What word is written?", "--model", "tiny-vision", "--max-new-tokens", "4"]) == 0
    err = capsys.readouterr().err
    assert "phi3lab: warning: phi3lab-tiny-vision is a vision model and no picture was given" in err
    assert "--image PATH" in err
    assert main(["chat", "What is 2 plus 3?", "--max-new-tokens", "4"]) == 0
    assert "warning" not in capsys.readouterr().err  # a text model is not warned


def _rows_file(tmp_path, change=None):
    import json

    row = {
        "key": "k1",
        "probe": "p",
        "probe_set": "tiny",
        "category": "weapons",
        "kind": "harmful",
        "transform": "none",
        "model": "m",
        "settings": {},
        "response": "I'm sorry, I can't help with that.",
        "refused": True,
        "verdict": "declined",
    }
    bad = {**row, "key": "k2", **(change or {})}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(bad) + "\n")
    return path


@pytest.mark.parametrize("change", [{"kind": "neutral"}, {"refused": "no"}])
def test_probe_report_names_a_bad_row_and_reports_the_rest(capsys, tmp_path, change):
    assert main(["probe", "--report", str(_rows_file(tmp_path, change))]) == 0
    captured = capsys.readouterr()
    assert "internal error" not in captured.err
    assert captured.err.startswith("phi3lab: warning: r.jsonl: kept 1 rows; line 2: malformed")
    assert "1 answers" in captured.out and "line 2: malformed" in captured.out


def test_probe_report_of_a_file_that_is_not_results(capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert main(["probe", "--report", str(notes)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phi3lab: error: ") and "is not a phi3lab results file" in err
    assert main(["probe", "--report", str(_rows_file(tmp_path)), "--failures", "-1"]) == 2
    assert "--failures must be 0 or more" in capsys.readouterr().err
