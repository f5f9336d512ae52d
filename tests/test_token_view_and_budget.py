import pytest

from phi3lab.prompts.budget import Budget, image_size, token_budget
from phi3lab.prompts.token_view import token_table
from phi3lab.runtime.registry import lookup

VISION = lookup("microsoft/Phi-3-vision-128k-instruct")
MINI_4K = lookup("microsoft/Phi-3-mini-4k-instruct")


@pytest.fixture(scope="module")
def real_tokenizer(reference):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(reference / "phi3v-tiny-random" / "model", trust_remote_code=False)


def test_token_table_segments(real_tokenizer):
    msgs = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello"}]
    table = token_table(real_tokenizer, msgs)
    assert table.ids[:4] == [1, 32006, 29871, 13]
    assert [r.segment for r in table.rows[:5]] == ["special", "special", "separator", "separator", "system"]
    assert table.counts() == {"system": 6, "user": 1, "special": 6, "separator": 8}
    hello = next(r for r in table.rows if r.id == 10994)
    assert (hello.segment, table.prompt[hello.start : hello.end]) == ("user", "Hello")
    text = table.to_text()
    assert "   16   10994  user       " in text
    assert text.endswith("21 tokens: system 6, user 1, special 6, separator 8")


def test_token_table_image_runs(real_tokenizer):
    msgs = [{"role": "user", "content": "<|image_1|>\nWhat is shown in this image?"}]
    table = token_table(real_tokenizer, msgs, image_token_counts=[2509])
    assert len(table) == 2527 and table.counts()["image"] == 2509
    assert "   4-2512  -1×2509  image      9-20       '<|image_1|>'" in table.to_text()
    html = table.to_html()
    assert "&lt;|image_1|&gt; ×2509" in html and "#fed7aa" in html and "<script" not in html


def test_token_table_on_embedded_model(tiny):
    table = tiny.tokens("What is 2 plus 3?")
    assert table.rows[0].segment == "special" and table.rows[-1].token == "<|assistant|>"
    assert {r.segment for r in table.rows} == {"special", "separator", "user"}
    assert table._repr_html_().startswith("<div")


def test_token_chips_read_in_dark_themes_and_show_the_space_piece(tiny):
    import re

    from phi3lab.prompts.token_view import CHIP_TEXT, SEGMENT_COLOURS

    table = tiny.tokens("What is 2 plus 3?")
    spans = re.findall(r'<span[^>]*style="([^"]*)"[^>]*>([^<]*)</span>', table.to_html())
    assert len(spans) == len(table) + len(table.counts())  # one chip per token, one per legend entry
    for style, _ in spans:  # an explicit dark text colour on a pastel background, never the theme's colour
        assert f"color:{CHIP_TEXT}" in style
        assert re.search(r"background:(#[0-9a-f]{6})", style)[1] in SEGMENT_COLOURS.values()
    pieces = [text for _, text in spans[: len(table)]]
    assert pieces[:3] == ["&lt;|user|&gt;", "▁", "\\n"] and "▁is" in pieces and "·" not in "".join(pieces)


def test_budget_two_images_cross_longrope(real_tokenizer):
    msgs = [{"role": "user", "content": "<|image_1|>\n<|image_2|>\nCompare the two images."}]
    budget = token_budget(real_tokenizer, msgs, VISION, images=[(1344, 1344), (800, 600)])
    assert budget.image_tokens == (2509, 1921) and budget.prompt_tokens == 4450
    assert budget.fits and budget.prompt_crosses_longrope
    assert "LongRoPE switch: the prompt has 4,450 tokens > 4,096" in budget.to_text()


def test_budget_num_crops_changes_image_tokens(real_tokenizer):
    msgs = [{"role": "user", "content": "<|image_1|>\nWhat?"}]
    assert token_budget(real_tokenizer, msgs, VISION, images=[(1920, 1080)], num_crops=4).image_tokens == (757,)
    assert token_budget(real_tokenizer, msgs, VISION, images=[(1920, 1080)]).image_tokens == (2353,)


def test_budget_generation_crossing_and_overflow():
    b = Budget(text_tokens=4000, image_tokens=(), max_new_tokens=200, context_length=131072, longrope_switch=4096)
    assert b.generation_crosses_longrope and not b.prompt_crosses_longrope
    small = Budget(text_tokens=4000, image_tokens=(), max_new_tokens=200, context_length=4096, longrope_switch=None)
    assert not small.fits and len(small.warnings()) == 1 and small.warnings()[0].startswith("over the context")


def test_budget_on_4k_model_has_no_longrope(real_tokenizer):
    budget = token_budget(real_tokenizer, "hello " * 5000, MINI_4K, max_new_tokens=10)
    assert not budget.fits and not budget.prompt_crosses_longrope
    assert "over the context" in budget.to_text()


def test_budget_displays_as_a_table_and_a_one_line_repr():
    b = Budget(
        text_tokens=25, image_tokens=(2509, 1921), max_new_tokens=256, context_length=131072, longrope_switch=4096
    )
    assert repr(b) == "<Budget 4,711 of 131,072 tokens: 25 text + 2,509 image + 1,921 image + 256 new; LongRoPE switch>"
    html = b._repr_html_()
    assert html.startswith("<table>") and html.count("<tr>") == len(str(b).splitlines()) == 6
    assert ">image tokens</th><td" in html and ">2,509 + 1,921</td>" in html
    assert "⚠ LongRoPE switch: the prompt has 4,455 tokens &gt; 4,096" in html
    ok = Budget(text_tokens=12, image_tokens=(), max_new_tokens=0, context_length=4096, longrope_switch=None)
    assert repr(ok) == "<Budget 12 of 4,096 tokens: 12 text + 0 new; fits>" and ">status</th>" in ok._repr_html_()


def test_image_size_reads_header_only(tmp_path):
    from PIL import Image

    path = tmp_path / "x.png"
    Image.new("RGB", (640, 480)).save(path)
    assert image_size(path) == (640, 480) == image_size(Image.open(path)) == image_size((640, 480))
