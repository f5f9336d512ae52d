"""Native model implementations, registered with transformers' Auto classes.

After ``import phi3lab``, ``AutoConfig``, ``AutoModelForCausalLM``, ``AutoImageProcessor`` and
``AutoProcessor`` ``.from_pretrained(folder)`` work for Phi-3-vision folders (``model_type:
"phi3_v"``) with ``trust_remote_code=False``: the ``auto_map`` entries naming remote files are
never followed.

Each registration needs its class, and importing the model and processor classes (with
transformers' modules behind them) takes seconds, so only the config is registered at once (it
costs what importing torch and transformers costs anyway).  The rest waits for the first moment
it can be needed, using :mod:`phi3lab.models.phi3_v`'s ``register_*`` functions:

* the model class, when the first :class:`~phi3lab.models.phi3_v.Phi3VConfig` is made (every
  ``AutoModelForCausalLM`` call builds or reads the config before it looks the model up);
* the image processor and the processor, right after transformers' own ``image_processing_auto``
  and ``processing_auto`` modules are imported — by anyone, in any order — or at once when they
  were imported before phi3lab (these Auto classes find processors by name, with no config made).

:func:`register` does all of it immediately.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings

from phi3lab.models import phi3_v

__all__ = ["Phi3VConfig", "Phi3VForCausalLM", "Phi3VImageProcessor", "Phi3VProcessor", "phi3_v", "register"]

#: transformers' module of an Auto class → the phi3_v function that registers phi3_v with it
AUTO_MODULES = {
    "transformers.models.auto.image_processing_auto": "register_image_processor",
    "transformers.models.auto.processing_auto": "register_processor",
}
_pending = dict(AUTO_MODULES)
_queue: list[str] = []


def __getattr__(name: str):
    if name in ("Phi3VConfig", "Phi3VForCausalLM", "Phi3VImageProcessor", "Phi3VProcessor"):
        return getattr(phi3_v, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _call(function: str) -> None:
    try:
        getattr(phi3_v, function)()
    except Exception as exc:  # never break someone else's import or config; say how to finish by hand
        warnings.warn(f"phi3lab could not run phi3_v.{function}() ({type(exc).__name__}: {exc}); call "
                      "phi3lab.models.register() before using the transformers Auto classes", stacklevel=3)


def _run(module_name: str) -> None:
    """Run the registration waiting for ``module_name``; one started inside another waits for it."""
    if module_name in _pending:
        _queue.append(_pending.pop(module_name))
    if len(_queue) != 1:
        return  # nothing to do, or an outer call is running and will take it
    while _queue:
        _call(_queue[0])
        _queue.pop(0)
    if not _pending and _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


class _ThenRegister(importlib.abc.Loader):
    """A module's own loader, followed by the registration that waits for that module."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _run(module.__name__)

    def __getattr__(self, name):  # get_source, get_resource_reader, ... as the real loader answers
        return getattr(self._loader, name)


class _AutoModuleFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader that the other finders give for an awaited module."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ThenRegister(spec.loader)
                return spec
        return None


_FINDER = _AutoModuleFinder()


def _register_model_on_first_config() -> None:
    _call("register_model")


def register() -> None:
    """Register phi3_v with all four Auto classes now (importing the model and processor code)."""
    phi3_v.register()
    _pending.clear()
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def _install() -> None:
    from phi3lab.models.phi3_v.configuration import Phi3VConfig

    phi3_v.register_config()
    Phi3VConfig.on_first_instance.append(_register_model_on_first_config)
    for module_name in list(_pending):
        if module_name in sys.modules:
            _run(module_name)
    if _pending and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


_install()
