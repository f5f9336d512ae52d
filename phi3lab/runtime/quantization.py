"""Weight quantization while loading: bitsandbytes NF4/int8 and torchao int8 weight-only.

What runs where (checked with torch 2.13 CPU, transformers 5.23, bitsandbytes 0.50.2, torchao 0.18.0):

==========  ======================================  =============================================
quantize    CUDA                                    CPU
==========  ======================================  =============================================
``int8``    bitsandbytes LLM.int8 (``Linear8bitLt``)  torchao int8 weight-only (``Int8Tensor``
                                                    weights in the same ``nn.Linear``)
``nf4``     bitsandbytes NF4, double quantization,  bitsandbytes NF4 through its CPU backend
            compute in the model's dtype (``Linear4bit``)
==========  ======================================  =============================================

On a CPU with AVX512-BF16, bitsandbytes would repack NF4 weights on the first forward for a kernel that
computes in bfloat16, so results would depend on the CPU; :func:`exact_on_cpu` (applied by ``load``)
keeps the layers computing in the model's dtype on every CPU: the same numbers everywhere, and sites that
add up exactly (``lab.verify()``), at some speed on those CPUs.  Apple MPS has neither.  Only the decoder layers' projections (``qkv_proj``, ``o_proj``,
``gate_up_proj``, ``down_proj``) are quantized; ``lm_head``, the embeddings, the norms and a vision
model's CLIP tower and projector keep the compute dtype.  The weights are quantized while they are
read, one tensor at a time (transformers' quantizers), so the full-precision model never sits in
memory.  The quantized layers keep their names, so hooks on ``model.layers.3.self_attn.qkv_proj``
fire as on the unquantized model and return ordinary tensors; :func:`quantized_modules` lists them.

Outputs differ from the unquantized model's; ``lab.unquantized()`` loads the same checkpoint in
full precision for a comparison.
"""

from __future__ import annotations

import contextlib
import importlib
import logging

import torch

from phi3lab.runtime.memory import QuantizationError

__all__ = [
    "SKIPPED_MODULES",
    "exact_on_cpu",
    "import_backend",
    "quiet_imports",
    "quantization_config",
    "quantized_modules",
    "weight_of",
]

SKIPPED_MODULES = ["lm_head", "model.vision_embed_tokens"]
"""Modules left unquantized (by name): the output head, and a vision model's CLIP tower and projector."""
_NOISY = ("torchao", "torch.utils._pytree", "bitsandbytes")


@contextlib.contextmanager
def quiet_imports():
    """Keep backends' import-time chatter out of the notebook (torchao logs one warning per CUDA kernel
    library it cannot load on a CPU machine; bitsandbytes triggers torch.jit deprecation warnings)."""
    import warnings

    loggers = [logging.getLogger(name) for name in _NOISY]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def import_backend(name: str):
    """Import ``"bitsandbytes"`` or ``"torchao"`` quietly, or raise :class:`QuantizationError` saying why not."""
    with quiet_imports():
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            raise QuantizationError(
                f"{name} is needed for this quantization but does not import ({exc}); "
                f"pip install {name} (or phi3lab[quant]), or load without quantize="
            ) from exc
        except Exception as exc:  # a build for another torch or CUDA
            raise QuantizationError(
                f"{name} is installed but does not import ({type(exc).__name__}: {exc}); reinstall it for this "
                "torch, or load without quantize="
            ) from exc


def quantization_config(quantize: str, backend: str, dtype: torch.dtype):
    """The transformers ``quantization_config`` that quantizes the projections while loading."""
    if backend == "bitsandbytes":
        import_backend("bitsandbytes")
        from transformers import BitsAndBytesConfig

        if quantize == "nf4":
            return BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
                llm_int8_skip_modules=list(SKIPPED_MODULES),
            )
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(SKIPPED_MODULES))
    if backend == "torchao" and quantize == "int8":
        import_backend("torchao")
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        return TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=list(SKIPPED_MODULES))
    raise QuantizationError(f"no way to quantize {quantize!r} with {backend!r}; use 'int8' or 'nf4'")


def exact_on_cpu(model: torch.nn.Module) -> int:
    """Keep bitsandbytes' 4-bit layers of ``model`` off its bfloat16 CPU kernel (see the module's notes);
    returns how many layers were switched.

    Examples:
        >>> exact_on_cpu(torch.nn.Linear(2, 2))
        0
    """
    switched = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


def quantized_modules(model: torch.nn.Module) -> dict[str, str]:
    """Module name → what its weight is stored as, for every quantized module of ``model``.

    Examples:
        >>> quantized_modules(torch.nn.Linear(2, 2))
        {}
    """
    found = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None:
            continue
        kind = type(weight).__name__
        if kind in ("Params4bit", "Int8Params") or (
            kind not in ("Parameter", "Tensor") and isinstance(weight, torch.Tensor) and "int8" in kind.lower()
        ):
            found[name] = f"{type(module).__name__} · {kind}"
        elif isinstance(weight, torch.Tensor) and weight.dtype in (torch.int8, torch.uint8):
            found[name] = f"{type(module).__name__} · {weight.dtype}"
    return found


def weight_of(module: torch.nn.Module) -> torch.Tensor:
    """A linear layer's weight as an ordinary float tensor ``[out, in]``, dequantized where it is quantized.

    ``module.weight`` of a quantized layer is not the matrix: a bitsandbytes 4-bit weight is a packed
    ``[n/2, 1]`` uint8 tensor, an int8 one holds codes and row scales, a torchao weight is a tensor
    subclass.  Code that reads weights (e.g. splitting ``o_proj`` by head) should read them through
    this, which returns exactly what the layer multiplies by: ``F.linear(x, weight_of(m)) == m(x)``
    up to the kernel's rounding.

    Examples:
        >>> layer = torch.nn.Linear(3, 2)
        >>> weight_of(layer) is layer.weight
        True
    """
    weight = module.weight
    kind = type(weight).__name__
    if kind == "Params4bit":
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            # bitsandbytes repacks a 4-bit weight in place for its AVX512-BF16 CPU kernel on the first forward
            # (the codes are then no longer what dequantize_4bit reads, and its inverse re-quantizes the
            # scales): read the matrix back through the layer itself.
            return _probed(module)
        import bitsandbytes

        return bitsandbytes.functional.dequantize_4bit(weight.data, weight.quant_state)
    if kind == "Int8Params":  # LLM.int8: codes with one float scale per row (it also quantizes the input)
        scales = weight.SCB if getattr(weight, "SCB", None) is not None else module.state.SCB
        return weight.data.float() * scales.float()[:, None] / 127.0
    if kind not in ("Parameter", "Tensor") and callable(getattr(weight, "dequantize", None)):
        return weight.dequantize()
    return weight


def _probed(module: torch.nn.Module, chunk: int = 1024) -> torch.Tensor:
    """The ``[out, in]`` matrix a linear layer multiplies by, read by running it on the identity, ``chunk``
    columns at a time (memory bounded by ``chunk × max(in, out)``)."""
    n = module.in_features
    dtype = getattr(module, "compute_dtype", None) or torch.float32
    device = module.weight.device
    parts = []
    with torch.no_grad():
        for start in range(0, n, chunk):
            eye = torch.zeros(min(chunk, n - start), n, dtype=dtype, device=device)
            eye[:, start : start + eye.shape[0]].fill_diagonal_(1)
            out = module(eye)
            if getattr(module, "bias", None) is not None:
                out = out - module.bias.to(out.dtype)
            parts.append(out)
    return torch.cat(parts).T.contiguous()
