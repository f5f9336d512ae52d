"""Edit what flows through a model while it runs: the residual stream and each head's output.

The counterpart of :mod:`phi3lab.inspect.cache` (which only reads): forward hooks on the model's own
modules, installed for the duration of a ``with`` block, nothing global patched, so edits nest
and combine with :func:`phi3lab.inspect.capture.capture` and ``run_with_cache``.

* :func:`edit_residual` — ``fn(layer, hidden) -> hidden | None`` on the residual stream, either
  entering each chosen decoder layer (``where="input"``; layer 0's input is the embeddings),
  between its attention and its MLP (``where="mid"``: after the attention output is added, before
  ``post_attention_layernorm``) or leaving it (``where="output"``).  Directional ablation, steering
  vectors and activation patching of whole positions are one line each.
* :func:`edit_heads` — ``fn(layer, z) -> z | None`` on the per-head attention outputs
  ``z [batch, tokens, heads, head_dim]``, just before ``o_proj`` mixes them: zero-, mean- or
  activation-patch single heads.

Returning ``None`` leaves the tensor as it was, so the same hooks also record.

    >>> import phi3lab, torch
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> inputs = lab.encode("What is 2 plus 3?")
    >>> with edit_heads(lab.model, lambda layer, z: z * 0, layers=[0]), torch.no_grad():
    ...     patched = lab.model(**inputs).logits
    >>> bool((patched != lab.model(**inputs).logits).any())
    True
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from phi3lab.inspect.capture import attention_layers, choose_layers

__all__ = ["edit_residual", "edit_heads", "project_out"]

_WHERE = ("input", "mid", "output")  # the residual-stream sites of edit_residual


def _layers(model) -> list[torch.nn.Module]:
    attention_layers(model)  # checks that this is a Phi-3 decoder and says what to pass otherwise
    return list(getattr(model, "model", model).layers)


class _Edit:
    def __init__(self):
        self.handles: list = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _check(fn) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be a function of (layer, tensor) returning a tensor or None, got {type(fn).__name__}")


class edit_residual(_Edit):  # noqa: N801 - a context manager
    """Apply ``fn(layer, hidden)`` to the residual stream entering or leaving chosen decoder layers.

    Args:
        model: a Phi-3 / Phi-3-vision causal LM (``lab.model``).
        fn: ``(layer, hidden [batch, tokens, hidden]) -> new hidden or None``.
        layers: ``"all"`` (default), an int or a list of ints.
        where: ``"input"`` (before the layer; layer 0's input is the embeddings), ``"mid"`` (between
            the layer's attention and its MLP: what both the MLP and the rest of the residual stream
            see, to float rounding) or ``"output"``.
    """

    def __init__(self, model, fn: Callable, layers="all", where: str = "input"):
        super().__init__()
        _check(fn)
        if where not in _WHERE:
            raise ValueError(f"where must be one of {', '.join(map(repr, _WHERE))}, got {where!r}")
        modules = _layers(model)
        try:
            for i in choose_layers(layers, len(modules)):
                if where == "input":
                    self.handles.append(
                        modules[i].register_forward_pre_hook(functools.partial(self._before, fn, i), with_kwargs=True)
                    )
                elif where == "mid":
                    self._hook_mid(modules[i], fn, i)
                else:
                    self.handles.append(modules[i].register_forward_hook(functools.partial(self._after, fn, i)))
        except BaseException:
            self.__exit__()  # a layer that cannot take the edit: the hooks already placed go too
            raise

    def _hook_mid(self, module, fn, layer: int) -> None:
        """A Phi-3 layer adds ``resid_attn_dropout(attention)`` to the stream that entered its
        ``input_layernorm``: hooks on both see the mid stream as ``entering + attention`` and hand
        back ``fn(mid) − entering``, so the layer's own sum is the edited stream.  The entering stream
        is read at the norm, after any ``where="input"`` edit of the same layer."""
        added, norm = getattr(module, "resid_attn_dropout", None), getattr(module, "input_layernorm", None)
        if not (isinstance(added, torch.nn.Module) and isinstance(norm, torch.nn.Module)):
            raise TypeError(
                f"where='mid' needs a Phi-3 decoder layer (input_layernorm … resid_attn_dropout); "
                f"layer {layer} is a {type(module).__name__}: use where='input' or 'output'"
            )
        entering: list[torch.Tensor] = []

        def keep(module, args):
            entering[:] = [args[0]]

        def edit(module, args, output):
            new = fn(layer, entering[0] + output)
            return None if new is None else new - entering[0]

        self.handles.append(norm.register_forward_pre_hook(keep))
        self.handles.append(added.register_forward_hook(edit))

    @staticmethod
    def _before(fn, layer, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        new = fn(layer, hidden)
        if new is None:
            return None
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    @staticmethod
    def _after(fn, layer, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = fn(layer, hidden)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new


class edit_heads(_Edit):  # noqa: N801 - a context manager
    """Apply ``fn(layer, z)`` to the per-head attention outputs before ``o_proj``.

    Args:
        model: a Phi-3 / Phi-3-vision causal LM.
        fn: ``(layer, z [batch, tokens, heads, head_dim]) -> new z or None``.
        layers: ``"all"`` (default), an int or a list of ints.
    """

    def __init__(self, model, fn: Callable, layers="all"):
        super().__init__()
        _check(fn)
        modules = _layers(model)
        for i in choose_layers(layers, len(modules)):
            attn = modules[i].self_attn
            self.handles.append(
                attn.o_proj.register_forward_pre_hook(functools.partial(self._before, fn, i, attn.head_dim))
            )

    @staticmethod
    def _before(fn, layer, head_dim, module, args):
        flat = args[0]
        z = flat.view(*flat.shape[:-1], -1, head_dim)
        new = fn(layer, z)
        if new is None:
            return None
        if new.shape != z.shape:
            raise ValueError(
                f"edit_heads: fn returned shape {tuple(new.shape)} for layer {layer}; "
                f"it must keep [batch, tokens, heads, head_dim] = {tuple(z.shape)}"
            )
        return (new.reshape(flat.shape), *args[1:])


def project_out(hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``hidden − (hidden · d̂) d̂``: remove the component along ``direction`` (any shape ``[..., hidden]``).

    Examples:
        >>> h = torch.tensor([[3.0, 4.0]])
        >>> project_out(h, torch.tensor([1.0, 0.0]))
        tensor([[0., 4.]])
    """
    unit = direction.to(hidden.dtype) / direction.norm().to(hidden.dtype)
    return hidden - (hidden @ unit)[..., None] * unit
