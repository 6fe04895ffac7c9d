"""Sphinx configuration: MyST Markdown pages, the furo theme, CONFIG tables built from the code."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).parent
ROOT = DOCS.parent
# The checkout first, so that the pages document this tree's code, installed or not.
# The example engine package is documented from its source, installed or not.
sys.path[:0] = [str(ROOT), str(DOCS / "_ext"), str(ROOT / "examples" / "thirdparty_engine")]

from channels_engines import __version__  # noqa: E402

project = "channels_engines"
author = "The channels_engines developers"
copyright = "The channels_engines developers"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.intersphinx",
    "config_options",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = "channels_engines"
html_static_path = ["_static"]
html_css_files = ["custom.css"]

# Links into other projects' documentation need their inventories, fetched over the
# network. Builds here must pass offline with -W, so they are fetched only on Read the
# Docs or when CHANNELS_ENGINES_DOCS_INTERSPHINX=1; otherwise such references render
# as plain code, without a warning.
_INVENTORIES = {
    "python": ("https://docs.python.org/3/", None),
    "django": (
        "https://docs.djangoproject.com/en/5.2/",
        "https://docs.djangoproject.com/en/5.2/_objects/",
    ),
    "channels": ("https://channels.readthedocs.io/en/stable/", None),
    "psycopg": ("https://www.psycopg.org/psycopg3/docs/", None),
}
_online = os.environ.get("CHANNELS_ENGINES_DOCS_INTERSPHINX")
if _online is None:
    _online = "1" if os.environ.get("READTHEDOCS") == "True" else "0"
intersphinx_mapping = _INVENTORIES if _online == "1" else {}
intersphinx_timeout = 10
