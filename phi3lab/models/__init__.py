"""Native model implementations, registered with transformers' Auto classes.

After ``import phi3lab``, ``AutoConfig``, ``AutoModelForCausalLM``, ``AutoImageProcessor`` and
``AutoProcessor`` ``.from_pretrained(folder)`` work for Phi-3-vision folders (``model_type:
"phi3_v"``) with ``trust_remote_code=False``: the ``auto_map`` entries naming remote files are
never followed.

Each registration needs its class, and importing the classes (with transformers' model index
behind them) takes seconds, so nothing is registered at import.  Each of
:mod:`phi3lab.models.phi3_v`'s ``register_*`` functions runs at the first moment it can be needed:

* the config, image processor and processor: as soon as transformers' own ``configuration_auto``,
  ``image_processing_auto`` or ``processing_auto`` module has been imported — by anyone, in any
  order, or before phi3lab — and no transformers (or phi3_v) module is still half-imported.
  transformers imports its Auto modules from inside its own config classes, so registering
  in the middle of such an import would meet half-built modules; waiting for the outermost
  import to finish is what makes this safe;
* the model class: when the first :class:`~phi3lab.models.phi3_v.Phi3VConfig` is made (every
  ``AutoModelForCausalLM`` call has the config before it looks the model up).

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
    "transformers.models.auto.configuration_auto": "register_config",  # then the model, on the first config
    "transformers.models.auto.image_processing_auto": "register_image_processor",
    "transformers.models.auto.processing_auto": "register_processor",
}
_WATCHED = ("transformers.", "phi3lab.models.phi3_v.")  # the modules a registration imports
_pending = dict(AUTO_MODULES)
_importing = 0  # watched modules whose code is running right now
_registering = False


def __getattr__(name: str):
    if name in ("Phi3VConfig", "Phi3VForCausalLM", "Phi3VImageProcessor", "Phi3VProcessor"):
        return getattr(phi3_v, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _call(function: str) -> None:
    try:
        getattr(phi3_v, function)()
        if function == "register_config":
            from phi3lab.models.phi3_v.configuration import Phi3VConfig

            Phi3VConfig.on_first_instance.append(lambda: _call("register_model"))
    except Exception as exc:  # never break someone else's import or config; say how to finish by hand
        warnings.warn(
            f"phi3lab could not run phi3_v.{function}() ({type(exc).__name__}: {exc}); call "
            "phi3lab.models.register() before using the transformers Auto classes",
            stacklevel=3,
        )


def _settle() -> None:
    """Run the registrations whose Auto module is loaded, unless a watched import is under way."""
    global _registering
    if _registering or _importing:
        return
    _registering = True
    try:
        while ready := [name for name in _pending if name in sys.modules]:
            _call(_pending.pop(ready[0]))
    finally:
        _registering = False
    if not _pending and _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


class _Counted(importlib.abc.Loader):
    """A watched module's own loader, counting the imports under way, then settling."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        global _importing
        _importing += 1
        try:
            self._loader.exec_module(module)
        finally:
            _importing -= 1
        _settle()

    def __getattr__(self, name):  # get_source, get_resource_reader, ... as the real loader answers
        return getattr(self._loader, name)


class _WatchFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader the other finders give for a watched module."""

    def find_spec(self, fullname, path, target=None):
        if not _pending or not fullname.startswith(_WATCHED):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Counted(spec.loader)
                return spec
        return None


_FINDER = _WatchFinder()


def register() -> None:
    """Register phi3_v with all four Auto classes now (importing the model and processor code)."""
    phi3_v.register()
    _pending.clear()
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def _install() -> None:
    sys.meta_path.insert(0, _FINDER)
    _settle()  # for Auto modules imported before phi3lab


_install()
