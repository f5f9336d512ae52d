"""The common bases of what phi3lab raises and warns on purpose.

Every error phi3lab raises deliberately derives from :class:`Phi3LabError` *and* keeps the standard
parent that says what kind of mistake it is (``ValueError``, ``TypeError``, ``MemoryError``, …), so
``except phi3lab.Phi3LabError`` catches phi3lab's own errors while ``except ValueError`` keeps working.
Warnings derive from :class:`Phi3LabWarning` (a ``UserWarning``).  This module imports nothing, so the
standalone Phi-3-vision package (:mod:`phi3lab.models.phi3_v`) shares these bases too.
"""

from __future__ import annotations

__all__ = ["Phi3LabError", "Phi3LabWarning"]


class Phi3LabError(Exception):
    """Base of every error phi3lab raises on purpose; the message says what was wrong and how to fix it."""


class Phi3LabWarning(UserWarning):
    """Base of phi3lab's warnings."""
