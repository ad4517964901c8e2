"""Sphinx configuration of leaktrace's documentation.

Build (from the repository root; nothing is fetched from the network)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

The CLI reference (``reference/cli/*.md``) is generated at each build from the typer app
(:data:`forensics.cli.app`), and the API reference (``reference/api/*.rst``) from the package
tree, so they always show the commands, options, modules and docstrings the code has.
The notebook under ``researcher/`` is a link to ``notebooks/walkthrough.ipynb``; it is
rendered as committed (outputs stripped), never executed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # document this checkout, not an installed copy
sys.path.insert(0, str(HERE / "_ext"))

import watermark  # noqa: E402

project = "leaktrace"
author = "the leaktrace developers"
copyright = "the leaktrace developers, MIT licence"
version = release = watermark.__version__

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
    "myst_nb",  # Markdown pages (it loads myst_parser) and the notebook
    "leaktrace_cli",  # docs/_ext/leaktrace_cli.py: the CLI reference from the typer app
    "leaktrace_api",  # docs/_ext/leaktrace_api.py: the API reference from the package tree
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
templates_path: list[str] = []

# nothing reaches the network during the build
intersphinx_mapping: dict = {}
nb_execution_mode = "off"  # the notebook is shown as committed; the tests run it
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc sections say the types
autodoc_default_options = {"members": True, "show-inheritance": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

smartquotes = False  # "--json" stays two hyphens, quotes stay straight

html_theme = "alabaster"
html_theme_options = {
    "description": "Recipient watermarks for exported chest films, and tracing of leaks",
    "fixed_sidebar": True,
    "page_width": "1180px",
    "sidebar_width": "260px",
}
html_static_path: list[str] = []
html_show_sourcelink = False
html_last_updated_fmt = None

os.environ.setdefault("COLUMNS", "100")  # help text generated at one fixed width
