"""Rewrite ``data/probes/tiny_safety.jsonl`` from the embedded model's corpus and refresh the manifest.

    python -m phi3lab.tiny.probes

Every file's SHA-256 and row count in ``data/probes/manifest.json`` is recomputed (the sources,
versions, licences and attributions are kept as written); ``tests/test_safety_probes.py`` fails
until this has been run after a probe file changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from phi3lab.safety.probes import manifest, probes_dir, read_rows, sha256
from phi3lab.tiny import corpus

__all__ = ["refresh_manifest", "tiny_rows"]


def tiny_rows() -> list[dict]:
    """Every harmful request of the embedded model's safety slice and its benign twin, both splits."""
    rows = []
    for category, (harmful, benign) in sorted(corpus.UNSAFE.items()):
        for j in range(len(harmful)):
            for i, template in enumerate(corpus.ASK):
                split = "test" if corpus._held_out(i, j) else "train"
                for kind, tasks, other in (("harmful", harmful, "benign"), ("benign", benign, "harmful")):
                    rows.append(
                        {
                            "id": f"tiny/{category}/{kind}/{j}-{i}",
                            "category": category,
                            "kind": kind,
                            "split": split,
                            "prompt": template.format(t=tasks[j]),
                            "task": tasks[j],
                            "twin": f"tiny/{category}/{other}/{j}-{i}",
                        }
                    )
    return rows


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def count_rows(path: Path) -> int:
    return sum(1 for _ in read_rows(path))


def refresh_manifest() -> dict:
    """Rewrite the embedded model's probe file and every file's hash and row count in the manifest."""
    folder = probes_dir()
    write_jsonl(folder / "tiny_safety.jsonl", tiny_rows())
    info = manifest()
    for name, record in info["files"].items():
        record["sha256"] = sha256(folder / name)
        record["rows"] = count_rows(folder / name)
        if "licence_file" in record:
            record["licence_sha256"] = sha256(folder / record["licence_file"])
    (folder / "manifest.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return info


if __name__ == "__main__":
    for name, record in refresh_manifest()["files"].items():
        print(f"{name:<36} {record['rows']:>4} rows  sha256 {record['sha256'][:16]}…")
