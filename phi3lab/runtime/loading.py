"""Load a Phi-3-family model on whatever hardware is here, and say what was chosen and why.

``phi3lab.load(source)`` accepts the name of an embedded tiny model (``"tiny"``), a local checkpoint
folder or a Hugging Face hub id (:mod:`phi3lab.runtime.sources`).  It never passes
``trust_remote_code=True``: text models are transformers' native ``phi3``, and Phi-3-vision is
phi3lab's native implementation (registered with the Auto classes on import).

In order, before anything big is allocated:

1. the attention kernel, device and the device's default dtype are chosen from capability probes
   (:func:`~phi3lab.runtime.attention_backend.select_attention`);
2. the source is resolved and the folder's files are checked against each other
   (:class:`~phi3lab.runtime.checkpoint.CheckpointFiles`: JSON, config, template, safetensors shapes);
3. the weights (counted from the safetensors headers) plus the activations of the intended use —
   ``use="chat"`` at ``context`` tokens, ``"capture"``, or a ``"sweep"`` of ``batch`` — are compared
   with the device's *available* memory, which picks the dtype (float32 → bfloat16 on a CPU where
   float32 does not fit) and, with ``quantize="auto"``/``"int8"``/``"nf4"``, weight quantization
   (:func:`~phi3lab.runtime.memory.plan_memory`); an impossible request raises
   :class:`~phi3lab.runtime.memory.NotEnoughMemoryError` with the numbers of every option;
4. the model is built (quantized while it is read: :mod:`phi3lab.runtime.quantization`) and the
   tokenizer or processor is checked against the embedding.

The :class:`~phi3lab.runtime.lab.Lab` it returns carries both choices with their reasons
(``lab.attention``, ``lab.memory``), printed by ``lab.info()``.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings

import torch

from phi3lab.runtime.attention_backend import AttentionChoice, parse_dtype, select_attention
from phi3lab.runtime.checkpoint import CheckpointFiles, ModelFilesError, short_reason
from phi3lab.runtime.device_map import plan_device_map
from phi3lab.runtime.hardware import DeviceMemory, probe
from phi3lab.runtime.lab import Lab
from phi3lab.runtime.memory import (
    QUANTIZATIONS,
    MemoryPlan,
    NotEnoughMemoryError,
    QuantizationError,
    Usage,
    Weights,
    plan_memory,
)
from phi3lab.runtime.quantization import exact_on_cpu, quantization_config, quiet_imports
from phi3lab.runtime.registry import ORIGINAL_CONTEXT, Architecture, ModelSpec, UnverifiedModelWarning, spec_from_folder
from phi3lab.runtime.sources import DEFAULT_MODEL, ModelNotAvailableError, ModelNotFoundError, resolve
from phi3lab.validation import check_bool

__all__ = [
    "load",
    "resolve",
    "ModelNotFoundError",
    "ModelNotAvailableError",
    "ModelFilesError",
    "NotEnoughMemoryError",
    "QuantizationError",
    "UnverifiedModelWarning",
    "DEFAULT_MODEL",
    "plan_device_map",
]


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
    quantize: str | None = None,
    use: str = "chat",
    context: int | None = None,
    batch: int = 1,
) -> Lab:
    """Load a model and its tokenizer or processor with a hardware- and memory-aware choice.

    Args:
        source: ``"tiny"`` (the default embedded model), a local folder or a hub id.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"``.
        dtype: ``"auto"`` (the device's default — float32 on a CPU, bfloat16 or float16 on a GPU — or,
            on a CPU where float32 does not fit, bfloat16) or ``"float32"``/``"float16"``/``"bfloat16"``.
        attn: ``"auto"`` or ``"flash_attention_2"``/``"sdpa"``/``"eager"``.
        revision: hub revision (branch, tag or commit) to pin; the chat template differs
            between Phi-3-mini revisions.
        need_weights: the model will be run with ``output_attentions=True`` (forces eager, and the
            memory plan counts the maps).
        verbose: print what was loaded, the attention choice and the memory plan.
        device_map: ``"auto"`` (or ``"balanced"``, ``"sequential"``) spreads a real checkpoint over every
            GPU, then the CPU, whole decoder layers at a time (accelerate; see :func:`plan_device_map`);
            a dict of module name → device is used as it is.  ``None`` (the default) puts the whole
            model on ``device``, after checking that it fits there.
        max_memory: with ``device_map``, the memory each device may take, e.g. ``{0: "20GiB", 1: "20GiB",
            "cpu": "64GiB"}`` (default: what accelerate measures).
        quantize: ``None`` (full weights, the default: outputs as published), ``"auto"`` (quantize the
            decoder's projections only when no dtype fits), ``"int8"`` or ``"nf4"`` (always); see
            :mod:`phi3lab.runtime.quantization` for the backend per device.
        use: what the memory plan provisions for: ``"chat"`` (generation with a KV cache),
            ``"capture"`` (one forward keeping the residual stream and every position's logits) or
            ``"sweep"`` (``batch`` conversations at once).
        context: tokens per sequence to provision for (default the model's context, at most 4,096).
        batch: sequences at once (for ``use="sweep"``).

    Returns:
        A :class:`~phi3lab.runtime.lab.Lab` with ``.model``, ``.processor``, ``.attention``, ``.memory``,
        ``.spec`` and ``.info()``.

    Raises:
        NotEnoughMemoryError: no allowed dtype or quantization fits the available memory (before loading).
        QuantizationError: a ``quantize`` value that does not exist or cannot run on this device.
        AttentionRequestError: a device, dtype or kernel this machine cannot run.
        ModelNotFoundError, ModelNotAvailableError, ModelFilesError: the files (see their messages).

    Examples:
        >>> lab = load("tiny", verbose=False)
        >>> lab.attention.impl in ("sdpa", "flash_attention_2"), lab.memory.quantize
        (True, None)
    """
    import phi3lab.models  # noqa: F401  registers phi3_v with the Auto classes

    with quiet_imports():  # transformers imports torchao where it is installed; its CUDA-library warnings are noise
        import transformers.modeling_utils  # noqa: F401

    need_weights = check_bool("need_weights", need_weights)
    verbose = check_bool("verbose", verbose)
    if quantize is not None and quantize not in ("auto", *QUANTIZATIONS):
        raise QuantizationError(
            f"quantize must be None (no quantization), 'auto' (only when nothing else fits), 'int8' or 'nf4'; "
            f"got {quantize!r}"
        )
    Usage(use, context if context is not None else 1, batch)  # a bad use, context or batch fails here
    started = time.perf_counter()
    probes = probe()
    first: AttentionChoice = select_attention(device, dtype, need_weights, attn=attn, probes=probes)
    folder, name, kind = resolve(source, revision)
    files = CheckpointFiles(folder, name, kind, revision)
    files.check_json()
    spec: ModelSpec = spec_from_folder(folder, name, embedded=kind == "embedded")
    config = files.config()
    files.check_weights(config)
    usage = _usage(spec, files, use, context, batch, need_weights)
    arch = Architecture.from_config(config)
    weights = Weights.from_shapes(files.shapes, files.tied) if files.shapes else None
    plan = plan_memory(
        arch,
        device=first.device,
        dtype=parse_dtype(dtype),
        default_dtype=first.dtype,
        quantize=quantize,
        usage=usage,
        weights=weights,
        probes=probes,
        # a device map spreads the model instead of fitting it in one device: nothing to check here
        memory=DeviceMemory(first.device, None, None) if device_map is not None else None,
        name=name,
    )
    choice = first
    if plan.dtype != first.dtype:
        choice = select_attention(first.device, plan.dtype, need_weights, attn=attn, probes=probes)
    if device_map is not None and not isinstance(device_map, dict):
        device_map = plan_device_map(config, choice.dtype, strategy=device_map, max_memory=max_memory)
    if verbose and kind != "embedded":
        print(f"phi3lab: loading {name} from {folder} to {choice.device} as {plan.weights_name} ({choice.impl})…")
    with _quiet_progress(kind == "embedded"):  # a bar for a 5 MB model is noise; keep it for real ones
        model = _build(files, config, choice, plan, device_map)
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
        memory=plan,
    )
    lab.guard_output_attentions()  # output_attentions=True is checked against free memory first
    if spec.unverified:
        warnings.warn(f"{name}: {spec.unverified}", UnverifiedModelWarning, stacklevel=2)
    if verbose:
        print(f"phi3lab: {name} · {choice.summary()}")
        print(f"phi3lab: memory · {plan.summary()}")
    return lab


def _usage(spec: ModelSpec, files: CheckpointFiles, use: str, context, batch: int, need_weights: bool) -> Usage:
    """The :class:`Usage` to plan for: the model's context up to 4,096 tokens, one image for vision chat."""
    if context is None:
        context = min(spec.context_length, ORIGINAL_CONTEXT)
    images, crops = 0, 16
    if spec.modality == "vision":
        crops = int(files.json.get("preprocessor_config.json", {}).get("num_crops") or 1)
        images = 1
    return Usage(use, context, batch, images=images, num_crops=crops, need_weights=need_weights)


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


def _build(files: CheckpointFiles, config, choice: AttentionChoice, plan: MemoryPlan, device_map: dict | None):
    """The model, built from the folder with the chosen kernel, dtype and quantization."""
    from transformers import AutoModelForCausalLM

    kwargs = dict(
        config=config,
        dtype=choice.dtype,
        attn_implementation=choice.impl,
        trust_remote_code=False,
        output_loading_info=True,
    )
    if plan.quantize is not None:
        kwargs["quantization_config"] = quantization_config(plan.quantize, plan.backend, choice.dtype)
        quiet = quiet_imports()
    else:
        quiet = contextlib.nullcontext()
    if device_map is not None:
        kwargs["device_map"] = device_map
    elif choice.device.startswith("cuda") or plan.quantize is not None:
        kwargs["device_map"] = {"": choice.device}  # quantized weights are placed while they are read
    try:
        with quiet:
            model, info = AutoModelForCausalLM.from_pretrained(files.folder, **kwargs)
        if "device_map" not in kwargs and not choice.device.startswith("cuda"):
            model = model.to(choice.device)
    except (MemoryError, torch.OutOfMemoryError) as exc:
        raise NotEnoughMemoryError(
            f"ran out of memory loading {files.name} on {choice.device} as {plan.weights_name}, although the plan "
            f"estimated {plan.estimate.total / 2**30:.1f} GiB ({plan.reason}); free memory, allow quantization "
            f"(quantize='auto'), or use the embedded model phi3lab.load({DEFAULT_MODEL!r})"
        ) from exc
    except (OSError, RuntimeError, ValueError) as exc:
        raise files.error("", f"the weights could not be loaded ({short_reason(exc)})") from exc
    if plan.quantize is not None:
        exact_on_cpu(model)
    problems = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if problems:
        kind, keys = next(iter(problems.items()))
        raise files.error(
            "",
            f"the weights do not match config.json ({kind.replace('_', ' ')}: {', '.join(map(str, keys[:3]))})",
            "use the config.json that came with these weights, or " + files.fix(),
        )
    return model
