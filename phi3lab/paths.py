"""Where phi3lab's shipped assets and the shared reference fixtures live.

The assets (the embedded tiny models, the project tokenizer, the sample pictures) sit in the
repository's ``data/`` folder, where the README, the notebooks and the model cards name them.  A
built wheel carries the same files as the package ``phi3lab._data`` (``pyproject.toml`` maps
``data/`` onto it), so an installed phi3lab finds them inside itself; a checkout or an editable
install reads ``data/`` beside the package.  ``PHI3LAB_DATA`` overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ROOT", "PACKAGE", "data_dir", "embedded_dir", "reference_dir"]

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent  # the checkout, when phi3lab runs from one


def data_dir() -> Path:
    """The folder of assets phi3lab ships: ``PHI3LAB_DATA``, else the installed copy, else ``data/``."""
    if os.environ.get("PHI3LAB_DATA"):
        return Path(os.environ["PHI3LAB_DATA"])
    packaged = PACKAGE / "_data"
    return packaged if packaged.is_dir() else ROOT / "data"


def embedded_dir() -> Path:
    """The folder holding the embedded tiny models."""
    return data_dir() / "models"


def reference_dir() -> Path:
    """The official-code fixtures: ``../shared/reference`` beside the checkout (``PHI3LAB_REFERENCE``)."""
    return Path(os.environ.get("PHI3LAB_REFERENCE", ROOT.parent / "shared" / "reference"))
