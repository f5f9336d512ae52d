"""Serving: vLLM's OpenAI-compatible server in a venv of its own (:mod:`~phi3lab.serving.vllm`,
standard library only, so ``python3 tasks.py serve`` runs before ``.venv`` exists)."""

from phi3lab._lazy import lazy_attributes as _lazy_attributes

__getattr__, __dir__ = _lazy_attributes(__name__, {}, submodules=True)
