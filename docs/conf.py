"""Sphinx configuration of phi3lab's documentation site (built by docs/build.py, which stages this
folder beside the README, the notebooks and the generated API pages).

Everything here keeps the site offline: notebooks are never executed (their stored outputs are
shown), widgets are drawn from their saved state by phi3lab's renderer in ``_static`` instead of
myst-nb's default require.js and html-manager from a CDN, and no math renderer is loaded.
"""

project = "phi3lab"
author = "the phi3lab authors"
copyright = "phi3lab authors; MIT licence"  # noqa: A001 - Sphinx's name

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md"]  # README.md is included by index.md
root_doc = "index"

# --- notebooks: shown as stored ------------------------------------------------------------------
nb_execution_mode = "off"
nb_ipywidgets_js = {"phi3lab-embed.js": {}}  # in html_static_path; renders saved anywidget state, offline
nb_merge_streams = True
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]  # no dollarmath: no page needs a math renderer

# --- API reference ------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
add_module_names = False
suppress_warnings = ["myst.header", "myst.xref_missing", "misc.highlighting_failure"]

# --- HTML -------------------------------------------------------------------------------------------
html_theme = "furo"  # system fonts, no web fonts; search from a local index
html_title = "phi3lab"
html_static_path = ["_static"]
html_css_files = ["phi3lab-docs.css"]
html_permalinks_icon = "#"
html_show_sourcelink = False
html_last_updated_fmt = None
html_favicon = "_static/phi3lab.svg"  # a local icon: without one the browser asks the server for /favicon.ico
