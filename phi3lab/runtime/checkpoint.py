"""Checking a checkpoint folder's files against each other before (and while) loading them.

Before anything is built, :class:`CheckpointFiles` checks that every JSON file parses to an object,
``config.json`` describes a Phi-3 (``phi3``) or Phi-3-vision (``phi3_v``) model with sane sizes, the
stop ids lie in the vocabulary, the chat template parses, ``tokenizer.json`` is there, the safetensors
files are whole and hold exactly the tensors, with the shapes, that the config implies, and the
tokenizer fits the embedding.  A problem raises :class:`ModelFilesError` naming the file, what is
wrong and how to get a good copy (git for the embedded models, ``hf download`` for the others).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from phi3lab.errors import Phi3LabError
from phi3lab.runtime.registry import ModelSpec
from phi3lab.runtime.sources import (
    DEFAULT_MODEL,
    _is,  # noqa: PLC2701  one helper for both modules
)

__all__ = ["ModelFilesError", "CheckpointFiles", "load_processor", "short_reason"]


class ModelFilesError(Phi3LabError, ValueError):
    """A model folder's files are damaged, incomplete or do not belong together.

    The message names the file, what is wrong with it and how to get a good copy; ``path`` is
    the file (or folder) at fault.
    """

    def __init__(self, message: str, path: Path | None = None):
        super().__init__(message)
        self.path = path


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


class CheckpointFiles:
    """The checks of one model folder before and while loading; every error names the file and the fix.

    ``shapes`` holds every tensor's shape from the safetensors headers once :meth:`check_weights`
    has run (``None`` for ``*.bin`` weights), which is what the memory plan counts.
    """

    def __repr__(self) -> str:
        return f"CheckpointFiles({self.name!r}, {self.kind}: {self.folder})"

    def __init__(self, folder: Path, name: str, kind: str, revision: str | None):
        self.folder, self.name, self.kind, self.revision = folder, name, kind, revision
        self.json: dict[str, dict] = {}
        self.shapes: dict[str, tuple[int, ...]] | None = None  # from the safetensors headers

    # --- messages ------------------------------------------------------------------------------

    def fix(self) -> str:
        if self.kind == "embedded":
            which = self.folder.name.removeprefix("phi3lab-tiny").removeprefix("-") or "text"
            return (
                f"restore the embedded model's files from git (git checkout -- data/models/{self.folder.name}) "
                f"or rebuild it as its model card there says (`python -m phi3lab.tiny.train {which} …`)"
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
                f"is not a configuration transformers accepts ({short_reason(exc)})",
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
            raise self.error(file, f"{what} [{short_reason(exc)}]") from None

    def _expected_shapes(self, config) -> dict[str, tuple[int, ...]]:
        import torch
        from transformers import AutoModelForCausalLM

        try:
            with torch.device("meta"):  # shapes only: nothing is allocated
                skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        except Exception as exc:
            raise self.error(
                "config.json",
                f"does not describe a model transformers can build ({short_reason(exc)})",
                "restore the checkpoint's own config.json, or " + self.fix(),
            ) from exc
        return {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}

    @property
    def tied(self) -> bool:
        """``lm_head`` shares the embedding matrix (``tie_word_embeddings`` in config.json)."""
        return bool(self.json.get("config.json", {}).get("tie_word_embeddings", False))

    def processor(self, spec: ModelSpec, config):
        try:
            processor = load_processor(self.folder, spec)
        except Exception as exc:  # tokenizers' own exceptions are bare Exception
            files = "tokenizer.json / tokenizer_config.json"
            if spec.modality == "vision":
                files += " / preprocessor_config.json"
            raise self.error(
                "",
                f"the tokenizer{' or image processor' if spec.modality == 'vision' else ''} could "
                f"not be built from {files} ({short_reason(exc)})",
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


def short_reason(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or "no details"
    return f"{type(exc).__name__}: {text if len(text) <= limit else text[: limit - 3] + '...'}"


def load_processor(folder: Path, spec: ModelSpec):
    """The tokenizer (text) or processor (vision), built from ``tokenizer.json`` as-is.

    With ``config.json`` beside it, transformers 5 returns its tokenizers backend, which keeps
    Phi-3's normalizer; loading as ``LlamaTokenizer`` would rebuild the pipeline and change ids.
    """
    if spec.modality == "vision":
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(folder, trust_remote_code=False)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
