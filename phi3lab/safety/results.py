"""Results files: one JSON row per answer, appended durably, read back tolerantly.

Each row holds the probe, the transform, the conversation sent, the answer, the detector's verdict,
and the ``model`` and ``settings`` it was produced with, plus a content ``key`` — a hash of (probe,
transform, conversation, model, settings).  Rows are appended one at a time with ``flush`` and
``fsync``, so a sweep killed at any moment (even ``kill -9``) leaves every finished row on disk and
at worst one torn last line, which reading ignores and resuming cuts off.  Resuming skips every
key already present, so nothing is lost and nothing is duplicated.

A file holds one experiment: rows from another model or other settings are refused
(:class:`ResultsMismatchError`) rather than mixed.  A malformed line in the middle is reported by
line number (:class:`ResultsFileWarning`) and the good rows are kept.
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

    def select(self, **where) -> Results:
        """The rows whose fields equal the given values, e.g. ``select(kind="harmful", transform="story")``."""
        return Results([r for r in self.rows if all(r.get(k) == v for k, v in where.items())], self.path, self.problems)

    def rejudge(self, detector) -> Results:
        """The same rows judged again by ``detector(response, request)`` (a new detector, or other rules)."""
        rows = []
        for r in self.rows:
            v = detector(r["response"], r.get("request"))
            rows.append(
                {
                    **r,
                    "refused": bool(getattr(v, "refused", v)),
                    "score": getattr(v, "score", None),
                    "reason": getattr(v, "reason", ""),
                }
            )
        return Results(rows, self.path, self.problems)

    def __repr__(self) -> str:
        where = f" from {self.path.name}" if self.path else ""
        extra = f", {len(self.problems)} skipped line(s)" if self.problems else ""
        return f"Results({len(self.rows)} rows{where}, model {self.model!r}{extra})"


def _parse(path: Path) -> tuple[list[dict], list[tuple[int, str]], int | None]:
    """Rows, problems, and the byte offset where a torn last line starts (``None`` if none)."""
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
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            missing = [k for k in REQUIRED if k not in row]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
        except (ValueError, UnicodeDecodeError) as exc:
            if last:  # no newline after it: a write interrupted mid-line
                torn_at = start
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


def read_results(path, *, strict: bool = False) -> Results:
    """Read a results file, keeping every good row.

    Args:
        path: the JSONL file a sweep wrote.
        strict: raise :class:`ResultsFileError` on any malformed line instead of warning.

    Warns:
        ResultsFileWarning: naming the line numbers that were skipped and why.
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsFileError(f"no results file at {path}; run a sweep first (phi3lab probe --out {path})")
    rows, problems, _ = _parse(path)
    bad = [(n, m) for n, m in problems if not m.startswith("torn")]
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "ab")
        try:
            import fcntl

            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock on this platform: one writer is up to the user
            pass
        except OSError:
            self.file.close()
            raise ResultsFileError(
                f"another sweep is writing to {self.path}; wait for it or use another out= path"
            ) from None
        _, _, torn_at = _parse(self.path)
        if torn_at is not None:  # cut the torn tail so the next row starts on a line of its own
            self.file.truncate(torn_at)
        elif self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
            self.file.write(b"\n")
        return self

    def write(self, row: dict) -> None:
        self.file.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        self.file.flush()
        os.fsync(self.file.fileno())

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            self.file.close()
