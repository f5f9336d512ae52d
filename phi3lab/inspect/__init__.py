"""Inspect: looking inside a running model and editing what flows through it.

* :mod:`~phi3lab.inspect.capture` — attention rows under any kernel, checked for memory first;
* :mod:`~phi3lab.inspect.cache` — :meth:`Lab.run_with_cache` and the :class:`Cache` it returns;
* :mod:`~phi3lab.inspect.maps` — rollout, head summaries and attention on the picture;
* :mod:`~phi3lab.inspect.lens` — the logit lens;
* :mod:`~phi3lab.inspect.interventions` — edits of the residual stream and of single heads.
"""

from phi3lab._lazy import lazy_attributes as _lazy_attributes

__getattr__, __dir__ = _lazy_attributes(__name__, {}, submodules=True)
