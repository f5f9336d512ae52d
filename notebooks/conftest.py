"""nbval settings for the curated notebooks: streams on stderr and rich reprs are not compared."""

import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collectstart(collector):
    if getattr(collector, "skip_compare", None) is not None:
        collector.skip_compare += ("stderr", "text/html", "application/javascript", "image/png",
                                   "application/vnd.jupyter.widget-view+json")
