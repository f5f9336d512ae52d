"""Packages for setuptools: every ``phi3lab*`` package, plus ``data/`` shipped as ``phi3lab._data`` and the
widgets' front end ``widgets/`` as ``phi3lab.views.widgets._front``.

Everything else (metadata, dependencies, package data) is in ``pyproject.toml``; this file exists
only because ``pyproject.toml`` cannot combine package discovery with mapped folders.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["phi3lab", "phi3lab.*"]), "phi3lab._data", "phi3lab.views.widgets._front"],
    package_dir={"phi3lab._data": "data", "phi3lab.views.widgets._front": "widgets"},
)
