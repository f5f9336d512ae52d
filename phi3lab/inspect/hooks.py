"""One owner of every hook phi3lab puts on a model: read or edit any named site while the model runs.

    >>> import phi3lab, torch
    >>> lab = phi3lab.load("tiny", verbose=False)
    >>> inputs = lab.encode("What is 2 plus 3?")
    >>> with Hooks(lab.model) as hooks, torch.no_grad():
    ...     _ = hooks.read("resid_post", layers=[1, 3]).read("pattern", layers=0, positions="last")
    ...     _ = hooks.edit("z", lambda z, at: z * 0, layers=2, heads=[1])  # silence head 2.1
    ...     _ = lab.model(**inputs)
    >>> hooks["resid_post", 3].shape[1] == inputs.num_tokens, hooks["pattern", 0].shape[:3]
    (True, torch.Size([1, 4, 1]))

The sites and their shapes are listed in :mod:`phi3lab.inspect.sites`.  A :class:`Hooks` block

* puts torch hooks on the model's own modules for the block only and removes every one of them on
  exit or error — nothing global is patched (no attention registry, no monkey-patched forward);
* nests: at one site, hooks run in the order they were added (an outer block's first), so an edit
  added earlier is what a later read sees;
* belongs to the thread that opened it: forwards run by other threads on the same model (a chat
  widget answering in the background, another ``run_with_cache``) pass through untouched and never
  mix into its records;
* counts the bytes of every read before storing it, against ``max_bytes`` (default a quarter of the
  free memory), and refuses with advice above it (:class:`~phi3lab.inspect.memory.MemoryLimitError`).

Reads keep float32 copies on the CPU by default (``keep="cpu"``); ``keep="device"`` keeps detached
copies where the model runs and ``keep="graph"`` the tensors themselves (for a training loss).
An edit is ``fn(value, at) -> new value or None`` (``None``: leave it; in-place changes stay), called
with the selected positions and heads only; :class:`~phi3lab.inspect.sites.At` says where.  Across
``generate`` each forward (the prefill, then one per new token) is seen in turn; a read's records are
joined along the positions axis.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable

import torch

from phi3lab.errors import Phi3LabError
from phi3lab.inspect.kernel import (
    attention_rows,
    cache_length,
    decoder_layers,
    kernel_keys,
    language_model,
    split_heads,
    unrotate,
)
from phi3lab.inspect.memory import check_max_bytes, check_memory, memory_limit, size_text
from phi3lab.inspect.sites import At, Positions, check_site, choose_heads, choose_layers

__all__ = ["Hooks", "Record", "NothingRecordedError", "as_model", "guard_output_attentions", "output_attentions_bytes"]

KEEP = ("cpu", "device", "graph")


class NothingRecordedError(Phi3LabError, KeyError):
    """A site was asked for that the block did not read, or that no forward reached."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Record:
    """What one read kept from one forward: its step, the rows' absolute positions, the value."""

    step: int
    positions: torch.Tensor
    value: torch.Tensor


@dataclasses.dataclass
class _Read:
    site: str
    layers: list[int | None]
    heads: list[int] | None
    positions: Positions
    fn: Callable | None  # None: a read
    keep: str = "cpu"


@dataclasses.dataclass
class _Call:
    step: int
    seen: int
    length: int


def _pictures(value) -> list[int]:
    items = [value] if isinstance(value, int) else list(value) if isinstance(value, (list, tuple, range)) else None
    if not items or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in items):
        raise TypeError(f"image_embeds takes 'all' or picture numbers (ints ≥ 0, in prompt order), got {value!r}")
    return sorted(set(items))


def as_model(model) -> torch.nn.Module:
    """The torch model of a :class:`~phi3lab.runtime.lab.Lab`, or the model itself."""
    inner = getattr(model, "model", None)
    if not isinstance(model, torch.nn.Module) and isinstance(inner, torch.nn.Module) and hasattr(model, "processor"):
        return inner
    language_model(model)  # checks it is a Phi-3 and says what to pass otherwise
    return model


def _pre_hook(module: torch.nn.Module, fn) -> torch.utils.hooks.RemovableHandle:
    """Register ``fn(module, args, kwargs)`` as a forward pre-hook.

    torch stores a hook and its ``with_kwargs`` flag in two steps, and removes them in two: a forward running
    in another thread at that moment calls the hook without ``kwargs`` (a widget answering in the background
    while a block opens or closes).  Such a call comes only while the hook is being added or removed — never
    a block's own forward, which runs in the thread that registers and removes its hooks — so it is skipped."""

    def hook(mod, args, kwargs=None):
        return None if kwargs is None else fn(mod, args, kwargs)

    return module.register_forward_pre_hook(hook, with_kwargs=True)


class Hooks:
    """Read and edit named sites of one model for the duration of a ``with`` block.

    Args:
        model: a Phi-3 or Phi-3-vision causal LM (``lab.model``), or the :class:`~phi3lab.runtime.lab.Lab`.
        max_bytes: bytes all reads together may keep (default: a quarter of the free memory).

    ``read`` and ``edit`` may be called before the block or inside it; each returns the block.
    """

    def __init__(self, model, *, max_bytes: int | None = None):
        self.model = as_model(model)
        self._layers = decoder_layers(self.model)
        config = self.model.config
        self.num_layers = len(self._layers)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        limit = check_max_bytes(max_bytes)
        device = next(self.model.parameters()).device
        self.max_bytes = limit if limit is not None else memory_limit(device)
        self.nbytes = 0
        self._wanted: list[_Read] = []
        self._handles: list = []
        self._records: dict[tuple[str, int | None], list[Record]] = {}
        self._local = threading.local()
        self._owner: int | None = None
        self._step = -1
        self._prompt: int | None = None
        self._open = False

    # --- asking -------------------------------------------------------------------------------------------

    def read(self, site: str, layers="all", *, heads=None, positions="all", keep: str = "cpu") -> Hooks:
        """Keep ``site``'s values at ``layers`` (``"all"``, an int, a list), ``heads`` and ``positions``."""
        if keep not in KEEP:
            raise ValueError(f"keep={keep!r} is not a choice; use one of {', '.join(map(repr, KEEP))}")
        return self._add(site, layers, heads, positions, None, keep)

    def edit(self, site: str, fn: Callable, layers="all", *, heads=None, positions="all") -> Hooks:
        """Replace ``site``'s values by ``fn(value, at)`` (``None`` from ``fn`` leaves them) while the model runs."""
        if not callable(fn):
            raise TypeError(f"fn must be a function of (value, at) returning a tensor or None, got {type(fn).__name__}")
        if not check_site(site).editable:
            raise ValueError(
                f"{site!r} can be read but not edited: the attention kernel computes it internally; edit 'q' or "
                "'k' (which decide it) or 'z' (what the heads output) instead"
            )
        return self._add(site, layers, heads, positions, fn, "cpu")

    def _add(self, site, layers, heads, positions, fn, keep) -> Hooks:
        info = check_site(site)
        if info.vision and self._vision() is None:
            raise ValueError(f"{site!r} is a Phi-3-vision site, but this model has no vision tower")
        if not info.per_layer:
            if not (isinstance(layers, str) and layers == "all") and layers is not None:
                raise ValueError(f"{site!r} has no layers; leave layers out (hooks.read({site!r}))")
            chosen: list[int | None] = [None]
        elif site == "image_embeds":  # the "layers" of image_embeds are the pictures, in prompt order
            chosen = [None] if isinstance(layers, str) and layers == "all" else _pictures(layers)
        elif site == "clip":
            chosen = choose_layers(layers, len(self._clip_layers()))
        else:
            chosen = choose_layers(layers, self.num_layers)
        if heads is not None and not info.heads:
            raise ValueError(f"{site!r} has no heads axis; heads= applies to q, k, v, z and pattern")
        count = self.num_kv_heads if info.heads == "kv" else self.num_heads
        chosen_heads = choose_heads(heads, count) if info.heads else None
        where = positions if isinstance(positions, Positions) else Positions(positions)
        if info.vision and not where.everything:
            raise ValueError(f"{site!r} is read whole (every image token or patch); leave positions out")
        wanted = _Read(site, chosen, chosen_heads, where, fn, keep)
        self._wanted.append(wanted)
        if self._open:
            self._install(wanted)
        return self

    # --- the block ----------------------------------------------------------------------------------------

    def __enter__(self) -> Hooks:
        if self._open:
            raise RuntimeError("this Hooks block is already open; make a new Hooks(model) to nest another")
        self._owner = threading.get_ident()
        self._open = True
        try:
            self._handles.append(_pre_hook(self._layers[0], self._track))
            for wanted in self._wanted:
                self._install(wanted)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._open = False

    def close(self) -> None:
        """Remove every hook now (as leaving the block does)."""
        self.__exit__(None, None, None)

    def clear(self) -> None:
        """Forget what was recorded (the hooks stay), e.g. between training steps."""
        self._records.clear()
        self.nbytes = 0
        self._step, self._prompt = -1, None

    # --- reading back -------------------------------------------------------------------------------------

    def calls(self, site: str, layer: int | None = None) -> list[Record]:
        """The records of ``site`` (at ``layer``), one per forward that reached it."""
        key = self._key(site, layer)
        records = self._records.get(key)
        if not records:
            asked = [(w.site, w.layers) for w in self._wanted if w.fn is None]
            raise NothingRecordedError(
                f"nothing was recorded for {site!r}"
                + (f" at layer {layer}" if layer is not None else "")
                + f"; this block reads {asked or 'nothing'}. Read it (hooks.read({site!r}, ...)) and run the model "
                "inside the block, in the thread that opened it"
            )
        return records

    def __getitem__(self, key) -> torch.Tensor:
        site, layer = (key, None) if isinstance(key, str) else key
        records = self.calls(site, layer)
        if site in ("image_embeds", "clip"):
            values = [r.value for r in records]
            return values[0] if len(values) == 1 else torch.cat(values)
        axis = 2 if site == "pattern" else 1
        values = [r.value for r in records]
        batches = {v.shape[0] for v in values}
        if len(batches) > 1:
            raise ValueError(
                f"{site!r} was recorded from forwards of different batch sizes {sorted(batches)}; read them one "
                f"forward at a time with hooks.calls({site!r}, {layer})"
            )
        if len(values) == 1:
            return values[0]  # the record itself: no copy
        if site == "pattern":
            keys = max(v.shape[-1] for v in values)
            values = [v if v.shape[-1] == keys else torch.nn.functional.pad(v, (0, keys - v.shape[-1])) for v in values]
        return torch.cat(values, dim=axis)

    def positions(self, site: str, layer: int | None = None) -> torch.Tensor:
        """``[rows]``: the absolute position of each recorded row of ``site`` (at ``layer``)."""
        return torch.cat([r.positions for r in self.calls(site, layer)])

    def recorded(self) -> list[tuple[str, int | None]]:
        """The ``(site, layer)`` pairs that hold records."""
        return sorted(self._records, key=lambda k: (k[0], -1 if k[1] is None else k[1]))

    def _key(self, site: str, layer) -> tuple[str, int | None]:
        info = check_site(site)
        if not info.per_layer:
            if layer is not None:
                raise TypeError(f"{site!r} has no layers: ask for hooks[{site!r}]")
            return site, None
        what = "picture" if site == "image_embeds" else "layer"
        if layer is None:
            raise TypeError(f"{site!r} is per {what}: ask for hooks[{site!r}, {what}]")
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"{what} must be an int, got {type(layer).__name__}")
        if site == "image_embeds":
            if layer < 0:
                raise IndexError(f"picture {layer} does not exist; pictures are numbered 0, 1, … in prompt order")
            return site, layer
        n = len(self._clip_layers()) if site == "clip" else self.num_layers
        if not -n <= layer < n:
            raise IndexError(f"layer {layer} does not exist; the model has layers 0..{n - 1}")
        return site, layer % n

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return (
            f"Hooks({len(self._wanted)} read/edit(s), {len(self._records)} recorded, {size_text(self.nbytes)}, {state})"
        )

    # --- installing ---------------------------------------------------------------------------------------

    def _vision(self):
        return getattr(language_model(self.model), "vision_embed_tokens", None)

    def _clip_layers(self) -> list[torch.nn.Module]:
        """The CLIP layers that run: Phi-3-vision reads a layer near the top (the second-to-last by default),
        so the layers above it never run and have nothing to read."""
        vision = self._vision()
        if vision is None:
            raise ValueError("'clip' is a Phi-3-vision site, but this model has no vision tower")
        layers = list(vision.img_processor.vision_model.encoder.layers)
        read = getattr(vision, "layer_idx", -1)
        return layers[: len(layers) + 1 + read if read < 0 else read]

    def _hook(self, module, fn, *, pre: bool) -> None:
        if pre:
            self._handles.append(_pre_hook(module, fn))
        else:
            self._handles.append(module.register_forward_hook(fn))

    def _install(self, w: _Read) -> None:
        layers = self._layers
        for layer in w.layers:
            site = w.site
            if site in ("embed", "resid_pre"):
                self._hook(layers[0 if site == "embed" else layer], functools.partial(self._input, w, layer), pre=True)
            elif site in ("attn_out", "mlp_out", "resid_post"):
                module = {"attn_out": "self_attn", "mlp_out": "mlp"}.get(site)
                target = getattr(layers[layer], module) if module else layers[layer]
                self._hook(target, functools.partial(self._output, w, layer), pre=False)
            elif site == "resid_mid":
                self._install_mid(w, layer)
            elif site == "z":
                self._hook(layers[layer].self_attn.o_proj, functools.partial(self._heads_in, w, layer), pre=True)
            elif site in ("q", "k", "v", "pattern"):
                attn = layers[layer].self_attn
                self._hook(attn, functools.partial(self._attn_call, layer), pre=True)
                self._hook(attn.qkv_proj, functools.partial(self._qkv, w, layer), pre=False)
            elif site == "logits":
                self._hook(self.model.get_output_embeddings(), functools.partial(self._output, w, None), pre=False)
            elif site == "image_embeds":
                self._hook(self._vision(), functools.partial(self._images, w), pre=False)
            elif site == "clip":
                self._hook(self._clip_layers()[layer], functools.partial(self._whole, w, layer), pre=False)

    def _install_mid(self, w: _Read, layer: int) -> None:
        block = self._layers[layer]
        if w.fn is None:  # a read: what the MLP's norm receives
            self._hook(block.post_attention_layernorm, functools.partial(self._input, w, layer), pre=True)
            return
        added, norm = getattr(block, "resid_attn_dropout", None), getattr(block, "input_layernorm", None)
        if not (isinstance(added, torch.nn.Module) and isinstance(norm, torch.nn.Module)):
            raise TypeError(
                f"editing 'resid_mid' needs a Phi-3 decoder layer (input_layernorm … resid_attn_dropout); layer "
                f"{layer} is a {type(block).__name__}: edit 'resid_pre' or 'resid_post' instead"
            )
        # the layer adds resid_attn_dropout(attention) to the stream that entered input_layernorm: hand back
        # fn(entering + attention) − entering, so the layer's own sum is the edited stream
        entering = threading.local()

        def keep(module, args, kwargs):
            if self._mine():
                entering.value = args[0] if args else kwargs["hidden_states"]

        def edit(module, args, output):
            if not self._mine():
                return None
            before = entering.value
            new = self._visit(w, layer, before + output, axis=1)
            return None if new is None else new - before

        self._hook(norm, keep, pre=True)
        self._hook(added, edit, pre=False)

    # --- the hooks themselves -----------------------------------------------------------------------------

    def _mine(self) -> bool:
        return threading.get_ident() == self._owner

    def _track(self, module, args, kwargs):
        """Layer 0's pre-hook: one forward begins (its step, the tokens already cached, its length)."""
        if not self._mine():
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        seen = cache_length(kwargs.get("past_key_values"))
        self._step += 1
        length = int(hidden.shape[1])
        if seen == 0 or self._prompt is None:  # a fresh sequence: its length is what negatives count from
            self._prompt = seen + length
        self._local.call = _Call(self._step, seen, length)
        return None

    def _call(self) -> _Call:
        call = getattr(self._local, "call", None)
        if call is None:
            raise RuntimeError("a hooked module ran before the decoder's first layer; run the whole model")
        return call

    def _input(self, w, layer, module, args, kwargs):
        if not self._mine():
            return None
        value = args[0] if args else kwargs["hidden_states"]
        new = self._visit(w, layer, value, axis=1)
        if new is None:
            return None
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    def _output(self, w, layer, module, args, output):
        if not self._mine():
            return None
        value = output[0] if isinstance(output, tuple) else output
        new = self._visit(w, layer, value, axis=1)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def _heads_in(self, w, layer, module, args, kwargs):
        if not self._mine():
            return None
        flat = args[0]
        head_dim = self._layers[layer].self_attn.head_dim
        z = flat.view(*flat.shape[:-1], -1, head_dim)
        new = self._visit(w, layer, z, axis=1, head_axis=2)
        if new is None:
            return None
        return (new.reshape(flat.shape), *args[1:]), kwargs

    def _attn_call(self, layer, module, args, kwargs):
        if self._mine():
            # what the q/k/v and pattern reads need, not the layer's input (held until the next forward otherwise)
            self._local.__dict__[("attn", layer)] = {
                k: kwargs.get(k) for k in ("position_embeddings", "attention_mask", "past_key_values")
            }
        return None

    def _qkv(self, w, layer, proj, args, qkv):
        if not self._mine():
            return None
        kwargs = self._local.__dict__.get(("attn", layer))
        if kwargs is None:
            return None
        attn = self._layers[layer].self_attn
        cos, sin = kwargs["position_embeddings"]
        grad = w.fn is not None or w.keep == "graph"  # edits and graph reads stay differentiable
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            query, key, value = split_heads(attn, qkv, (cos, sin))
            if w.site == "pattern":
                self._pattern(w, layer, attn, query, key, kwargs)
                return None
            tensor = {"q": query, "k": key, "v": value}[w.site]
            new = self._visit(w, layer, tensor.transpose(1, 2), axis=1, head_axis=2)
        if new is None:
            return None
        new = new.transpose(1, 2)
        if w.site != "v":
            new = unrotate(new, cos, sin)
        q_dim = attn.config.num_attention_heads * attn.head_dim
        kv_dim = attn.num_key_value_heads * attn.head_dim
        start = {"q": 0, "k": q_dim, "v": q_dim + kv_dim}[w.site]
        flat = new.transpose(1, 2).reshape(*qkv.shape[:-1], -1).to(qkv.dtype)
        out = qkv.clone()
        out[..., start : start + flat.shape[-1]] = flat
        return out

    def _pattern(self, w, layer, attn, query, key, kwargs) -> None:
        call = self._call()
        rows = self._rows(w, call, query.shape[2]).to(query.device)
        if not rows.numel():
            return
        keys = kernel_keys(kwargs.get("past_key_values"), attn.layer_idx, key)
        n_heads = len(w.heads) if w.heads is not None else query.shape[1]
        self._reserve(4 * query.shape[0] * n_heads * len(rows) * (keys.seen + query.shape[2]), w)
        weights = attention_rows(
            query,
            keys,
            kwargs.get("attention_mask"),
            attn.scaling,
            attn.num_key_value_groups,
            rows,
            w.heads,
            getattr(attn.config, "sliding_window", None),
        )
        self._store(w, layer, call, call.seen + rows.cpu(), weights, counted=True, owned=True)

    def _images(self, w, module, args, output):
        if not self._mine():
            return None
        changed = list(output)
        edited = False
        for index, tensor in enumerate(output):
            if w.layers != [None] and index not in w.layers:
                continue
            new = self._whole_visit(w, index, tensor)
            if new is not None:
                changed[index], edited = new, True
        return changed if edited else None

    def _whole(self, w, layer, module, args, output):
        if not self._mine():
            return None
        value = output[0] if isinstance(output, tuple) else output
        new = self._whole_visit(w, layer, value)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def _whole_visit(self, w, layer, value):
        """A site read or edited whole (a picture's tokens, a CLIP layer's output)."""
        step = self._step + 1  # the vision tower runs before the forward reaches the decoder
        positions = torch.arange(value.shape[0])
        if w.fn is None:
            self._store(w, layer, _Call(step, 0, value.shape[0]), positions, value)
            return None
        new = w.fn(value, At(w.site, layer, step, positions))
        return None if new is None else self._checked(w, layer, value, new)

    # --- selecting, storing, editing ----------------------------------------------------------------------

    def _rows(self, w: _Read, call: _Call, length: int) -> torch.Tensor:
        seen = call.seen + call.length - length  # logits may cover only the last positions of a forward
        return w.positions.rows(seen=seen, length=length, prompt=self._prompt or length)

    def _visit(self, w: _Read, layer, value: torch.Tensor, *, axis: int, head_axis: int | None = None):
        """Read or edit the selected rows (and heads) of ``value``; returns the new full value or ``None``."""
        call = self._call()
        length = value.shape[axis]
        rows = None if w.positions.everything else self._rows(w, call, length)
        if rows is not None and not rows.numel():
            return None
        first = call.seen + call.length - length
        absolute = (torch.arange(length) if rows is None else rows) + first
        selected = value if rows is None else value.index_select(axis, rows.to(value.device))
        if w.heads is not None:
            selected = selected.index_select(head_axis, torch.as_tensor(w.heads, device=value.device))
        if w.fn is None:
            # q and k are rotated here by the hook core, and index_select copies: nothing else holds them
            owned = selected is not value or w.site in ("q", "k")
            self._store(w, layer, call, absolute, selected, owned=owned)
            return None
        heads = tuple(w.heads) if w.heads is not None else None
        new = w.fn(selected, At(w.site, layer, call.step, absolute, heads))
        if new is None:
            if rows is None and w.heads is None:
                return None  # the value itself was handed over: in-place changes already stand
            new = selected
        new = self._checked(w, layer, selected, new)
        if rows is None and w.heads is None:
            return new
        out = value.clone()
        if w.heads is None:
            out.index_copy_(axis, rows.to(value.device), new)
        elif rows is None:
            out.index_copy_(head_axis, torch.as_tensor(w.heads, device=value.device), new)
        else:
            picked = out.index_select(axis, rows.to(value.device))
            picked.index_copy_(head_axis, torch.as_tensor(w.heads, device=value.device), new)
            out.index_copy_(axis, rows.to(value.device), picked)
        return out

    def _checked(self, w, layer, value, new):
        if not isinstance(new, torch.Tensor):
            raise TypeError(
                f"the edit of {w.site!r} (layer {layer}) returned a {type(new).__name__}; return a tensor of the "
                "shape it was given, or None to leave the value as it is"
            )
        if new.shape != value.shape:
            raise ValueError(
                f"the edit of {w.site!r} (layer {layer}) returned shape {tuple(new.shape)}; it must keep the shape "
                f"it was given, {tuple(value.shape)}"
            )
        return new.to(value.dtype)

    def _reserve(self, nbytes: int, w: _Read) -> None:
        check_memory(
            self.nbytes + nbytes,
            self.max_bytes,
            f"reading {w.site!r}",
            "read fewer sites, layers, heads or positions (e.g. positions='last'), or raise max_bytes= if you "
            "know the memory is there",
        )
        self.nbytes += nbytes

    def _store(
        self, w, layer, call: _Call, positions: torch.Tensor, value: torch.Tensor, counted=False, owned=False
    ) -> None:
        """Keep ``value``; ``owned``: the hook core made it (nothing else holds it), so a CPU float32 one is
        kept as it is rather than copied (a layer's attention rows at 2k tokens are 512 MiB)."""
        if w.keep == "graph":
            kept = value
        elif w.keep == "device":
            kept = value.detach() if owned else value.detach().clone()
        elif owned and value.device.type == "cpu" and value.dtype == torch.float32:
            kept = value.detach()
        else:
            kept = value.detach().to("cpu", torch.float32, copy=True)
        if not counted:
            self._reserve(kept.numel() * kept.element_size(), w)
        self._records.setdefault((w.site, layer), []).append(Record(call.step, positions.cpu(), kept))


def output_attentions_bytes(model, seq_len: int, batch: int = 1) -> int:
    """Bytes that ``output_attentions=True`` stores for a forward of ``seq_len`` tokens (fp32)."""
    config = model.config
    return 4 * batch * config.num_hidden_layers * config.num_attention_heads * seq_len * seq_len


def guard_output_attentions(model, max_bytes: int | None = None):
    """Refuse ``output_attentions=True`` calls whose maps would not fit the memory limit.

    A forward pre-hook on ``model`` estimates the bytes of all layers' ``heads × N × N`` maps before
    the forward runs.  Returns the hook's handle (:meth:`phi3lab.runtime.lab.Lab.guard_output_attentions`
    keeps it).
    """

    def check(module, args, kwargs):
        if not kwargs.get("output_attentions"):
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        shape = ids.shape if ids is not None else embeds.shape[:2]
        nbytes = output_attentions_bytes(module, int(shape[1]), int(shape[0]))
        device = next(module.parameters()).device
        check_memory(
            nbytes,
            max_bytes if max_bytes is not None else memory_limit(device),
            f"output_attentions=True on {int(shape[0])}×{int(shape[1])} tokens",
            "read only the layers, heads and rows you need (lab.run_with_cache(..., layers=..., positions=...), "
            "which also works under sdpa), or shorten the input",
        )
        return None

    return _pre_hook(model, check)
