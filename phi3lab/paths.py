"""Where phi3lab's shipped assets and the shared reference fixtures live."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The ``data/`` folder of assets phi3lab ships (override with ``PHI3LAB_DATA``)."""
    return Path(os.environ.get("PHI3LAB_DATA", ROOT / "data"))


def embedded_dir() -> Path:
    """The folder holding the embedded tiny models."""
    return data_dir() / "models"


def reference_dir() -> Path:
    """The official-code fixtures: ``../shared/reference`` beside the checkout (``PHI3LAB_REFERENCE``)."""
    return Path(os.environ.get("PHI3LAB_REFERENCE", ROOT.parent / "shared" / "reference"))
