"""Where a model's files are: an embedded tiny model, a local folder, or a hub id in the HF cache.

:func:`resolve` turns what the user passed to :func:`phi3lab.load` into ``(folder, name, kind)``:

* an embedded model's name (``"tiny"``, ``"tiny-vision"``), shipped in ``data/models`` and always offline;
* a local checkpoint folder (``"~/models/Phi-3-mini-4k-instruct"``), which must hold ``config.json`` and weights;
* a Hugging Face hub id (``"microsoft/Phi-3-mini-4k-instruct"``), resolved through the HF cache,
  honouring ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE``/``HF_HOME``, optionally at a pinned ``revision``.

Nothing else is guessed: an unknown name gets a "did you mean", a missing folder or an uncached hub
id an error that says where to get the files and that ``phi3lab.load("tiny")`` works meanwhile.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from phi3lab.errors import Phi3LabError
from phi3lab.paths import embedded_dir
from phi3lab.runtime.registry import EMBEDDED, KNOWN_MODELS, suggest

__all__ = ["DEFAULT_MODEL", "ModelNotFoundError", "ModelNotAvailableError", "resolve"]

DEFAULT_MODEL = "tiny"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
_SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.md"]


class ModelNotFoundError(Phi3LabError, FileNotFoundError, ValueError):
    """The source names no embedded model, no existing folder and no plausible hub id.

    Also a :class:`ValueError`: the source given cannot be used (an empty string, a typo).
    """


class ModelNotAvailableError(Phi3LabError, FileNotFoundError):
    """A hub model's files are neither in the HF cache nor downloadable right now."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _check_folder(folder: Path, shown: str) -> None:
    if not (folder / "config.json").is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise ModelNotFoundError(
            f"{shown} is not a model folder: it has no config.json (it holds: {found}). "
            "Point phi3lab.load() at the folder that contains config.json and the *.safetensors files."
        )
    if not any(any(folder.glob(p)) for p in _WEIGHT_PATTERNS):
        raise ModelNotFoundError(
            f"{shown} has a config.json but no weights (*.safetensors): the download is incomplete. "
            "Download it again, e.g. `hf download <repo> --local-dir <folder>`."
        )


def _from_hub(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    offline = _offline()
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=_SNAPSHOT_FILES,
            cache_dir=_cache_dir(),
            local_files_only=offline,
        )
    except Exception as exc:  # offline miss, no network, gated repo, unknown repo or revision
        why = "HF_HUB_OFFLINE is set and it is not in the HF cache" if offline else f"{type(exc).__name__}: {exc}"
        rev = f" --revision {revision}" if revision else ""
        raise ModelNotAvailableError(
            f"cannot get the weights of {repo_id!r}: {why}.\n"
            f"  To download them on a machine with network access: hf download {repo_id}{rev}\n"
            f"  (the HF cache is {_cache_dir() or '~/.cache/huggingface/hub'}; copy it here or set HF_HUB_CACHE).\n"
            f"  To keep working now, use the embedded model: phi3lab.load({DEFAULT_MODEL!r})"
        ) from exc
    folder = Path(path)
    _check_folder(folder, f"the cached snapshot of {repo_id!r} ({folder})")
    return folder


def _short(text: str, limit: int = 80) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _source_text(source) -> str:
    if isinstance(source, (bytes, bytearray)):
        raise TypeError("the model source is bytes; pass a str: 'tiny', a folder path or a hub id")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"the model source must be a name, a folder path or a hub id (str or Path), got {type(source).__name__}; "
            f"e.g. phi3lab.load({DEFAULT_MODEL!r})"
        )
    text = os.fspath(source)
    if isinstance(text, bytes):
        raise TypeError("the model source is a bytes path; pass a str path")
    if not text.strip():
        raise ModelNotFoundError(
            f"the model source is empty ({text!r}); pass {DEFAULT_MODEL!r} (the embedded model), a folder path "
            "(use '.' for the current folder) or a hub id such as 'microsoft/Phi-3-mini-4k-instruct'"
        )
    if "\0" in text:
        raise ModelNotFoundError(f"the model source {_short(text)} contains a NUL character; no path or name can")
    return text


def _expand(text: str) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~someone with no such user
        return Path(text)


def _is(check) -> bool:
    """``path.is_dir()``/``exists()`` that answers False for names the OS refuses (too long, ...)."""
    try:
        return check()
    except (OSError, ValueError):
        return False


def _no_revision(revision: str | None, what: str, how: str = "") -> None:
    if revision is not None:
        raise ValueError(
            f"revision={revision!r} applies to hub ids only, and {what}; leave revision out, or load the hub id "
            f"with revision= to pin a version, or download that revision into a folder{how} and load the folder"
        )


def resolve(source: str | os.PathLike, revision: str | None = None) -> tuple[Path, str, str]:
    """Turn a source into ``(folder, display name, kind)``; kind is embedded, local or hub.

    Raises:
        ModelNotFoundError: unknown name or missing folder, with what to use instead.
        ModelNotAvailableError: a hub id whose files are not cached and cannot be fetched.
    """
    text = _source_text(source)
    if revision is not None and not isinstance(revision, str):
        raise TypeError(f"revision must be a string (a branch, tag or commit) or None, got {type(revision).__name__}")
    if revision is not None and not revision.strip():
        raise ValueError("revision is empty; pass a branch, tag or commit such as 'main', or leave it out")
    if text in EMBEDDED:
        _no_revision(revision, f"{text!r} is an embedded model (it has one version, in data/models)")
        name = EMBEDDED[text]
        folder = embedded_dir() / name
        if not folder.is_dir():
            raise ModelNotFoundError(
                f"the embedded model {name!r} is missing from {folder}; restore data/ from git "
                f"(git checkout -- data/models/{name}), or rebuild it as its model card there says "
                f"(`python -m phi3lab.tiny.train …`)"
            )
        _check_folder(folder, f"the embedded model folder {folder}")
        return folder, name, "embedded"
    path = _expand(text)
    if _is(path.is_dir):
        _no_revision(
            revision,
            f"{text!r} is a local folder, which holds one version",
            " (e.g. `hf download <repo> --revision <rev> --local-dir <folder>`)",
        )
        _check_folder(path, str(path))
        return path.resolve(), path.name, "local"
    if _HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        return _from_hub(text, revision), text, "hub"
    if _is(path.exists):
        raise ModelNotFoundError(f"{text} is a file, not a model folder; pass the folder that holds config.json")
    looks_like_path = os.sep in text or text.startswith((".", "~")) or (os.altsep and os.altsep in text)
    if looks_like_path:
        raise ModelNotFoundError(
            f"no folder at {_short(str(path))}: check the path, or pass a hub id such as "
            f"'microsoft/Phi-3-mini-4k-instruct', or the embedded model {DEFAULT_MODEL!r}"
        )
    names = sorted(EMBEDDED) + [spec.name for spec in KNOWN_MODELS.values()]
    hint = suggest(text, names) if len(text) <= 100 else ""
    raise ModelNotFoundError(
        f"unknown model {_short(text)}.{hint} Use an embedded model ({', '.join(sorted(EMBEDDED))}), "
        f"a local folder, or a hub id such as {', '.join(repr(s.name) for s in KNOWN_MODELS.values())}"
    )
