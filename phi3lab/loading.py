"""Load a Phi-3 or Phi-3-vision model on whatever hardware is here, and say what was chosen.

``phi3lab.load(source)`` accepts

* the name of an embedded tiny model (``"tiny"``), shipped in ``data/models`` and always offline;
* a local checkpoint folder (``"~/models/Phi-3-mini-4k-instruct"``);
* a Hugging Face hub id (``"microsoft/Phi-3-mini-4k-instruct"``), resolved through the HF cache,
  honouring ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE``/``HF_HOME``.

It never passes ``trust_remote_code=True``: text models are transformers' native ``phi3``, and
Phi-3-vision is phi3lab's native implementation (registered with the Auto classes on import).
The attention kernel, dtype and device come from :func:`phi3lab.select_attention`.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

import torch

from phi3lab.attention_backend import AttentionChoice, select_attention
from phi3lab.lab import Lab
from phi3lab.paths import embedded_dir
from phi3lab.registry import EMBEDDED, KNOWN_MODELS, ModelSpec, spec_from_folder, suggest

__all__ = ["load", "resolve", "ModelNotFoundError", "ModelNotAvailableError", "DEFAULT_MODEL"]

DEFAULT_MODEL = "tiny"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
_SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.md"]


class ModelNotFoundError(FileNotFoundError):
    """The source names no embedded model, no existing folder and no plausible hub id."""


class ModelNotAvailableError(FileNotFoundError):
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


def resolve(source: str | os.PathLike, revision: str | None = None) -> tuple[Path, str, str]:
    """Turn a source into ``(folder, display name, kind)``; kind is embedded, local or hub.

    Raises:
        ModelNotFoundError: unknown name or missing folder, with what to use instead.
        ModelNotAvailableError: a hub id whose files are not cached and cannot be fetched.
    """
    text = os.fspath(source)
    if text in EMBEDDED:
        name = EMBEDDED[text]
        folder = embedded_dir() / name
        if not folder.is_dir():
            raise ModelNotFoundError(
                f"the embedded model {name!r} is missing from {folder}; rebuild it with "
                f"`python -m phi3lab.tiny.train text`, or restore data/ from git"
            )
        _check_folder(folder, f"the embedded model folder {folder}")
        return folder, name, "embedded"
    path = Path(text).expanduser()
    if path.is_dir():
        _check_folder(path, str(path))
        return path.resolve(), path.name, "local"
    if _HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        return _from_hub(text, revision), text, "hub"
    if path.exists():
        raise ModelNotFoundError(f"{text} is a file, not a model folder; pass the folder that holds config.json")
    looks_like_path = os.sep in text or text.startswith((".", "~")) or (os.altsep and os.altsep in text)
    if looks_like_path:
        raise ModelNotFoundError(
            f"no folder at {path}: check the path, or pass a hub id such as "
            f"'microsoft/Phi-3-mini-4k-instruct', or the embedded model {DEFAULT_MODEL!r}"
        )
    names = sorted(EMBEDDED) + [spec.name for spec in KNOWN_MODELS.values()]
    raise ModelNotFoundError(
        f"unknown model {text!r}.{suggest(text, names)} Use an embedded model ({', '.join(sorted(EMBEDDED))}), "
        f"a local folder, or a hub id such as {', '.join(repr(s.name) for s in KNOWN_MODELS.values())}"
    )


def load(
    source: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    attn: str = "auto",
    revision: str | None = None,
    need_weights: bool = False,
    verbose: bool = True,
) -> Lab:
    """Load a model and its tokenizer or processor with a hardware-aware attention choice.

    Args:
        source: ``"tiny"`` (the default embedded model), a local folder or a hub id.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"``.
        dtype: ``"auto"`` or ``"float32"``/``"float16"``/``"bfloat16"``.
        attn: ``"auto"`` or ``"flash_attention_2"``/``"sdpa"``/``"eager"``.
        revision: hub revision (branch, tag or commit) to pin; the chat template differs
            between Phi-3-mini revisions.
        need_weights: the model will be run with ``output_attentions=True`` (forces eager).
        verbose: print one line saying what was loaded and the attention choice.

    Returns:
        A :class:`~phi3lab.lab.Lab` with ``.model``, ``.processor``, ``.attention``, ``.spec``
        and ``.info()``.

    Examples:
        >>> lab = load("tiny", verbose=False)
        >>> lab.attention.impl in ("sdpa", "flash_attention_2")
        True
    """
    import phi3lab.models  # noqa: F401  registers phi3_v with the Auto classes
    from transformers import AutoConfig, AutoModelForCausalLM

    started = time.perf_counter()
    choice: AttentionChoice = select_attention(device, dtype, need_weights, attn=attn)
    folder, name, kind = resolve(source, revision)
    spec: ModelSpec = spec_from_folder(folder, name, embedded=kind == "embedded")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    if verbose and kind != "embedded":
        print(f"phi3lab: loading {name} from {folder} to {choice.device} in {choice.dtype_name} ({choice.impl})…")
    kwargs = dict(config=config, dtype=choice.dtype, attn_implementation=choice.impl, trust_remote_code=False)
    if choice.device.startswith("cuda"):
        kwargs["device_map"] = choice.device
    with _quiet_progress(kind == "embedded"):  # a bar for a 5 MB model is noise; keep it for real ones
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if not choice.device.startswith("cuda"):
        model = model.to(choice.device)
    model.eval()
    from phi3lab.attention import guard_output_attentions

    guard_output_attentions(model)  # output_attentions=True is checked against free memory first
    processor = _load_processor(folder, spec)
    lab = Lab(model=model, processor=processor, attention=choice, spec=spec, path=folder, kind=kind,
              load_seconds=time.perf_counter() - started)
    if verbose:
        print(f"phi3lab: {name} · {choice.summary()}")
    return lab


@contextlib.contextmanager
def _quiet_progress(quiet: bool):
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if quiet and enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and enabled:
            hf_logging.enable_progress_bar()


def _load_processor(folder: Path, spec: ModelSpec):
    """The tokenizer (text) or processor (vision), built from ``tokenizer.json`` as-is.

    With ``config.json`` beside it, transformers 5 returns its tokenizers backend, which keeps
    Phi-3's normalizer; loading as ``LlamaTokenizer`` would rebuild the pipeline and change ids.
    """
    if spec.modality == "vision":
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(folder, trust_remote_code=False)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
