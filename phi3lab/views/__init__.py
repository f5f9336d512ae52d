"""Views: drawing what the other layers computed — :mod:`~phi3lab.colours` (the one colour language:
maps, scales, the noise floor, legends), :mod:`~phi3lab.views.plotting` (matplotlib, each function takes an
optional ``ax`` and returns ``(fig, ax)``) and :mod:`~phi3lab.views.widgets` (anywidget front ends with text
and static HTML forms).  Nothing here computes what it shows."""

from phi3lab._lazy import lazy_attributes as _lazy_attributes

__getattr__, __dir__ = _lazy_attributes(__name__, {}, submodules=True)
