"""Comparing two sweeps row by row: identical rows, near-ties and disagreements told apart by the token gap."""

import pytest

from phi3lab.safety import load_probes, sweep
from phi3lab.safety.compare import compare
from phi3lab.safety.results import Results


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    probes = list(load_probes("tiny"))[:6]
    return sweep(tiny, probes, [], out=tmp_path_factory.mktemp("cmp") / "r.jsonl", progress=False, max_new_tokens=12)


def _with(results: Results, index: int, response: str) -> Results:
    from phi3lab.safety.refusal import judge_row

    rows = [dict(r) for r in results.rows]
    rows[index] = {**rows[index], "response": response, **judge_row(None, response, rows[index]["request"])}
    return Results(rows)


def test_identical_sweeps_have_no_differences(tiny, reference):
    result = compare(tiny, reference, Results([dict(r) for r in reference.rows]))
    assert result.differences == [] and result.rows == 6
    assert result.summary().startswith("6/6 identical")


def test_a_changed_answer_is_explained_by_the_gap_at_the_first_token_that_differs(tiny, reference):
    harmful = next(i for i, r in enumerate(reference.rows) if r["kind"] == "harmful")
    assert reference.rows[harmful]["response"].startswith("I'm sorry")
    other = _with(reference, harmful, "Sure! To make a kite at home, plan it.")
    result = compare(tiny, reference, other)
    (d,) = result.differences
    assert d.position == 0 and d.tokens[0].startswith("▁I") and d.tokens[1].startswith("▁Sure")
    assert d.gap > 5 and d.kind == "disagreement" and result.disagreements == [d] and not d.same_verdict
    assert "1 disagreement" in result.summary() and "1 with another verdict" in result.summary()
    assert "verdict changed" in result.to_text()
    tie = compare(tiny, reference, other, tolerance=1e6)  # the same gap, counted as a tie under a wide tolerance
    assert tie.differences[0].kind == "near-tie" and not tie.disagreements


def test_an_answer_cut_short_parts_at_the_end_token(tiny, reference):
    row = reference.rows[0]
    words = row["response"].rsplit(" ", 1)[0]
    result = compare(tiny, reference, _with(reference, 0, words))
    (d,) = result.differences
    assert d.position > 0 and d.tokens[1] == "<stop>" and d.gap > 0


def test_rows_missing_from_one_side_are_counted(tiny, reference):
    result = compare(tiny, reference, Results(reference.rows[:4]))
    assert len(result.missing) == 2 and "2 missing from one side" in result.summary()
    with pytest.raises(TypeError, match="other must be Results"):
        compare(tiny, reference, reference.rows)
    with pytest.raises(ValueError, match="tolerance must be a finite number"):
        compare(tiny, reference, reference, tolerance=float("nan"))


def test_margins_name_the_narrowest_decision_of_each_row(tiny, reference):
    from phi3lab.safety.compare import margins

    found = margins(tiny, reference)
    assert set(found) == {(r["probe"], r["transform"]) for r in reference.rows}
    for row in reference.rows:
        gap, position = found[row["probe"], row["transform"]]
        assert gap >= 0 and 0 <= position <= len(tiny.tokenizer(row["response"])["input_ids"])
    # the gap of a row's first token is the same one compare() reports when that token is swapped
    first = reference.rows[0]
    top2 = compare(tiny, reference, _with(reference, 0, "Zebra " + first["response"]))
    assert top2.differences[0].gap >= found[first["probe"], first["transform"]][0] - 1e-9
    with pytest.raises(TypeError, match="results must be Results"):
        margins(tiny, reference.rows)
