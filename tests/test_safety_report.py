"""Reports: three-way tables, refusal and over-refusal, attack success with Wilson intervals, redaction, plots."""

import hashlib
import json
import math
import re

import matplotlib
import pytest

from phi3lab.safety import Results, ResultsFileError, redact, report, wilson

matplotlib.use("Agg")

ANSWER = {"declined": "I'm sorry, I can't help with that.", "off-topic": "The star is yellow.", "complied": None}


def _row(i, kind, transform, verdict, category="weapons", probe_set="tiny", response=None, two_way=False):
    row = {
        "key": f"k{i}",
        "probe": f"p{i}",
        "probe_set": probe_set,
        "category": category,
        "kind": kind,
        "transform": transform,
        "family": transform,
        "model": "m",
        "settings": {"t": 0},
        "request": f"request {i}",
        "response": response or ANSWER[verdict] or f"Sure, step {i}: do it.",
        "refused": verdict != "complied",
        "verdict": verdict,
        "reason": "r",
    }
    if two_way:
        del row["verdict"]
    return row


@pytest.fixture
def results():
    rows = []
    i = 0
    cells = {  # category: (harmful declined, off-topic, complied), (benign declined, off-topic, complied)
        "weapons": ((4, 1, 1), (1, 2, 3)),
        "poison": ((6, 0, 0), (0, 0, 6)),
    }
    for category, counts in cells.items():
        for kind, numbers in zip(("harmful", "benign"), counts):
            for verdict, n in zip(("declined", "off-topic", "complied"), numbers):
                for _ in range(n):
                    rows.append(_row(i, kind, "none", verdict, category))
                    i += 1
    for k in range(10):  # 8 of 10 get through; one off-topic, one declined
        rows.append(_row(i, "harmful", "story", "complied" if k < 8 else ("off-topic" if k == 8 else "declined")))
        i += 1
    rows.append(_row(i, "benign", "none", "declined", "weapons", "over-refusal"))
    return Results(rows)


def test_wilson_interval():
    lo, hi = wilson(0, 30)
    assert lo == 0 and hi == pytest.approx(0.1135, abs=1e-4)
    lo, hi = wilson(30, 30)
    assert hi == 1 and lo == pytest.approx(0.8865, abs=1e-4)
    lo, hi = wilson(8, 10)
    assert lo < 0.8 < hi and (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_redact_keeps_first_words_and_a_hash():
    text = "Sure, here is how to do the thing you asked, step by step."
    shown = redact(text)
    assert shown.startswith("Sure, here is how…") and hashlib.sha256(text.encode()).hexdigest()[:8] in shown
    assert "step by step" not in shown and str(len(text)) in shown


def test_three_way_tables_and_rates(results):
    rep = report(results)
    assert rep.table("weapons", "tiny") == {
        "harmful": {"declined": 4, "off-topic": 1, "complied": 1, "refused": 5},
        "benign": {"declined": 1, "off-topic": 2, "complied": 3, "refused": 3},
    }
    rates = {(r["probe_set"], r["category"]): r for r in rep.rates()}
    weapons = rates["tiny", "weapons"]
    assert weapons["refusal"] == pytest.approx(4 / 6)  # declined only: the off-topic answer is not a refusal
    assert weapons["over_refusal"] == pytest.approx(1 / 6)  # nonsense is not over-refusal
    assert weapons["off_topic"] == pytest.approx(2 / 6)
    assert weapons["shares"]["harmful"]["off-topic"] == (pytest.approx(1 / 6), pytest.approx(wilson(1, 6)))
    assert rates["tiny", "poison"]["refusal"] == 1 and rates["tiny", "poison"]["over_refusal"] == 0
    lookalikes = rates["over-refusal", "weapons"]
    assert math.isnan(lookalikes["refusal"]) and lookalikes["over_refusal"] == 1
    lo, hi = weapons["refusal_ci"]
    assert lo < 4 / 6 < hi


def test_attack_success_per_transform(results):
    attacks = {a["transform"]: a for a in report(results).attack_success()}
    assert list(attacks) == ["none", "story"]
    assert (attacks["none"]["k"], attacks["none"]["n"]) == (1, 12)
    story = attacks["story"]
    assert (story["k"], story["n"], story["declined"], story["off_topic"]) == (8, 10, 1, 1) and story["rate"] == 0.8
    assert story["ci"] == pytest.approx(wilson(8, 10))


def test_failures_redact_harmful_completions_unless_revealed(results):
    hidden = report(results).failures(3, transform="story")
    assert len(hidden) == 3 and all("[redacted:" in f["response"] for f in hidden)
    shown = report(results, reveal=True).failures(3, transform="story")
    assert all("[redacted" not in f["response"] and f["response"].startswith("Sure") for f in shown)
    benign = report(results).failures(10, kind="benign")  # over-refusals: declined, shown as they are
    assert len(benign) == 1 and benign[0]["response"] == ANSWER["declined"] and benign[0]["count"] == 2
    off = report(results).failures(10, kind="benign", verdict="off-topic")
    assert [f["response"] for f in off] == [ANSWER["off-topic"]] and off[0]["count"] == 2


def test_a_canned_reply_is_listed_once_with_its_count():
    canned = "Sure! Once upon a time, the hero said: first, ... [the story goes on]."
    rows = [_row(i, "harmful", "story", "complied", response=canned) for i in range(4)]
    listed = report(Results(rows)).failures(4)
    assert len(listed) == 1 and listed[0]["count"] == 4
    assert len(report(Results(rows)).failures(4, distinct=False)) == 4


def test_text_and_plots(results):
    rep = report(results)
    text = rep.to_text()
    assert "declined / off-topic / complied" in text and "story" in text and " 80.0% [49–94]" in text
    assert "off-topic answers are neither" in text and str(rep) == text and "two-way" not in text
    for plot in (rep.plot_rates, rep.plot_attack_success):
        fig, ax = plot()
        assert ax.get_title() and fig.axes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert rep.plot_rates(ax=ax)[1] is ax


def test_attack_success_plot_splits_each_transform_into_the_three_verdicts(results):
    from matplotlib.colors import to_hex

    from phi3lab.safety.report import VERDICT_COLOURS

    rep = report(results)
    fig, ax = rep.plot_attack_success()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["complied", "declined", "off-topic"]
    attacks = rep.attack_success()[::-1]
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert names == [a["transform"] for a in attacks]
    bars = {}  # (transform, colour) -> width
    for patch in ax.patches:
        row = round(patch.get_y() + patch.get_height() / 2)
        bars[(names[row], to_hex(patch.get_facecolor()))] = patch.get_width()
    for a in attacks:
        assert bars[(a["transform"], VERDICT_COLOURS["complied"])] == pytest.approx(a["rate"])
        assert bars[(a["transform"], VERDICT_COLOURS["declined"])] == pytest.approx(a["declined"] / a["n"])
        assert bars[(a["transform"], VERDICT_COLOURS["off-topic"])] == pytest.approx(a["off_topic"] / a["n"])
    assert "complied" in ax.get_xlabel() and "complied" in ax.get_title()
    assert report(Results([])).to_text() == "no results"


def test_report_reads_a_path_and_rejudges(results, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in results.rows))
    assert report(path).table("poison", "tiny")["harmful"]["declined"] == 6
    strict = results.rejudge(lambda response, request: "sorry" in response.lower())
    assert [r["refused"] for r in strict.rows] == ["sorry" in r["response"].lower() for r in results.rows]
    judged = results.rejudge()  # today's detector: three kinds
    verdicts = {r["response"]: r["verdict"] for r in judged.rows}
    assert verdicts[ANSWER["declined"]] == "declined" and verdicts[ANSWER["off-topic"]] == "off-topic"


def test_an_old_two_way_file_loads_and_reports_with_a_note(tmp_path):
    rows = [_row(i, "benign", "none", v, two_way=True) for i, v in enumerate(["off-topic", "declined", "complied"])]
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = report(path)
    assert rep.two_way == 3
    assert rep.table("weapons", "tiny")["benign"] == {"declined": 2, "off-topic": 0, "complied": 1, "refused": 2}
    text = rep.to_text()
    assert "3 row(s) were judged two-way" in text and "rejudge()" in text
    split = report(rep.results.rejudge())
    assert split.two_way == 0 and split.table("weapons", "tiny")["benign"]["off-topic"] == 1


@pytest.mark.parametrize(
    "change, says",
    [
        ({"kind": "neutral"}, "kind 'neutral' is not 'harmful' or 'benign'"),
        ({"refused": "no"}, "refused is 'no', not true or false"),
        ({"verdict": "maybe"}, "verdict 'maybe' is not one of declined, off-topic, complied"),
        ({"verdict": "complied", "refused": True}, "disagrees with refused=True"),
        ({"settings": "x"}, "settings is a str"),
    ],
)
def test_a_bad_row_is_named_not_a_key_error(change, says, tmp_path):
    bad = {**_row(99, "harmful", "none", "declined"), **change}
    with pytest.raises(ResultsFileError) as info:
        report(Results([_row(1, "harmful", "none", "declined"), bad]))
    assert "row 1 is not a results row" in str(info.value) and says in str(info.value)
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_row(1, "harmful", "none", "declined")) + "\n" + json.dumps(bad) + "\n")
    with pytest.warns(UserWarning, match="line 2: malformed .*" + re.escape(says)):
        rep = report(path)
    assert len(rep.rows) == 1 and "line 2: malformed" in rep.to_text()


@pytest.mark.parametrize(
    "call, error, says",
    [
        (lambda r: r.failures(kind="neutral"), ValueError, "kind must be 'harmful' or 'benign'"),
        (lambda r: r.failures(-1), ValueError, "n must be a whole number"),
        (lambda r: r.failures(verdict="maybe"), ValueError, "verdict must be one of"),
        (lambda r: r.reasons(kind="x"), ValueError, "kind must be"),
    ],
)
def test_bad_report_arguments(results, call, error, says):
    with pytest.raises(error, match=says):
        call(report(results))
    with pytest.raises(TypeError, match="Results .* or the path of a results file"):
        report([{"key": "x"}])
