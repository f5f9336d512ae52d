"""Marks for the doctests collected from phi3lab/ (tests/conftest.py serves the tests themselves)."""

import pytest

SLOW_DOCTESTS = ("phi3lab.safety.direction", "phi3lab.safety.sweep")  # each finds a direction or runs a sweep


def pytest_collection_modifyitems(items):
    for item in items:
        if item.__class__.__name__ == "DoctestItem" and item.name in SLOW_DOCTESTS:
            item.add_marker(pytest.mark.slow)
