"""Results files: one JSON row per answer, appended durably, read back tolerantly.

Each row holds the probe, the transform, the conversation sent, the answer, the detector's verdict
(``verdict``: ``"declined"``, ``"off-topic"`` or ``"complied"``, and ``refused``: not complied), and the
``model`` and ``settings`` it was produced with, plus a content ``key`` — a hash of (probe, transform,
conversation, model, settings).  Rows are appended one at a time with ``flush`` and ``fsync``, so a
sweep killed at any moment (even ``kill -9``) leaves every finished row on disk and at worst one
torn last line, which reading ignores and resuming cuts off.  Resuming skips every key already
present, so nothing is lost and nothing is duplicated.

**A results path holds results or is refused, never rewritten.**  Before a sweep appends to an
existing file it checks that every line is a results row: a file of notes, of other JSON, in
UTF-16, or with a damaged line is refused (:class:`ResultsFileError`, naming the line) and left
exactly as it was.  The only thing ever cut is a torn last row — a line that starts as a row does
(``{"key": "…``) and was never finished.

A file holds one experiment: rows from another model or other settings are refused
(:class:`ResultsMismatchError`) rather than mixed.  Reading keeps the good rows of a damaged file and
reports each skipped line by number (:class:`ResultsFileWarning`); a file with no row at all is not
a results file and is refused.  Files written before the three-way verdicts (rows without
``verdict``) still load: their ``refused`` counts declined and off-topic answers together, and
:meth:`Results.rejudge` splits them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from phi3lab.errors import Phi3LabError, Phi3LabWarning

__all__ = [
    "Results",
    "ResultsFileError",
    "ResultsFileWarning",
    "ResultsMismatchError",
    "read_results",
    "content_key",
    "REQUIRED",
]

REQUIRED = ("key", "probe", "probe_set", "category", "kind", "transform", "model", "settings", "response", "refused")
KINDS = ("harmful", "benign")
VERDICTS = ("declined", "off-topic", "complied")
ROW_START = b'{"key": "'  # how every row a sweep writes begins (json.dumps with "key" first)


class ResultsFileError(Phi3LabError, ValueError):
    """A results file that cannot be used: unreadable, locked by another sweep, or (strict) malformed."""


class ResultsMismatchError(ResultsFileError):
    """A results file that holds rows of another model or other settings than this sweep's."""


class ResultsFileWarning(Phi3LabWarning):
    """Lines of a results file that were skipped (malformed, torn or duplicated); the good rows are kept."""


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_key(probe_id: str, transform: str, messages: Sequence[dict], model: str, settings: dict) -> str:
    """The row's identity: a hash of what was asked, how, of which model, with which settings."""
    payload = _canonical(
        {"probe": probe_id, "transform": transform, "messages": list(messages), "model": model, "settings": settings}
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclasses.dataclass
class Results:
    """The rows of one results file, and what was wrong with the lines that were skipped.

    Attributes:
        rows: one dict per answer, in file order (see :data:`REQUIRED` for the fields every row has).
        path: the file they were read from (``None`` when built in memory).
        problems: ``(line number, message)`` for every skipped line.
    """

    rows: list[dict]
    path: Path | None = None
    problems: list[tuple[int, str]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows)

    @property
    def keys(self) -> set[str]:
        return {r["key"] for r in self.rows}

    @property
    def model(self) -> str | None:
        return self.rows[0]["model"] if self.rows else None

    @property
    def settings(self) -> dict | None:
        return self.rows[0]["settings"] if self.rows else None

    @property
    def two_way(self) -> int:
        """How many rows were judged before the three-way verdicts (no ``verdict``: refused or complied only)."""
        return sum("verdict" not in r for r in self.rows)

    def select(self, **where) -> Results:
        """The rows whose fields equal the given values, e.g. ``select(kind="harmful", transform="story")``."""
        return Results([r for r in self.rows if all(r.get(k) == v for k, v in where.items())], self.path, self.problems)

    def rejudge(self, detector=None) -> Results:
        """The same rows judged again by ``detector(response, request)`` (default: today's
        :func:`~phi3lab.safety.refusal.refusal`) — a new detector, other rules, or three-way verdicts for a
        file judged two-way.  The file is not changed."""
        from phi3lab.safety.refusal import judge_row

        rows = [{**r, **judge_row(detector, r["response"], r.get("request"))} for r in self.rows]
        return Results(rows, self.path, self.problems)

    def __repr__(self) -> str:
        where = f" from {self.path.name}" if self.path else ""
        extra = f", {len(self.problems)} skipped line(s)" if self.problems else ""
        return f"Results({len(self.rows)} rows{where}, model {self.model!r}{extra})"


def row_problem(row) -> str | None:
    """What makes ``row`` not a results row (``None`` when it is one)."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        return f"missing {', '.join(missing)}"
    for field in ("key", "probe", "probe_set", "category", "transform", "model", "response"):
        if not isinstance(row[field], str):
            return f"{field} is a {type(row[field]).__name__}, not a string"
    if row["kind"] not in KINDS:
        return f"kind {row['kind']!r:.40} is not 'harmful' or 'benign'"
    if not isinstance(row["settings"], dict):
        return f"settings is a {type(row['settings']).__name__}, not an object"
    if not isinstance(row["refused"], bool):
        return f"refused is {row['refused']!r:.40}, not true or false"
    if "verdict" in row:
        if row["verdict"] not in VERDICTS:
            return f"verdict {row['verdict']!r:.40} is not one of {', '.join(VERDICTS)}"
        if row["refused"] != (row["verdict"] != "complied"):
            return f"verdict {row['verdict']!r} disagrees with refused={row['refused']}"
    return None


def _parse(path: Path) -> tuple[list[dict], list[tuple[int, str]], int | None]:
    """Rows, problems, and the byte offset where a torn last row starts (``None`` if none).

    A last line without a newline that fails to parse is a torn row only if it begins as every row
    does (:data:`ROW_START`); anything else is a malformed line, which :class:`Appender` refuses.
    """
    data = path.read_bytes()
    rows: list[dict] = []
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    torn_at = None
    offset = 0
    lines = data.split(b"\n")
    for n, raw in enumerate(lines, start=1):
        last = n == len(lines)
        start = offset
        offset += len(raw) + 1
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
            problem = row_problem(row)
            if problem:
                raise ValueError(problem)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if isinstance(exc, UnicodeDecodeError) and not (last and raw.startswith(ROW_START)):
                problems.append((n, "not UTF-8 text; skipped"))
                continue
            if last and raw.startswith(ROW_START) and isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
                torn_at = start  # no newline after it: a write interrupted mid-row
                problems.append((n, "torn last line (an interrupted write); ignored"))
            else:
                problems.append((n, f"malformed ({str(exc)[:80]}); skipped"))
            continue
        if row["key"] in seen:
            problems.append((n, f"duplicate of line {seen[row['key']]}; skipped"))
            continue
        seen[row["key"]] = n
        rows.append(row)
    return rows, problems, torn_at


def _not_results(path: Path, problems: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The problems that make ``path`` something other than a (possibly torn) results file."""
    return [(n, m) for n, m in problems if not m.startswith(("torn", "duplicate"))]


def read_results(path, *, strict: bool = False) -> Results:
    """Read a results file, keeping every good row.

    Args:
        path: the JSONL file a sweep wrote.
        strict: raise :class:`ResultsFileError` on any malformed line instead of warning.

    Warns:
        ResultsFileWarning: naming the line numbers that were skipped and why.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"read_results takes a file path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ResultsFileError(f"{path} is a folder; pass the results file in it (e.g. {path / 'results.jsonl'})")
    if not path.is_file():
        raise ResultsFileError(f"no results file at {path}; run a sweep first (phi3lab probe --out {path})")
    try:
        rows, problems, _ = _parse(path)
    except OSError as exc:
        raise ResultsFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    bad = _not_results(path, problems)
    if bad and not rows:
        n, message = bad[0]
        raise ResultsFileError(
            f"{path} is not a phi3lab results file: no line is a results row (line {n}: {message}). "
            "Pass the JSONL file a sweep wrote (phi3lab probe --out FILE)"
        )
    if problems:
        text = "; ".join(f"line {n}: {m}" for n, m in problems[:5]) + (" …" if len(problems) > 5 else "")
        if strict and bad:
            raise ResultsFileError(f"{path}: {text}")
        warnings.warn(f"{path.name}: kept {len(rows)} rows; {text}", ResultsFileWarning, stacklevel=2)
    return Results(rows, path, problems)


def check_same_experiment(results: Results, model: str, settings: dict) -> None:
    """Refuse to add rows of ``model``/``settings`` to a file that holds another experiment's."""
    for row in results.rows:
        if row["model"] != model or _canonical(row["settings"]) != _canonical(settings):
            raise ResultsMismatchError(
                f"{results.path} holds answers of model {row['model']!r} with settings {_canonical(row['settings'])}; "
                f"this sweep is model {model!r} with settings {_canonical(settings)}. One file is one experiment: "
                f"pass another out= path (--out), or delete {results.path} to start fresh."
            )


class Appender:
    """Appends rows to a results file durably, holding an exclusive lock on it while open."""

    def __init__(self, path: Path):
        self.path = path
        self.file = None

    def __enter__(self) -> Appender:
        path = self.path
        if path.is_dir():
            raise ResultsFileError(f"out={str(path)!r} is a folder; pass a file path such as {path / 'results.jsonl'}")
        if path.exists() and not path.is_file():
            raise ResultsFileError(f"out={str(path)!r} is not a regular file; pass a path for a .jsonl results file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "ab")  # noqa: SIM115  closed in __exit__; "ab" changes nothing yet
        except OSError as exc:
            raise ResultsFileError(
                f"cannot write the results file {path}: {exc.strerror or exc}; pass out= a path you can write"
            ) from None
        try:
            import fcntl

            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock on this platform: one writer is up to the user
            pass
        except OSError:
            self.file.close()
            raise ResultsFileError(
                f"another sweep is writing to {path}; wait for it or use another out= path"
            ) from None
        try:
            rows, problems, torn_at = _parse(path)
            foreign = _not_results(path, problems)
            if foreign:
                shown = "; ".join(f"line {n}: {m.removesuffix('; skipped')}" for n, m in foreign[:3])
                what = "has lines that are not results rows" if rows else "is not a phi3lab results file"
                raise ResultsFileError(
                    f"{path} {what} ({shown}{' …' if len(foreign) > 3 else ''}); it was left as it is. "
                    "Pass another out= path for this sweep"
                    + (", or remove those lines (read_results(path) reads the good rows)" if rows else "")
                )
            if torn_at is not None:  # cut the torn row so the next one starts on a line of its own
                self.file.truncate(torn_at)
            elif path.stat().st_size and not path.read_bytes().endswith(b"\n"):
                self.file.write(b"\n")
        except BaseException:
            self.file.close()
            raise
        return self

    def write(self, row: dict) -> None:
        self.file.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        self.file.flush()
        os.fsync(self.file.fileno())

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            self.file.close()
