"""Sphinx configuration of fastopt's documentation site (``python -m sphinx -W -b html docs
docs/_build/html``; the README's test command builds it with warnings as errors)."""

from __future__ import annotations

import fastopt

project = "fastopt"
author = "the fastopt developers"
copyright = "the fastopt developers, MIT licence"
release = fastopt.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
exclude_patterns = ["_build"]
nitpicky = False

autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autoclass_content = "both"
# the compiled module has no source for viewcode to show
viewcode_follow_imported_members = False

intersphinx_mapping = {}  # no network at build time: links to NumPy/torch are written out

html_theme = "pydata_sphinx_theme"
html_title = f"fastopt {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path: list[str] = []
html_show_sourcelink = False
