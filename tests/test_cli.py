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
