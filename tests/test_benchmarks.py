"""The benchmarks still run against the API they measure (they are not run by the tests otherwise)."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"))


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # top level only: main() runs under __name__ == "__main__"
    return module


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_every_benchmark_imports_what_it_uses(path):
    module = _module(path)  # an ImportError here: the benchmark names something the package no longer has
    assert "__main__" in path.read_text() and module.__doc__, f"{path.name}: a docstring and a __main__ block"


@pytest.mark.slow
def test_attention_capture_runs_every_case_at_a_small_length(capsys):
    """At N = 128 (Phi-3 width, 2 layers): every case runs through the hook core and the summary prints."""
    bench = _module(next(p for p in BENCHMARKS if p.stem == "attention_capture"))
    bench.N, bench.REPEATS = 128, 1
    bench.PeakRSS.extra = property(lambda self: 0)  # too short to measure: the ratios must not divide by zero
    bench.main()
    out = capsys.readouterr().out
    for case in ("(a) sdpa forward", "(b) capture 1 layer", "(c) capture last row", "(d) eager", "(e) rollout"):
        assert case in out
    assert "targets: (b)" in out and "rollout (e): time" in out
