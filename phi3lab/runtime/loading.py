"""Load a Phi-3 or Phi-3-vision model on whatever hardware is here, and say what was chosen.

``phi3lab.load(source)`` accepts

* the name of an embedded tiny model (``"tiny"``), shipped in ``data/models`` and always offline;
* a local checkpoint folder (``"~/models/Phi-3-mini-4k-instruct"``);
* a Hugging Face hub id (``"microsoft/Phi-3-mini-4k-instruct"``), resolved through the HF cache,
  honouring ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE``/``HF_HOME``.

It never passes ``trust_remote_code=True``: text models are transformers' native ``phi3``, and
Phi-3-vision is phi3lab's native implementation (registered with the Auto classes on import).
The attention kernel, dtype and device come from :func:`phi3lab.select_attention`.

Before building anything, the folder's files are checked against each other: every JSON file
parses to an object, ``config.json`` describes a Phi-3 (``phi3``) or Phi-3-vision (``phi3_v``)
model, the safetensors files are complete and hold exactly the tensors, with the shapes, that the
config implies, the weights fit in memory, and the tokenizer fits the embedding.  A problem raises
:class:`ModelFilesError` naming the file, what is wrong and how to get a good copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

import torch

from phi3lab.errors import Phi3LabError
from phi3lab.paths import embedded_dir
from phi3lab.runtime.attention_backend import AttentionChoice, select_attention
from phi3lab.runtime.lab import Lab
from phi3lab.runtime.registry import EMBEDDED, KNOWN_MODELS, ModelSpec, spec_from_folder, suggest
from phi3lab.validation import check_bool

__all__ = [
    "load",
    "resolve",
    "ModelNotFoundError",
    "ModelNotAvailableError",
    "ModelFilesError",
    "NotEnoughMemoryError",
    "DEFAULT_MODEL",
    "plan_device_map",
]

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


class ModelFilesError(Phi3LabError, ValueError):
    """A model folder's files are damaged, incomplete or do not belong together.

    The message names the file, what is wrong with it and how to get a good copy; ``path`` is
    the file (or folder) at fault.
    """

    def __init__(self, message: str, path: Path | None = None):
        super().__init__(message)
        self.path = path


class NotEnoughMemoryError(Phi3LabError, MemoryError):
    """The model's weights cannot fit in the memory of the chosen device."""


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
                f"the embedded model {name!r} is missing from {folder}; rebuild it with "
                f"`python -m phi3lab.tiny.train text`, or restore data/ from git"
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


def load(
    source: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    attn: str = "auto",
    revision: str | None = None,
    need_weights: bool = False,
    verbose: bool = True,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
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
        device_map: ``"auto"`` (or ``"balanced"``, ``"sequential"``) spreads a real checkpoint over every
            GPU, then the CPU, whole decoder layers at a time (accelerate; see :func:`plan_device_map`);
            a dict of module name → device is used as it is.  ``None`` (the default) puts the whole
            model on ``device``.
        max_memory: with ``device_map``, the memory each device may take, e.g. ``{0: "20GiB", 1: "20GiB",
            "cpu": "64GiB"}`` (default: what accelerate measures).

    Returns:
        A :class:`~phi3lab.runtime.lab.Lab` with ``.model``, ``.processor``, ``.attention``, ``.spec``
        and ``.info()``.

    Examples:
        >>> lab = load("tiny", verbose=False)
        >>> lab.attention.impl in ("sdpa", "flash_attention_2")
        True
    """
    import phi3lab.models  # noqa: F401  registers phi3_v with the Auto classes

    need_weights = check_bool("need_weights", need_weights)
    verbose = check_bool("verbose", verbose)
    started = time.perf_counter()
    choice: AttentionChoice = select_attention(device, dtype, need_weights, attn=attn)
    folder, name, kind = resolve(source, revision)
    files = _Files(folder, name, kind, revision)
    files.check_json()
    spec: ModelSpec = spec_from_folder(folder, name, embedded=kind == "embedded")
    config = files.config()
    files.check_weights(config)
    if device_map is None:
        files.check_memory(choice)  # one device must hold it all; a device map spreads it instead
    elif not isinstance(device_map, dict):
        device_map = plan_device_map(config, choice.dtype, strategy=device_map, max_memory=max_memory)
    if verbose and kind != "embedded":
        print(f"phi3lab: loading {name} from {folder} to {choice.device} in {choice.dtype_name} ({choice.impl})…")
    with _quiet_progress(kind == "embedded"):  # a bar for a 5 MB model is noise; keep it for real ones
        model = files.model(config, choice, device_map)
    model.eval()
    processor = files.processor(spec, config)
    lab = Lab(
        model=model,
        processor=processor,
        attention=choice,
        spec=spec,
        path=folder,
        kind=kind,
        load_seconds=time.perf_counter() - started,
    )
    lab.guard_output_attentions()  # output_attentions=True is checked against free memory first
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


_JSON_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "model.safetensors.index.json",
)
_SIZES = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
)
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_MODEL_TYPES = {"phi3": "Phi-3 (Phi3ForCausalLM)", "phi3_v": "Phi-3-vision (Phi3VForCausalLM)"}


class _Files:
    """The checks of one model folder before and while loading; every error names the file and the fix."""

    def __init__(self, folder: Path, name: str, kind: str, revision: str | None):
        self.folder, self.name, self.kind, self.revision = folder, name, kind, revision
        self.json: dict[str, dict] = {}
        self.shapes: dict[str, tuple[int, ...]] | None = None  # from the safetensors headers

    # --- messages ------------------------------------------------------------------------------

    def fix(self) -> str:
        if self.kind == "embedded":
            kind = "vision" if "vision" in self.folder.name else "text"
            return (
                f"restore the embedded model's files from git (git checkout -- data/models/{self.folder.name}) "
                f"or rebuild it with `python -m phi3lab.tiny.train {kind}`"
            )
        if self.kind == "hub":
            rev = f" --revision {self.revision}" if self.revision else ""
            return (
                f"download it again with `hf download {self.name}{rev} --force-download`; meanwhile "
                f"phi3lab.load({DEFAULT_MODEL!r}) works offline"
            )
        return (
            f"copy the checkpoint again, or download it with `hf download <repo> --local-dir {self.folder}`; "
            f"meanwhile phi3lab.load({DEFAULT_MODEL!r}) works offline"
        )

    def error(self, file: str, problem: str, fix: str | None = None) -> ModelFilesError:
        path = self.folder / file if file else self.folder
        return ModelFilesError(f"{path}: {problem}; {fix or self.fix()}", path)

    # --- before building -------------------------------------------------------------------------

    def check_json(self) -> None:
        """Every JSON file present parses to an object; config.json is a Phi-3 config; tokenizer.json exists."""
        for file in _JSON_FILES:
            path = self.folder / file
            if not _is(path.is_file):
                continue
            try:
                data = json.loads(path.read_bytes().decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise self.error(
                    file, f"is not UTF-8 text (byte {exc.start}), so not JSON: the file is damaged"
                ) from None
            except json.JSONDecodeError as exc:
                raise self.error(
                    file,
                    f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): "
                    "the file is damaged or was not fully downloaded",
                ) from None
            except OSError as exc:
                raise self.error(file, f"cannot be read ({exc.strerror or exc})", "check its permissions") from None
            if not isinstance(data, dict):
                raise self.error(
                    file,
                    f"holds a JSON {type(data).__name__} where an object {{...}} belongs: "
                    "it is not a valid file of this kind",
                )
            self.json[file] = data
        self._check_config(self.json["config.json"])
        self._check_stop_ids()
        self._check_template()
        if "tokenizer.json" not in self.json:
            why = "the download is incomplete"
            if (self.folder / "tokenizer.model").exists():
                why = "there is a tokenizer.model, but rebuilding from it gives other ids than the official tokenizer"
            raise self.error(
                "tokenizer.json", f"is missing — phi3lab reads the tokenizer from tokenizer.json as it is, and {why}"
            )

    def _check_config(self, config: dict) -> None:
        model_type = config.get("model_type")
        if model_type not in _MODEL_TYPES:
            arch = ", ".join(map(str, config.get("architectures") or [])) or "no architectures"
            what = f"model_type {model_type!r} ({arch})" if model_type else f"no model_type ({arch})"
            raise self.error(
                "config.json",
                f"describes {what}, not a Phi-3 model; phi3lab loads Phi-3 "
                f"(model_type 'phi3') and Phi-3-vision ('phi3_v') checkpoints",
                "pass a Phi-3 checkpoint such as 'microsoft/Phi-3-mini-4k-instruct' or the embedded "
                f"{DEFAULT_MODEL!r}, or load other architectures with transformers directly",
            )
        for key in _SIZES:
            value = config.get(key)
            if key in config and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise self.error(
                    "config.json",
                    f"has {key}={value!r}; it must be a positive whole number",
                    "restore the checkpoint's own config.json",
                )
        heads, hidden = config.get("num_attention_heads"), config.get("hidden_size")
        if heads and hidden and hidden % heads:
            raise self.error(
                "config.json",
                f"has hidden_size={hidden} that num_attention_heads={heads} does not divide",
                "restore the checkpoint's own config.json",
            )
        window = config.get("sliding_window")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise self.error(
                "config.json",
                f"has sliding_window={window!r}; it must be a positive whole number or null",
                "restore the checkpoint's own config.json",
            )

    def _check_stop_ids(self) -> None:
        vocab = self.json["config.json"].get("vocab_size")
        for file in ("generation_config.json", "config.json"):
            ids = self.json.get(file, {}).get("eos_token_id")
            listed = ids if isinstance(ids, list) else [ids]
            if ids is None or all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < (vocab or i + 1) for i in listed
            ):
                continue
            raise self.error(
                file,
                f"has eos_token_id={ids!r}; it must be a token id (or a list of ids) below the vocabulary size {vocab}",
                f"restore the checkpoint's own {file}",
            )

    def _check_template(self) -> None:
        """The chat template parses as Jinja (so a broken one is named here, not at the first chat)."""
        template = self.json.get("tokenizer_config.json", {}).get("chat_template")
        file = "tokenizer_config.json"
        if (self.folder / "chat_template.jinja").is_file():
            file = "chat_template.jinja"
            try:
                template = (self.folder / file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise self.error(file, f"cannot be read as UTF-8 text ({exc})") from None
        if template is None:
            return  # no template: a base model; render() says so when a chat is asked for
        named = template if isinstance(template, list) else [{"template": template}]
        for entry in named:  # one template, or a list of {"name": ..., "template": ...}
            text = entry.get("template") if isinstance(entry, dict) else entry
            if not isinstance(text, str):
                raise self.error(
                    file,
                    f"has a chat_template of type {type(text).__name__}; it must be a Jinja template string",
                    f"restore the checkpoint's own {file}",
                )
            from jinja2 import TemplateSyntaxError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            try:
                ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
            except TemplateSyntaxError as exc:
                raise self.error(
                    file,
                    f"has a chat_template that is not valid Jinja ({exc.message}, line {exc.lineno})",
                    f"restore the checkpoint's own {file}",
                ) from None

    def config(self):
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(self.folder, trust_remote_code=False)
        except Exception as exc:  # a strict-dataclass field, an unknown rope type or activation, ...
            raise self.error(
                "config.json",
                f"is not a configuration transformers accepts ({_reason(exc)})",
                "restore the checkpoint's own config.json, or " + self.fix(),
            ) from exc

    def check_weights(self, config) -> None:
        """The safetensors files are whole and hold exactly the tensors, with the shapes, the config implies.

        The layer count is compared first, from the headers alone, so a config that claims a
        billion layers is refused before a model of that size is even described.
        """
        files = self._weight_files()
        if files is None:
            return  # *.bin weights: transformers checks them while loading
        shapes: dict[str, tuple[int, ...]] = {}
        where: dict[str, str] = {}
        for file in files:
            for key, shape in self._header(file).items():
                shapes[key], where[key] = shape, file
        shown = files[0] if len(files) == 1 else "the safetensors shards"
        layers = {int(m.group(1)) for key in shapes if (m := _LAYER.match(key))}
        n_layers = getattr(config, "num_hidden_layers", None)
        if layers and n_layers != len(layers):
            raise self.error(
                "config.json",
                f"says num_hidden_layers={n_layers} but {shown} holds {len(layers)} "
                "layers: the config and the weights are from different models",
                "use the config.json that came with these weights, or " + self.fix(),
            )
        expected = self._expected_shapes(config)
        tied = bool(getattr(config, "tie_word_embeddings", False))
        missing = [k for k in expected if k not in shapes and not (tied and k == "lm_head.weight")]
        unexpected = [k for k in shapes if k not in expected]
        wrong = [k for k in expected if k in shapes and tuple(shapes[k]) != expected[k]]
        if wrong:
            k = wrong[0]
            raise self.error(
                where[k],
                f"holds {k} with shape {list(shapes[k])} but config.json implies "
                f"{list(expected[k])} ({len(wrong)} tensor(s) differ): the weights and the "
                "config are from different models",
                "use the config.json that came with these weights, or " + self.fix(),
            )
        if missing:
            raise self.error(
                shown if len(files) == 1 else "",
                f"lacks {len(missing)} tensor(s) the config needs, e.g. {', '.join(missing[:3])}: an "
                "incomplete or different checkpoint",
            )
        if unexpected:
            raise self.error(
                where[unexpected[0]],
                f"holds {len(unexpected)} tensor(s) this Phi-3 config has no place "
                f"for, e.g. {', '.join(unexpected[:3])}: weights of another model",
                "use the config.json that came with these weights, or " + self.fix(),
            )
        self.shapes = shapes

    def _weight_files(self) -> list[str] | None:
        if (self.folder / "model.safetensors").is_file():
            return ["model.safetensors"]
        index = self.json.get("model.safetensors.index.json")
        if index is not None:
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise self.error("model.safetensors.index.json", "has no weight_map of tensor names to shard files")
            shards = sorted(set(map(str, weight_map.values())))
            absent = [f for f in shards if not (self.folder / f).is_file()]
            if absent:
                raise self.error(
                    absent[0],
                    f"is missing ({len(absent)} of {len(shards)} shards listed in "
                    "model.safetensors.index.json are absent): the download is incomplete",
                )
            return shards
        if any(self.folder.glob("pytorch_model*.bin")):
            return None
        found = ", ".join(sorted(p.name for p in self.folder.glob("*.safetensors"))[:4]) or "none"
        raise self.error(
            "model.safetensors",
            f"is missing, and there is no model.safetensors.index.json (weight "
            f"files found: {found}); transformers reads model.safetensors or the "
            "shards an index lists",
        )

    def _header(self, file: str) -> dict[str, tuple[int, ...]]:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(self.folder / file, framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            reason = str(exc)
            if "not fully covered" in reason or "incomplete" in reason.lower():
                what = "is truncated: it is shorter than its header says (an interrupted download or copy)"
            elif "header" in reason.lower():
                what = "is not a safetensors file: its header cannot be read (an empty, garbage or HTML file)"
            else:
                what = "cannot be read as safetensors"
            raise self.error(file, f"{what} [{_reason(exc)}]") from None

    def _expected_shapes(self, config) -> dict[str, tuple[int, ...]]:
        import torch
        from transformers import AutoModelForCausalLM

        try:
            with torch.device("meta"):  # shapes only: nothing is allocated
                skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        except Exception as exc:
            raise self.error(
                "config.json",
                f"does not describe a model transformers can build ({_reason(exc)})",
                "restore the checkpoint's own config.json, or " + self.fix(),
            ) from exc
        return {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}

    def check_memory(self, choice: AttentionChoice) -> None:
        """Refuse weights that cannot fit the device at all (they would fail after minutes of loading)."""
        if not self.shapes:
            return
        import math

        import torch

        nbytes = sum(math.prod(s) for s in self.shapes.values()) * torch.empty((), dtype=choice.dtype).element_size()
        total = _device_memory(choice.device)
        if total and nbytes > total:
            raise NotEnoughMemoryError(
                f"{self.name} needs {nbytes / 2**30:.1f} GiB for its weights in {choice.dtype_name}, more than the "
                f"{total / 2**30:.1f} GiB of memory on {choice.device}; load it with dtype='bfloat16' or "
                f"'float16', on a bigger device, or use the embedded model phi3lab.load({DEFAULT_MODEL!r})"
            )

    # --- building ------------------------------------------------------------------------------

    def model(self, config, choice: AttentionChoice, device_map: dict | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        kwargs = dict(
            config=config,
            dtype=choice.dtype,
            attn_implementation=choice.impl,
            trust_remote_code=False,
            output_loading_info=True,
        )
        if device_map is not None:
            kwargs["device_map"] = device_map
        elif choice.device.startswith("cuda"):
            kwargs["device_map"] = choice.device
        try:
            model, info = AutoModelForCausalLM.from_pretrained(self.folder, **kwargs)
            if device_map is None and not choice.device.startswith("cuda"):
                model = model.to(choice.device)
        except (MemoryError, torch.OutOfMemoryError) as exc:
            raise NotEnoughMemoryError(
                f"ran out of memory loading {self.name} on {choice.device} in {choice.dtype_name}; free memory, "
                f"load it with dtype='bfloat16' or 'float16', or use the embedded model phi3lab.load({DEFAULT_MODEL!r})"
            ) from exc
        except (OSError, RuntimeError, ValueError) as exc:
            raise self.error("", f"the weights could not be loaded ({_reason(exc)})") from exc
        problems = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
        if problems:
            kind, keys = next(iter(problems.items()))
            raise self.error(
                "",
                f"the weights do not match config.json ({kind.replace('_', ' ')}: {', '.join(map(str, keys[:3]))})",
                "use the config.json that came with these weights, or " + self.fix(),
            )
        return model

    def processor(self, spec: ModelSpec, config):
        try:
            processor = _load_processor(self.folder, spec)
        except Exception as exc:  # tokenizers' own exceptions are bare Exception
            files = "tokenizer.json / tokenizer_config.json"
            if spec.modality == "vision":
                files += " / preprocessor_config.json"
            raise self.error(
                "",
                f"the tokenizer{' or image processor' if spec.modality == 'vision' else ''} could "
                f"not be built from {files} ({_reason(exc)})",
            ) from exc
        tokenizer = getattr(processor, "tokenizer", processor)
        vocab = getattr(config, "vocab_size", None)
        top = max(tokenizer.get_vocab().values(), default=-1)
        if vocab and top >= vocab:
            raise self.error(
                "tokenizer.json",
                f"has token ids up to {top} but the model embeds only {vocab} "
                "(config.json vocab_size): the tokenizer is from another model",
                "use the tokenizer files that came with the checkpoint, or " + self.fix(),
            )
        return processor


_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def plan_device_map(
    config, dtype: torch.dtype = torch.bfloat16, *, strategy: str = "auto", max_memory: dict | None = None
) -> dict[str, int | str]:
    """Where each module of the model ``config`` describes goes: module name → GPU index, ``"cpu"`` or ``"disk"``.

    The model is described on the meta device (nothing is allocated) and accelerate fills the GPUs in
    order, then the CPU, never splitting a decoder layer (``_no_split_modules``) or a vision encoder
    layer; the tied embedding and ``lm_head`` are kept together.  ``"auto"``/``"balanced"`` spread the
    layers evenly over the GPUs, ``"sequential"`` fills the first GPU first.

        >>> from transformers import AutoConfig
        >>> config = AutoConfig.from_pretrained(embedded_dir() / "phi3lab-tiny")
        >>> plan = plan_device_map(config, max_memory={0: "2MiB", 1: "2MiB", "cpu": "1GiB"})
        >>> sorted(set(plan.values()), key=str)
        [0, 1]
    """
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory
    from transformers import AutoModelForCausalLM

    if strategy not in _STRATEGIES:
        raise ValueError(
            f"device_map must be one of {_STRATEGIES}, a dict of module name → device, or None; got {strategy!r}"
        )
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    no_split = set(getattr(skeleton, "_no_split_modules", None) or [])
    no_split |= {type(m).__name__ for m in skeleton.modules() if type(m).__name__.endswith("EncoderLayer")}
    if strategy != "sequential":
        max_memory = get_balanced_memory(
            skeleton,
            max_memory=max_memory,
            no_split_module_classes=sorted(no_split),
            dtype=dtype,
            low_zero=strategy == "balanced_low_0",
        )
    skeleton.tie_weights()
    return dict(
        infer_auto_device_map(skeleton, max_memory=max_memory, no_split_module_classes=sorted(no_split), dtype=dtype)
    )


def _reason(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or "no details"
    return f"{type(exc).__name__}: {text if len(text) <= limit else text[: limit - 3] + '...'}"


def _device_memory(device: str) -> int | None:
    """Total memory of ``device`` in bytes (RAM plus swap for the CPU), or None when unknown."""
    import torch

    try:
        if device.startswith("cuda"):
            return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
        if device == "cpu":
            import psutil

            return int(psutil.virtual_memory().total + psutil.swap_memory().total)
    except Exception:  # no psutil, no driver: no estimate, the load itself will tell
        return None
    return None


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
