"""Every result object shows itself in a notebook: a text form for ``print`` (tested line by line here),
an HTML form that is well-formed, has no script and escapes user text, and a repr that is neither
``<… object at 0x…>`` nor a raw dataclass dump."""

from __future__ import annotations

import dataclasses
import html.parser
import importlib
import inspect
import re
import types
from pathlib import Path

import pytest
import torch

from phi3lab import reprs
from phi3lab.views import display

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = '<img src=x onerror="alert(1)"> & <b>bold</b>'
ESCAPED = "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; &lt;b&gt;bold&lt;/b&gt;"
VOID = {"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr", "source"}


class _Checker(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "script" or any(name.startswith("on") for name, _ in attrs):
            self.problems.append(f"<{tag}> with a script or an event handler")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
        else:
            self.stack.pop()


def well_formed(markup: str) -> str:
    """``markup`` back, after checking that its tags nest and close and that it runs no script."""
    assert isinstance(markup, str) and markup.strip(), "an empty HTML form"
    checker = _Checker()
    checker.feed(markup)
    checker.close()
    assert checker.problems == [] and checker.stack == [], (checker.problems, checker.stack)
    return markup


def test_the_checker_catches_broken_and_scripted_html():
    with pytest.raises(AssertionError):
        well_formed("<div><span>a</div>")
    with pytest.raises(AssertionError):
        well_formed("<div><script>alert(1)</script></div>")
    with pytest.raises(AssertionError):
        well_formed(f"<div>{HOSTILE}</div>")  # unescaped user text is an element with a handler
    well_formed(f"<div>{ESCAPED}<br></div>")


# --- the building blocks --------------------------------------------------------------------------------


def test_rows_and_grids_align_and_escape():
    assert reprs.rows_text([("a", "1"), ("long key", "two\nlines")], title="T") == (
        "T\na         1\nlong key  two\n          lines"
    )
    assert reprs.grid_text(["name", "n"], [["x", 3], ["longer", 12]]) == "name     n\nx        3\nlonger  12"
    page = well_formed(reprs.rows_html([("prompt", HOSTILE), ("raw", reprs.Markup("<i>ok</i>"))], title=HOSTILE))
    assert page.count(ESCAPED) == 2 and "<i>ok</i>" in page
    grid = well_formed(reprs.grid_html(["h"], [[HOSTILE]], styles=[["color:red"]], note=HOSTILE))
    assert grid.count(ESCAPED) == 2 and 'style="padding' in grid
    assert ESCAPED in well_formed(reprs.pre_html(HOSTILE))


# --- runtime ------------------------------------------------------------------------------------------------


def test_lab(tiny):
    text = tiny.to_text()
    assert str(tiny) == text == tiny.info()
    lines = text.splitlines()
    assert lines[0].startswith("model       phi3lab-tiny (embedded: ") and "attention   sdpa — " in text
    page = well_formed(tiny._repr_html_())
    assert "Lab: phi3lab-tiny" in page and "1,381,504" in page and "stop ids" in page
    assert repr(tiny) == "Lab('phi3lab-tiny', sdpa, float32, cpu)"


def test_chat_result(tiny):
    from phi3lab.runtime.generation import ChatResult

    result = ChatResult(HOSTILE, (5, 6), 12, 2, 0.25, 8.0, "stop", ())
    assert str(result) == HOSTILE and result.to_text() == (
        f"{HOSTILE}\n(12 prompt + 2 new tokens · first token after 250 ms · 8.0 tokens/s · stop)"
    )
    assert repr(result) == f"ChatResult({HOSTILE!r}, 2 new tokens, stop)"
    assert ESCAPED in well_formed(result._repr_html_())
    real = tiny.chat("What is 2 plus 3?", stream=False, max_new_tokens=8)
    assert repr(real).startswith(f"ChatResult({real.text!r}, {real.new_tokens} new tokens, ")


def test_attention_choice_hardware_and_spec(tiny):
    import phi3lab

    choice = tiny.attention
    assert repr(choice) == f"AttentionChoice({choice.summary()})" and choice.to_text() == str(choice)
    page = well_formed(choice._repr_html_())
    assert "Attention choice" in page and choice.reason in page
    report = phi3lab.hardware_report()
    text = report.to_text()
    assert text.splitlines()[0].startswith("python") and "attention per dtype:" in text
    assert re.search(r"^  float32   sdpa · float32 · cpu — ", text, re.M)
    assert repr(report).startswith(f"HardwareReport(torch {report.torch}, transformers {report.transformers}, ")
    assert "attention per dtype" in well_formed(report._repr_html_())
    assert repr(report.probes).startswith("Probes(default device cpu")
    assert repr(tiny.spec) == "ModelSpec('phi3lab-tiny', text, 4,096 tokens, embedded)"


# --- prompts -------------------------------------------------------------------------------------------------


def test_inputs_text_and_escaped_html(vision, picture):
    inputs = vision.encode(f"<|image_1|>\n{HOSTILE} What colour is the triangle?", [picture])
    lines = inputs.to_text().splitlines()
    assert re.fullmatch(r"\d+ tokens \(user \d+, image \d+, special \d+, separator \d+\)", lines[0])
    span = inputs.images[0]
    assert lines[1] == (
        f"image 1: {span.width}×{span.height}, num_crops {span.num_crops}, {span.layout.grid[0]}×"
        f"{span.layout.grid[1]} crops, tokens {span.start}..{span.end - 1} ({span.num_tokens})"
    )
    page = well_formed(inputs._repr_html_())
    assert f"Inputs: {inputs.num_tokens} tokens" in page and "input_ids [1, " in page and "pixel_values" in page
    assert "onerror=" not in page.replace("onerror=&quot;", "")  # every piece of the prompt escaped
    assert repr(span) == (
        f"ImageSpan(image 1: {span.width}×{span.height}, num_crops {span.num_crops}, tokens {span.start}..{span.end - 1})"
    )


def test_token_table_budget_and_rows(tiny):
    table = tiny.tokens("What is 2 plus 3?")
    counts = ", ".join(f"{k} {v}" for k, v in table.counts().items())
    assert repr(table) == f"TokenTable({len(table)} tokens: {counts})" and counts.startswith("user ")
    assert repr(table.rows[0]) == "TokenRow(#0 id 2010 '<|user|>' special 0-8)"
    budget = tiny.budget("What is 2 plus 3?", max_new_tokens=10)
    assert budget.to_text().splitlines()[0].startswith("text tokens") and well_formed(budget._repr_html_())


def test_hd_layout_and_image_tokens():
    from phi3lab.prompts.patches import hd_layout, image_tokens

    layout = hd_layout(1920, 1080, 16)
    assert layout.to_text() == (
        "1920×1080 with num_crops 16: resized to 1680×945, padded to 1680×1008, 3×5 crops of 336, 2353 tokens"
    )
    assert repr(layout) == f"HDLayout({layout.to_text()})" and str(layout) == layout.to_text()
    page = well_formed(layout._repr_html_())
    assert "2353" in page and "3×5 of 336×336" in page
    assert "transposed" in hd_layout(300, 900, 4).to_text()
    tokens = image_tokens(1920, 1080, 16)
    assert repr(tokens[0]) == "ImageToken(#0 crop 1 r0c0 padding)"  # the canvas's top rows are padding
    inside = next(t for t in tokens if t.image_box is not None)
    assert re.fullmatch(r"ImageToken\(#\d+ crop 1 r\d+c0 pixels \(0, \d+\)–\(\d+, \d+\)\)", repr(inside))
    separator = next(t for t in tokens if t.kind == "row_separator")
    assert repr(separator) == f"ImageToken(#{separator.index} row_separator row {separator.row})"


# --- inspection, through views.display ------------------------------------------------------------------


def test_cache_text_and_html(vision, picture):
    _, cache = vision.generate_with_cache("<|image_1|>\nWhat colour is the triangle?", [picture], max_new_tokens=4)
    text = display.cache_text(cache)
    rows = dict(line.split(None, 1) if " " in line else (line, "") for line in text.splitlines()[1:])
    assert text.splitlines()[0] == "Cache of phi3lab-tiny-vision"
    assert rows["prompt"] == f"{cache.prompt_tokens} tokens"
    answer = vision.tokenizer.decode(list(cache.answer_ids), skip_special_tokens=True)
    assert rows["answer"] == f"{len(cache.answer_ids)} tokens: {answer!r}"
    assert rows["layers"] == "0..3" and rows["heads"] == "all"
    assert rows["positions"] == f"{len(cache.positions)} rows: {cache.positions[0]}..{cache.positions[-1]}"
    nbytes = display._cache_bytes(cache)
    assert nbytes > 0 and rows["memory"] == f"{display.human_bytes(nbytes)} ({nbytes:,} bytes)"
    span = cache.inputs.images[0]
    assert f"image 1    {span.width}×{span.height}, num_crops {span.num_crops}" in text
    assert "Cache of phi3lab-tiny-vision" in well_formed(display.cache_html(cache))


def test_cache_html_escapes_the_answer():
    tokenizer = types.SimpleNamespace(decode=lambda ids, skip_special_tokens: HOSTILE)
    cache = types.SimpleNamespace(
        lab=types.SimpleNamespace(tokenizer=tokenizer, spec=types.SimpleNamespace(name="m")),
        prompt_tokens=3,
        answer_ids=(7, 8),
        sites=("pattern", "resid_post"),
        layers=[0, 2],
        heads=[1],
        positions=[1, 2, 5],
        inputs=types.SimpleNamespace(images=()),
        nbytes=2048,
    )
    assert display.cache_rows(cache) == [
        ("prompt", "3 tokens"),
        ("answer", f"2 tokens: {HOSTILE!r}"),
        ("sites", "pattern, resid_post"),
        ("layers", "0, 2"),
        ("heads", "1"),
        ("positions", "3 rows: 1, 2, 5"),
        ("memory", "2.0 KiB (2,048 bytes)"),
    ]
    page = well_formed(display.cache_html(cache))
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page


def _patching(grid, dims=("layer", "position"), positions=None, heads=None, clean=2.0, corrupted=0.0):
    layers = list(range(grid.shape[0]))
    positions = positions if positions is not None else (list(range(grid.shape[1])) if "position" in dims else None)
    tokens = [f"<t{i}>" for i in range(max(positions or [0]) + 1)]
    return types.SimpleNamespace(
        site="resid_pre",
        grid=grid,
        dims=dims,
        layers=layers,
        positions=positions,
        heads=heads,
        clean=clean,
        corrupted=corrupted,
        metric="logit difference ' Ada' − ' Bob'",
        tokens=tokens,
        normalized=(grid - corrupted) / (clean - corrupted),
    )


def test_patching_forms_of_a_real_result(tiny):
    clean = "My name is Ada. What is my name?"
    result = tiny.patch(clean, clean.replace("Ada", "Ben"), answer=" Ada.", wrong=" Ben.", layers=[0, 1])
    n = result.grid.shape[1]
    lines = display.patching_text(result, top=3).splitlines()
    assert lines[0] == f"activation patching of 'resid_pre': layer 2 × position {n}" and len(lines) == 6
    assert re.fullmatch(r"  [+-]\d\.\d{3} at layer [01], position \d+ '.+'", lines[3])
    page = well_formed(display.patching_html(result))
    assert "0 &lt;|user|&gt;" in page and "<|user|>" not in page and page.count("<tr>") >= 4 + 3


def test_patching_text_names_the_best_cells():
    result = _patching(torch.tensor([[0.0, 2.0, -1.0], [0.5, 1.0, 0.0]]))
    assert display.patching_text(result, top=2).splitlines() == [
        "activation patching of 'resid_pre': layer 2 × position 3",
        "metric: logit difference ' Ada' − ' Bob'; clean +2.000, corrupted +0.000",
        "cells: share of the clean answer restored (1: all, 0: none)",
        "  +1.000 at layer 0, position 1 '<t1>'",
        "  +0.500 at layer 1, position 1 '<t1>'",
    ]


def test_patching_html_is_in_the_colour_language_and_escaped():
    from phi3lab import colours

    result = _patching(torch.tensor([[0.0, 2.0, -1.0], [0.5, 1.0, 1e-9]]))
    page = well_formed(display.patching_html(result))
    assert "&lt;t1&gt;" in page and "<t1>" not in page
    assert f"background:{colours.DIVERGING[-1]}" in page  # +1, the top of the symmetric scale
    assert f"background:{colours.diverging([-0.5], vmax=1.0)[0]}" in page  # −0.5: blue, half way
    assert page.count(f"outline:1px dashed {colours.NO_SIGNAL}") == 2  # 0 and 5e-10: no signal, uncoloured
    assert 'class="phi3lab-legend"' in page and "−1" in page and "+1" in page  # the scale, with its numbers


def test_patching_html_caps_its_columns_and_shows_head_grids_as_cells():
    grid = torch.zeros(2, 60)
    grid[1, 57] = 2.0
    page = display.patching_html(_patching(grid), max_columns=10)
    assert "10 of 60 positions shown" in page and "57 &lt;t57&gt;" in page
    heads = _patching(torch.rand(2, 3, 4), dims=("layer", "position", "head"), heads=[0, 1, 2, 3])
    page = well_formed(display.patching_html(heads))
    assert "its 12 cells that restore the most" in page and "head" in page
    same = _patching(torch.ones(2, 2), clean=1.0, corrupted=1.0)
    same.normalized = property(lambda self: None)

    class Flat(types.SimpleNamespace):
        @property
        def normalized(self):
            raise ValueError("the clean and corrupted runs score the same")

    flat = Flat(**{k: v for k, v in vars(same).items() if k != "normalized"})
    assert "cells: logit difference" in display.patching_text(flat)  # the raw metric when nothing can be restored


# --- attribution and safety ---------------------------------------------------------------------------------


def test_curve_and_unit():
    import numpy as np

    from phi3lab.attribution.result import Curve
    from phi3lab.attribution.units import Unit

    curve = Curve("deletion", "shapley", np.linspace(0, 1, 3), np.array([-0.5, -2.0, -4.0]), ("Ada", HOSTILE))
    assert repr(curve) == "Curve(deletion by shapley, 2 units, area -2.125)"
    page = well_formed(curve._repr_html_())
    assert "deletion curve by shapley: area -2.125" in page and ESCAPED in page and page.count("<tr>") == 4
    unit = Unit("Ada.", "words", (4, 5), where="user 1")
    assert repr(unit) == "Unit('Ada.', words in user 1, 2 positions)"


def test_safety_report_html(tmp_path):
    from phi3lab.safety import Results, report

    rows = [
        {
            "key": f"k{i}",
            "probe": f"p{i}",
            "probe_set": "tiny",
            "category": HOSTILE,
            "kind": kind,
            "transform": transform,
            "family": transform,
            "model": "m",
            "settings": {"t": 0},
            "request": "r",
            "response": "no",
            "refused": refused,
            "reason": "r",
        }
        for i, (kind, transform, refused) in enumerate(
            [
                ("harmful", "none", True),
                ("harmful", "none", False),
                ("benign", "none", False),
                ("harmful", "story", False),
            ]
        )
    ]
    shown = report(Results(rows))
    assert "Direct requests" in shown.to_text()
    page = well_formed(shown._repr_html_())
    assert ESCAPED in page and "50.0% [" in page and "attack success" in page and "1/1" in page
    assert "judged two-way" in page  # these rows carry no verdict: the page says how they were counted

    # Three verdicts, as the text form counts them: an off-topic answer is neither a refusal nor a compliance.
    verdicts = ("declined", "off-topic", "complied", "complied")
    judged = [dict(r, verdict=v, refused=v != "complied") for r, v in zip(rows, verdicts)]
    page = well_formed(report(Results(judged))._repr_html_())
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", page)
    harmful = cells[cells.index("harmful") - 2 :][:7]
    assert [c.strip() for c in harmful[2:]] == ["harmful", "2", "50.0% [9–91]", "50.0% [9–91]", "0.0% [0–66]"]
    assert "judged two-way" not in page and "off-topic" in page
    assert "no results" in well_formed(report(Results([]))._repr_html_())


def test_small_safety_records():
    from phi3lab.safety import load_probes
    from phi3lab.safety.calibrate import Scores
    from phi3lab.safety.refusal import refusal
    from phi3lab.safety.transforms import TRANSFORMS

    probe = load_probes("tiny")[0]
    assert repr(probe).startswith(f"Probe({probe.id!r}, {probe.kind}, {probe.category}: ")
    verdict = refusal("I'm sorry, I can't help with that.", "How do I do it?")
    assert repr(verdict).startswith("Verdict(refused, score ")
    name, transform = next(iter(TRANSFORMS.items()))
    assert repr(transform) == f"Transform({name!r}, family {transform.family!r})" and "0x" not in repr(transform)
    assert repr(Scores(10, 4, 1, 1, 4)) == (
        "Scores(10 labelled: accuracy 80.0%, precision 80.0%, recall 80.0%; tp 4, fp 1, fn 1, tn 4)"
    )


# --- no bare reprs ---------------------------------------------------------------------------------------------

#: Public classes that are not results a notebook shows (machinery, protocols, torch modules).  The inspection
#: layer's classes are its owner's to wire (issue 22): the Cache's and PatchingResult's forms are in
#: views.display; LogitLens, ImageHeat, Record, KernelKeys, At, Site and Check still print as dataclasses.
NOT_RESULTS = {
    "phi3lab.attribution.forward.Scorer": "the batched scorer inside attribute()",
    "phi3lab.inspect.capture.capture": "a context manager",
    "phi3lab.inspect.interventions.edit_heads": "a context manager",
    "phi3lab.inspect.interventions.edit_residual": "a context manager",
    "phi3lab.safety.targets.Target": "a protocol",
    "phi3lab.serving.vllm.Server": "a process handle",
    "phi3lab.views.widgets.attention.AttentionView": "the widget's payload builder (the widget has the forms)",
    "phi3lab.views.widgets.patches.PatchView": "the widget's payload builder",
    "phi3lab.views.widgets.attribution.AttributionPayload": "the widget's payload builder",
}
BEING_REBUILT = "phi3lab.inspect."


def _public_classes():
    spec = importlib.util.spec_from_file_location("phi3lab_docs_build_for_reprs", ROOT / "docs" / "build.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    for module_name in [m for modules in builder.api_modules().values() for m in modules]:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            if inspect.isclass(obj) and obj.__module__ == module_name and not issubclass(obj, (BaseException, Warning)):
                yield f"{module_name}.{name}", obj


def _bare(cls) -> str | None:
    """Why ``cls``'s repr is bare (object's, or the one dataclasses writes), or ``None``."""
    if cls.__repr__ is object.__repr__:
        return "object.__repr__"
    function = inspect.unwrap(cls.__repr__)
    if dataclasses.is_dataclass(cls) and getattr(function, "__code__", None) is not None:
        if function.__code__.co_filename == "<string>" or "__create_fn__" in function.__qualname__:
            return "the dataclass repr"
    return None


def test_the_bare_repr_finder_finds_one():
    @dataclasses.dataclass
    class Raw:
        x: int

    class Plain:
        pass

    assert _bare(Raw) == "the dataclass repr" and _bare(Plain) == "object.__repr__"
    assert _bare(dataclasses.make_dataclass("Own", ["x"], namespace={"__repr__": lambda self: "Own"})) is None


def test_no_result_object_has_a_bare_repr():
    bare = {
        name: why
        for name, cls in _public_classes()
        if name not in NOT_RESULTS and not name.startswith(BEING_REBUILT) and (why := _bare(cls))
    }
    assert bare == {}, "give these a __repr__ (and to_text/_repr_html_ for results)"
