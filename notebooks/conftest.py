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
