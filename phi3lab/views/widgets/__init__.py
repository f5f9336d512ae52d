"""Interactive notebook widgets: chat, attention explorer, patch explorer, attribution view.

    from phi3lab.views.widgets import ChatWidget, AttentionExplorer, PatchExplorer, AttributionView
    ChatWidget(lab)                                   # streams, stop button, images for vision models
    _, cache = vision.generate_with_cache("<|image_1|>\\nWhat colour is the triangle?", [picture], max_new_tokens=8)
    AttentionExplorer(cache)                          # hover a token: where it looks, per layer × head
    PatchExplorer(cache, image=0)                     # the picture, its HD crops, each cell's token

The widgets are `anywidget <https://anywidget.dev>`_ widgets: the front end is the plain ES modules
and stylesheet of the repository's ``widgets/`` folder, handed to the browser as text, so nothing is
built and phi3lab's code fetches nothing.  JupyterLab 4 and Notebook 7 serve anywidget's own front end
from the Python environment (browser-tested offline); VS Code and Colab may fetch it from a CDN — see the
README's table, and :func:`~phi3lab.views.widgets._base.display_mode` (``"static"``) for the fallback.
Colours, scales and the noise floor are :mod:`phi3lab.colours`'.

Each widget is a thin layer over a plain Python class that computes what the browser is sent
(:class:`~phi3lab.views.widgets.attention.AttentionView`, :class:`~phi3lab.views.widgets.patches.PatchView`,
:class:`~phi3lab.views.widgets.attribution.AttributionPayload`), so the payloads are tested without a
kernel, and only what is looked at travels: one attention row at a time, heat as bytes.

Every widget also has static forms: ``to_text()`` (what ``print`` shows and nbval compares) and
``to_html()`` (scripts-free HTML, shown where widgets are not, e.g. on GitHub).  Notebooks exported
with :func:`~phi3lab.views.widgets.export.export_html` (``python -m phi3lab.views.widgets.export nb.ipynb``)
render the saved widget state offline, in one self-contained page, where hovering and clicking still
work from each widget's saved ``offline`` payload (at most 256 KiB of text per widget).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ChatWidget": "phi3lab.views.widgets.chat",
    "AttentionExplorer": "phi3lab.views.widgets.attention",
    "AttentionView": "phi3lab.views.widgets.attention",
    "PatchExplorer": "phi3lab.views.widgets.patches",
    "PatchView": "phi3lab.views.widgets.patches",
    "AttributionView": "phi3lab.views.widgets.attribution",
    "export_html": "phi3lab.views.widgets.export",
    "display_mode": "phi3lab.views.widgets._base",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'phi3lab.views.widgets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
