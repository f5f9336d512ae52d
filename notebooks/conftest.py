"""nbval settings for the curated notebooks: streams on stderr and rich reprs are not compared.

The kernels draw with the inline backend, as in JupyterLab and in the refresh, so the plotting
cells run the code that makes their stored figures.
"""

import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"


def pytest_collectstart(collector):
    if getattr(collector, "skip_compare", None) is not None:
        collector.skip_compare += (
            "stderr",
            "text/html",
            "application/javascript",
            "image/png",
            "application/vnd.jupyter.widget-view+json",
        )


_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Add up each notebook's cells (set-up, call and tear-down), for the summary below."""
    if report.nodeid.endswith(".ipynb") or ".ipynb::" in report.nodeid:
        name = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
        _SECONDS[name] = _SECONDS.get(name, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """The time each notebook took under nbval (the kernel's start included), so the log records it."""
    if _SECONDS:
        terminalreporter.write_sep("-", "seconds per notebook under nbval")
        for name, seconds in sorted(_SECONDS.items()):
            terminalreporter.write_line(f"{name:<36} {seconds:6.1f} s")
        terminalreporter.write_line(f"{'all notebooks':<36} {sum(_SECONDS.values()):6.1f} s")
