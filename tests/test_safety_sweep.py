"""Sweeps: batched answers equal to lab.chat, resumable after kill -9, torn lines, refusing to mix, the CLI."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

from phi3lab.cli import main as cli_main
from phi3lab.safety import (
    LabTarget,
    ResultsFileError,
    ResultsFileWarning,
    ResultsMismatchError,
    SafetyGuardError,
    Target,
    load_probes,
    read_results,
    sweep,
)
from phi3lab.safety.results import Appender
from phi3lab.safety.sweep import plan
from phi3lab.safety.transforms import resolve_transforms

STUB = '''
import hashlib, time

class Stub:
    """Answers from the conversation's text alone (refuses what mentions harm), slowly, never a model."""
    name = "stub"
    settings = {"style": "v1"}
    batch_size = 3
    can_answer = False

    def __init__(self, delay=0.0):
        self.delay = delay
        self.calls = 0

    def answer(self, conversations):
        self.calls += 1
        time.sleep(self.delay)
        out = []
        for messages in conversations:
            text = messages[-1]["content"]
            digest = hashlib.sha256(text.encode()).hexdigest()[:6]
            harmful = any(w in text for w in ("bomb", "poison", "hurt", "steal", "weapon", "break", "hack",
                                              "malware", "virus", "gun", "lock", "harm", "safe", "eating"))
            out.append("I'm sorry, but I can't help with that." if harmful else f"Sure! Here is how ({digest}).")
        return out
'''


@pytest.fixture
def stub(tmp_path, monkeypatch):
    (tmp_path / "stubtarget.py").write_text(STUB)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import stubtarget

    importlib.reload(stubtarget)
    return stubtarget.Stub


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_lab_target_answers_like_lab_chat(tiny, tmp_path):
    """Batched, left-padded sweep answers are the answers of lab.chat one at a time (greedy)."""
    probes = list(load_probes("tiny"))[:6] + list(load_probes("over-refusal"))[:4]
    results = sweep(
        tiny,
        probes,
        ["story", "forged-turn"],
        out=tmp_path / "r.jsonl",
        progress=False,
        max_new_tokens=24,
        batch_size=4,
    )
    assert len(results) == len(plan(probes, resolve_transforms(["story", "forged-turn"])))
    for row in results.rows[::2]:
        alone = tiny.chat(row["messages"], stream=False, max_new_tokens=24, special_tokens="allow")
        assert row["response"] == alone.text, row["probe"]
    row = results.rows[0]
    assert row["model"] == "phi3lab-tiny" and row["settings"]["max_new_tokens"] == 24
    assert {"key", "probe", "category", "kind", "transform", "response", "refused", "score", "reason"} <= set(row)
    assert isinstance(LabTarget(tiny), Target) and not LabTarget(tiny).can_answer


def test_resume_skips_done_rows_and_adds_new_ones(stub, tmp_path):
    out = tmp_path / "r.jsonl"
    first = sweep(stub(), "tiny", ["story"], out=out, progress=False)
    assert len(first) == 80 and len(first.keys) == 80
    target = stub()
    again = sweep(target, "tiny", ["story"], out=out, progress=False)
    assert target.calls == 0 and len(again) == 80
    more = sweep(stub(), "tiny", ["story", "past-tense"], out=out, progress=False)
    assert len(more) == 100 and len(_lines(out)) == 100  # only the past-tense rows were added


def test_plan_sends_each_distinct_conversation_once():
    items = plan(load_probes("tiny"), resolve_transforms(["story", "prefix-injection"]))
    story = [m for _, t, m in items if t.name == "story"]
    assert len(story) == len({repr(m) for m in story}) == 20  # one per distinct harmful task
    assert sum(t.name == "prefix-injection" for _, t, _ in items) == 30  # uses the prompt: every phrasing
    assert len(plan(load_probes("tiny"), resolve_transforms(["story"]), benign_transforms=True)) == 60 + 40


@pytest.mark.slow
def test_killed_sweep_resumes_with_every_row_exactly_once(stub, tmp_path):
    """A real subprocess is killed with SIGKILL mid-sweep, three times; resuming completes the file."""
    out = tmp_path / "r.jsonl"
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from stubtarget import Stub
        from phi3lab.safety import sweep
        sweep(Stub(delay=0.02), ["tiny", "over-refusal"], ["story", "role-play"], out={str(out)!r}, progress=False)
    """)
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    seen = []
    for _ in range(3):
        before = len(out.read_text().splitlines()) if out.exists() else 0
        proc = subprocess.Popen([sys.executable, str(script)], env=env)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and len(out.read_text().splitlines()) >= before + 12:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(len(out.read_text().splitlines()))
    assert seen[0] < seen[1] < seen[2] < 150, seen  # killed part-way each time
    subprocess.run([sys.executable, str(script)], env=env, check=True, timeout=120)
    rows = _lines(out)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 110 + 20 + 20
    assert len(read_results(out)) == 150 and not read_results(out).problems


def test_torn_last_line_is_tolerated_and_repaired(stub, tmp_path):
    out = tmp_path / "r.jsonl"
    sweep(stub(), "tiny", [], out=out, progress=False)
    full = out.read_text()
    lines = full.splitlines(keepends=True)
    out.write_text("".join(lines[:-5]) + lines[-5][: len(lines[-5]) // 2])  # killed in the middle of a write
    with pytest.warns(ResultsFileWarning, match=r"line 56: torn last line"):
        partial = read_results(out)
    assert len(partial) == 55
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = sweep(stub(), "tiny", [], out=out, progress=False)
    assert len(resumed) == 60 and not resumed.problems
    assert _answers(_lines(out)) == _answers(json.loads(line) for line in full.splitlines())


def _answers(rows):
    return sorted((r["key"], r["response"], r["refused"]) for r in rows)


def test_malformed_and_duplicated_lines_are_reported_and_skipped(stub, tmp_path):
    out = tmp_path / "r.jsonl"
    sweep(stub(), "tiny", [], out=out, progress=False)
    lines = out.read_text().splitlines()
    lines.insert(3, '{"key": "half a row"')
    lines.insert(10, lines[0])
    out.write_text("\n".join(lines) + "\n")
    with pytest.warns(ResultsFileWarning, match=r"kept 60 rows; line 4: malformed .*line 11: duplicate of line 1"):
        results = read_results(out)
    assert len(results) == 60 and [n for n, _ in results.problems] == [4, 11]
    with pytest.raises(ResultsFileError, match="line 4: malformed"):
        read_results(out, strict=True)
    with pytest.raises(ResultsFileError, match="no results file"):
        read_results(tmp_path / "missing.jsonl")


NOT_RESULTS = {
    "notes": (b"my notes\nline two, no final newline", "is not a phi3lab results file (line 1: malformed"),
    "one-line-notes": (b"just one line", "is not a phi3lab results file (line 1: malformed"),
    "utf-16": ("notes in UTF-16\n".encode("utf-16"), "line 1: not UTF-8 text"),
    "json-arrays": (b'[1, 2, 3]\n["a", "b"]\n', "line 1: malformed (a JSON list, not an object)"),
    "json-objects": (b'{"name": "x"}\n{"name": "y"}', "line 1: malformed (missing key"),
    "csv": (b"key,probe,refused\nk1,p1,true\n", "is not a phi3lab results file"),
    "binary": (bytes(range(256)) * 4, "is not a phi3lab results file"),
}


@pytest.mark.parametrize("name", list(NOT_RESULTS))
def test_a_file_that_is_not_results_is_refused_and_left_as_it_is(stub, tmp_path, name):
    content, says = NOT_RESULTS[name]
    out = tmp_path / "notes.txt"
    out.write_bytes(content)
    with pytest.raises(ResultsFileError) as info:
        sweep(stub(), "tiny", [], out=out, progress=False)
    assert says in str(info.value) and "left as it is" in str(info.value) and "another out= path" in str(info.value)
    assert out.read_bytes() == content  # not truncated, nothing appended
    with pytest.raises(ResultsFileError, match="not a phi3lab results file"):
        read_results(out)


def test_a_results_file_with_a_foreign_line_is_not_appended_to(stub, tmp_path):
    out = tmp_path / "r.jsonl"
    sweep(stub(), "tiny", [], out=out, progress=False)
    lines = out.read_text().splitlines(keepends=True)
    damaged = "".join(lines[:30]) + "a note I typed here\n" + "".join(lines[30:40])
    out.write_text(damaged)
    with pytest.raises(
        ResultsFileError, match=r"has lines that are not results rows \(line 31: malformed.*remove those"
    ):
        sweep(stub(), "tiny", [], out=out, progress=False)
    assert out.read_text() == damaged
    with pytest.warns(ResultsFileWarning, match="line 31"):
        assert len(read_results(out)) == 40  # the good rows still read


def test_a_folder_or_an_unwritable_path_is_named(stub, tmp_path):
    with pytest.raises(ResultsFileError, match="is a folder; pass a file path such as"):
        sweep(stub(), "tiny", [], out=tmp_path, progress=False)
    with pytest.raises(ResultsFileError, match="is a folder"):
        read_results(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ResultsFileError, match="cannot write the results file"):
        sweep(stub(), "tiny", [], out=blocker / "r.jsonl", progress=False)


def test_a_torn_first_row_is_still_cut_and_resumed(stub, tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_bytes(b'{"key": "abc", "probe": "tiny/wea')  # killed while writing the very first row
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsFileWarning)
        results = sweep(stub(), "tiny", [], out=out, progress=False)
    assert len(results) == 60 and len(_lines(out)) == 60


def test_a_file_of_another_model_or_settings_is_refused(stub, tiny, tmp_path):
    out = tmp_path / "r.jsonl"
    sweep(stub(), "tiny", [], out=out, progress=False)
    other = stub()
    other.settings = {"style": "v2"}
    with pytest.raises(ResultsMismatchError, match=r"holds answers of model 'stub' .*delete .* to start fresh"):
        sweep(other, "tiny", [], out=out, progress=False)
    with pytest.raises(ResultsMismatchError, match="model 'phi3lab-tiny'"):
        sweep(tiny, "tiny", [], out=out, progress=False, max_new_tokens=8)
    assert len(_lines(out)) == 60  # nothing was added


def test_one_writer_at_a_time(tmp_path):
    out = tmp_path / "r.jsonl"
    with Appender(out):
        with pytest.raises(ResultsFileError, match="another sweep is writing"):
            Appender(out).__enter__()


def test_sampling_is_seeded(tiny, tmp_path):
    probes = list(load_probes("tiny"))[:4]
    runs = [
        sweep(tiny, probes, [], out=tmp_path / f"{k}.jsonl", progress=False, temperature=1.0, seed=3, max_new_tokens=12)
        for k in range(2)
    ]
    assert [r["response"] for r in runs[0].rows] == [r["response"] for r in runs[1].rows]
    assert runs[0].settings["seed"] == 3 and runs[0].settings["temperature"] == 1.0


def test_real_behaviours_are_not_sent_under_ci_to_a_model_that_could_answer(stub, tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "1")
    capable = stub()
    capable.can_answer = True
    with pytest.raises(SafetyGuardError, match="not run under CI"):
        sweep(capable, "harmbench", [], out=tmp_path / "r.jsonl", progress=False)
    assert not (tmp_path / "r.jsonl").exists()
    results = sweep(stub(), "harmbench", [], out=tmp_path / "r.jsonl", progress=False)  # a stub cannot answer
    assert len(results) == 200 and {r["probe_set"] for r in results.rows} == {"harmbench"}


def test_bad_targets_and_settings(tiny, stub):
    with pytest.raises(TypeError, match="needs name, settings and answer"):
        sweep(object(), "tiny", out="unused.jsonl")
    with pytest.raises(TypeError, match="are a LabTarget's"):
        sweep(stub(), "tiny", out="unused.jsonl", max_new_tokens=8)
    with pytest.raises(ValueError, match="special_tokens must be one of"):
        LabTarget(tiny, special_tokens="maybe")
    with pytest.raises(TypeError, match="max_new_tokens must be an integer"):
        LabTarget(tiny, max_new_tokens=2.5)


@pytest.mark.slow
def test_cli_probe_runs_resumes_and_reports(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    args = [
        "probe",
        "--out",
        str(out),
        "--probes",
        "tiny",
        "--transforms",
        "story",
        "--no-progress",
        "--max-new-tokens",
        "24",
    ]
    assert cli_main(args) == 0
    first = capsys.readouterr().out
    assert "Attack success" in first and "story" in first and "redacted" in first
    assert cli_main(args) == 0 and len(_lines(out)) == 80  # resumed: nothing added
    assert (
        cli_main(["probe", "--report", str(out)]) == 0 and "declined / off-topic / complied" in capsys.readouterr().out
    )
    assert cli_main(["probe", "--list"]) == 0 and "forged-turn" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    """A results file of the embedded model, as `phi3lab probe --max-new-tokens 4 --transforms none` writes it."""
    import phi3lab

    out = tmp_path_factory.mktemp("cli") / "r.jsonl"
    sweep(phi3lab.load("tiny", verbose=False), "tiny", [], out=out, progress=False, max_new_tokens=4)
    return out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--transforms", "jailbreak"], "unknown transform 'jailbreak'"),
        (["--probes", "nope"], "unknown probe set 'nope'"),
        (["--max-new-tokens", "8"], "holds answers of model 'phi3lab-tiny'"),
        ([], None),
    ],
)
def test_cli_probe_errors(tiny_results, capsys, args, message):
    rc = cli_main(
        [
            "probe",
            "--out",
            str(tiny_results),
            "--probes",
            "tiny",
            "--transforms",
            "none",
            "--no-progress",
            "--max-new-tokens",
            "4",
            *args,
        ]
    )
    captured = capsys.readouterr()
    if message is None:  # the same settings: the file is resumed, not refused
        assert rc == 0 and "60 answers" in captured.err
        return
    assert rc == 2 and captured.err.startswith("phi3lab: error: ") and message in captured.err


def test_cli_probe_needs_an_out_file(capsys):
    assert cli_main(["probe"]) == 2 and "needs --out" in capsys.readouterr().err
