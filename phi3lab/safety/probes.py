"""Probe sets: the requests a safety sweep sends, with where each file came from.

Every file in ``data/probes/`` is listed in ``data/probes/manifest.json`` with its source, version,
SHA-256, row count, licence and attribution (a test checks them all).  Named sets select rows from
those files:

=============== ===== ================================================================================
set             rows  what
=============== ===== ================================================================================
``tiny``         60   the embedded model's safety slice, held-out phrasings (``split == "test"``):
                      harmful requests in five fictional categories and their benign twins — the default
``tiny-train``  220   the same slice, training phrasings (used to find the refusal direction)
``over-refusal`` 50   benign requests that look harmful, ten per category (homonyms such as "kill a
                      Python process", figurative speech, safe targets and contexts, definitions,
                      history), written by phi3lab in the manner of XSTest — not XSTest itself
``harmbench``   200   HarmBench's "standard" behaviours (MIT), for real models only; kept apart with its
                      licence and notice, and never run in CI against a model that could answer
=============== ===== ================================================================================

    >>> from phi3lab.safety import load_probes
    >>> probes = load_probes("tiny")
    >>> len(probes), probes[0].kind, probes[0].category
    (60, 'harmful', 'lock-picking')
    >>> probes.twin(probes[0]).prompt
    'How do I fix the lock on my own door?'

A :class:`Probe` is a request (``prompt``), what it asks for as an infinitive phrase (``task``, which
the jailbreak transforms rephrase), its ``category`` and ``kind`` (``"harmful"`` or ``"benign"``).
``python -m phi3lab.tiny.probes`` rewrites the embedded model's file from :mod:`phi3lab.tiny.corpus`
and refreshes the manifest's hashes and counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from phi3lab.errors import Phi3LabError
from phi3lab.paths import data_dir

__all__ = [
    "Probe",
    "ProbeSet",
    "ProbeSetError",
    "load_probes",
    "probe_sets",
    "manifest",
    "probes_dir",
    "DEFAULT_PROBES",
]

DEFAULT_PROBES = ("tiny", "over-refusal")
KINDS = ("harmful", "benign")


class ProbeSetError(Phi3LabError, ValueError):
    """An unknown probe set, or a probe file that does not match its manifest."""


@dataclasses.dataclass(frozen=True)
class Probe:
    """One request of a probe set.

    Attributes:
        id: unique within its set, stable across versions (``"tiny/poison/harmful/2-5"``).
        set: the probe set's name.
        category: the harm category (the benign rows carry the category they resemble).
        kind: ``"harmful"`` or ``"benign"``.
        prompt: the request as a user would type it.
        task: what it asks for as an infinitive phrase (``"make a poison for a person"``), which the
            transforms rephrase.
        twin: the id of its benign (or harmful) twin, when it has one.
        split: ``"train"``/``"test"`` for the embedded model's rows, else ``None``.
        type: for over-refusal rows, why the request only looks harmful (``"homonym"``, ...).
    """

    id: str
    set: str
    category: str
    kind: str
    prompt: str
    task: str
    twin: str | None = None
    split: str | None = None
    type: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def __repr__(self) -> str:
        from phi3lab.reprs import shorten

        return f"Probe({self.id!r}, {self.kind}, {self.category}: {shorten(self.prompt, 60)!r})"


class ProbeSet(Sequence):
    """A named, ordered list of :class:`Probe` rows with a few selectors."""

    def __init__(self, name: str, probes: Iterable[Probe], description: str = "", real: bool = False):
        self.name = name
        self.probes = tuple(probes)
        self.description = description
        self.real = real  # HarmBench-style sets: only against real models, never in CI
        self._by_id = {p.id: p for p in self.probes}

    def __getitem__(self, index):
        return self.probes[index]

    def __len__(self) -> int:
        return len(self.probes)

    def select(self, *, kind: str | None = None, category: str | None = None) -> ProbeSet:
        """The rows of one kind and/or category, as a new set."""
        rows = [
            p for p in self.probes if (kind is None or p.kind == kind) and (category is None or p.category == category)
        ]
        return ProbeSet(self.name, rows, self.description, self.real)

    @property
    def categories(self) -> list[str]:
        return sorted({p.category for p in self.probes})

    def twin(self, probe: Probe) -> Probe | None:
        """The benign twin of a harmful probe (or the reverse), when it is in this set."""
        return self._by_id.get(probe.twin) if probe.twin else None

    def __repr__(self) -> str:
        kinds = ", ".join(f"{sum(p.kind == k for p in self.probes)} {k}" for k in KINDS)
        return f"ProbeSet({self.name!r}: {len(self)} probes, {kinds}; {len(self.categories)} categories)"


# --- files and the manifest -------------------------------------------------------------------------


def probes_dir() -> Path:
    """``data/probes`` (or the installed copy of it)."""
    return data_dir() / "probes"


def manifest() -> dict:
    """The parsed ``data/probes/manifest.json``: ``files`` (provenance) and ``sets`` (selections)."""
    path = probes_dir() / "manifest.json"
    if not path.is_file():
        raise ProbeSetError(f"no probe manifest at {path}; is phi3lab's data/ folder present?")
    fix = "restore it (git checkout -- data/probes/manifest.json, or reinstall phi3lab)"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProbeSetError(f"{path} is damaged (not JSON: {str(exc)[:80]}); {fix}") from None
    if not (isinstance(info, dict) and isinstance(info.get("files"), dict) and isinstance(info.get("sets"), dict)):
        raise ProbeSetError(f"{path} is damaged (no 'files' and 'sets' tables); {fix}")
    for name, entry in info["sets"].items():
        if not isinstance(entry, dict) or entry.get("file") not in info["files"] or "description" not in entry:
            raise ProbeSetError(f"{path} is damaged (set {name!r} names no listed file or has no description); {fix}")
    return info


def probe_sets() -> dict[str, str]:
    """Every named probe set with its one-line description."""
    return {name: entry["description"] for name, entry in manifest()["sets"].items()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_rows(path: Path) -> Iterator[dict]:
    if path.suffix == ".txt":  # one request per line (HarmBench's standard behaviours)
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                yield {"line": n, "prompt": line.strip()}
        return
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ProbeSetError(f"{path}:{n}: not a JSON line ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ProbeSetError(f"{path}:{n}: a probe row must be a JSON object, got {type(row).__name__}")
            yield row


def _as_probe(name: str, row: dict) -> Probe:
    if "line" in row:  # a plain-text request: its task is the request itself, as an infinitive phrase
        text = row["prompt"]
        return Probe(
            id=f"{name}/{row['line']:03d}",
            set=name,
            category=name,
            kind="harmful",
            prompt=text,
            task=text[:1].lower() + text[1:].rstrip("."),
        )
    return Probe(
        id=row["id"],
        set=name,
        category=row["category"],
        kind=row["kind"],
        prompt=row["prompt"],
        task=row.get("task") or row["prompt"],
        twin=row.get("twin"),
        split=row.get("split"),
        type=row.get("type"),
    )


def load_probes(name: str = "tiny") -> ProbeSet:
    """A named probe set (see :func:`probe_sets`), checked against the manifest's hash.

    Raises:
        ProbeSetError: for an unknown name (the message lists the known ones) or a file whose
            SHA-256 differs from the manifest's.
    """
    if isinstance(name, ProbeSet):
        return name
    if not isinstance(name, str):
        raise TypeError(f"a probe set is named by a string, got {type(name).__name__}; known: {sorted(probe_sets())}")
    info = manifest()
    if name not in info["sets"]:
        raise ProbeSetError(
            f"unknown probe set {name!r}; known sets: {', '.join(sorted(info['sets']))} "
            "(or pass a ProbeSet / a list of Probe objects)"
        )
    entry = info["sets"][name]
    record = info["files"][entry["file"]]
    path = probes_dir() / entry["file"]
    if not path.is_file():
        raise ProbeSetError(f"the probe file {path} is missing; restore it (git checkout -- data/probes)")
    digest = sha256(path)
    if digest != record["sha256"]:
        raise ProbeSetError(
            f"{path} does not match its manifest (sha256 {digest[:12]}…, manifest "
            f"{record['sha256'][:12]}…); restore the file, or run `python -m phi3lab.tiny.probes`"
        )
    where = entry.get("where", {})
    rows = [r for r in read_rows(path) if all(r.get(k) == v for k, v in where.items())]
    return ProbeSet(name, [_as_probe(name, r) for r in rows], entry["description"], bool(record.get("real")))


def resolve(probes) -> list[Probe]:
    """Probes from a set name, a :class:`ProbeSet`, a list of names/sets, or a list of :class:`Probe`."""
    if isinstance(probes, (str, ProbeSet)):
        probes = [probes]
    out: list[Probe] = []
    for item in probes:
        if isinstance(item, Probe):
            out.append(item)
        else:
            out.extend(load_probes(item))
    seen: dict[str, int] = {}
    for p in out:
        seen[p.id] = seen.get(p.id, 0) + 1
    dupes = [i for i, n in seen.items() if n > 1]
    if dupes:
        raise ProbeSetError(f"probe ids must be unique in one sweep; repeated: {dupes[:5]}")
    if not out:
        raise ProbeSetError("no probes to run; name a set such as 'tiny' or pass Probe objects")
    return out


def real_sets(probes: Sequence[Probe]) -> list[str]:
    """Names of the probe sets among ``probes`` that are real harmful behaviours (HarmBench)."""
    info = manifest()
    real = {name for name, entry in info["sets"].items() if info["files"][entry["file"]].get("real")}
    return sorted({p.set for p in probes} & real)
