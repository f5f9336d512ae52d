"""Prompts: conversations as Phi-3 sees them, before anything runs.

* :mod:`~phi3lab.prompts.chat` — messages, the model's own chat template, its revision, control tokens;
* :mod:`~phi3lab.prompts.token_view` — a prompt as a table of tokens with their roles;
* :mod:`~phi3lab.prompts.budget` — token counts (images from their sizes alone) against the context;
* :mod:`~phi3lab.prompts.images`, :mod:`~phi3lab.prompts.patches` — pictures and the HD crop geometry;
* :mod:`~phi3lab.prompts.inputs` — :class:`Inputs`, one encoded prompt (or a padded batch) that reads itself back.
"""

from phi3lab._lazy import lazy_attributes as _lazy_attributes

__getattr__, __dir__ = _lazy_attributes(__name__, {}, submodules=True)
