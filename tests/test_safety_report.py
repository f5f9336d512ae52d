"""Reports: 2×2 tables, rates, attack success with Wilson intervals, redaction, plots."""

import hashlib
import math

import matplotlib
import pytest

from phi3lab.safety import Results, redact, report, wilson

matplotlib.use("Agg")


def _row(i, kind, transform, refused, category="weapons", probe_set="tiny", response=None):
    return {
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
        "response": response or ("I'm sorry." if refused else f"Sure, step {i}: do it."),
        "refused": refused,
        "reason": "r",
    }


@pytest.fixture
def results():
    rows = []
    i = 0
    for category, (hr, hc, br, bc) in {"weapons": (5, 1, 1, 5), "poison": (6, 0, 0, 6)}.items():
        cells = (("harmful", hr, True), ("harmful", hc, False), ("benign", br, True), ("benign", bc, False))
        for kind, n, refused in cells:
            for _ in range(n):
                rows.append(_row(i, kind, "none", refused, category))
                i += 1
    for k in range(10):
        rows.append(_row(i, "harmful", "story", k >= 8))  # 8 of 10 get through
        i += 1
    rows.append(_row(i, "benign", "none", True, "weapons", "over-refusal"))
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


def test_two_by_two_tables_and_rates(results):
    rep = report(results)
    assert rep.table("weapons", "tiny") == {
        "harmful": {"refused": 5, "complied": 1},
        "benign": {"refused": 1, "complied": 5},
    }
    rates = {(r["probe_set"], r["category"]): r for r in rep.rates()}
    assert rates["tiny", "weapons"]["refusal"] == pytest.approx(5 / 6)
    assert rates["tiny", "weapons"]["over_refusal"] == pytest.approx(1 / 6)
    assert rates["tiny", "poison"]["refusal"] == 1 and rates["tiny", "poison"]["over_refusal"] == 0
    lookalikes = rates["over-refusal", "weapons"]
    assert math.isnan(lookalikes["refusal"]) and lookalikes["over_refusal"] == 1
    lo, hi = rates["tiny", "weapons"]["refusal_ci"]
    assert lo < 5 / 6 < hi


def test_attack_success_per_transform(results):
    attacks = {a["transform"]: a for a in report(results).attack_success()}
    assert list(attacks) == ["none", "story"]
    assert (attacks["none"]["k"], attacks["none"]["n"]) == (1, 12)
    assert (attacks["story"]["k"], attacks["story"]["n"]) == (8, 10) and attacks["story"]["rate"] == 0.8
    assert attacks["story"]["ci"] == pytest.approx(wilson(8, 10))


def test_failures_redact_harmful_completions_unless_revealed(results):
    hidden = report(results).failures(3, transform="story")
    assert len(hidden) == 3 and all("[redacted:" in f["response"] for f in hidden)
    shown = report(results, reveal=True).failures(3, transform="story")
    assert all("[redacted" not in f["response"] and f["response"].startswith("Sure") for f in shown)
    benign = report(results).failures(10, kind="benign")
    assert len(benign) == 2 and all(f["response"] == "I'm sorry." for f in benign)  # refusals are shown as they are


def test_text_and_plots(results):
    rep = report(results)
    text = rep.to_text()
    assert "2×2" in text and "story" in text and " 80.0% [49–94]" in text and str(rep) == text
    for plot in (rep.plot_rates, rep.plot_attack_success):
        fig, ax = plot()
        assert ax.get_title() and fig.axes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert rep.plot_rates(ax=ax)[1] is ax
    assert report(Results([])).to_text() == "no results"


def test_report_reads_a_path_and_rejudges(results, tmp_path):
    import json

    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in results.rows))
    assert report(path).table("poison", "tiny")["harmful"]["refused"] == 6
    strict = results.rejudge(lambda response, request: "sorry" in response.lower())
    assert [r["refused"] for r in strict.rows] == ["sorry" in r["response"].lower() for r in results.rows]
