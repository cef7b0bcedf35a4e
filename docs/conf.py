"""Sphinx configuration for procsup's docs.

No intersphinx and no graphviz: the build machines reach no network but the
package registry, and have no graphviz binary. Draw diagrams as ASCII in
literal blocks.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Make `import procsup` work without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

project = "procsup"
author = "procsup contributors"
copyright = "procsup contributors"
release = "0.1.0"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

exclude_patterns = ["_build"]

html_theme = "furo"
html_title = "procsup"

nitpicky = False
autodoc_typehints = "description"
# Types for the parameters a docstring documents, not for private constructor
# arguments of classes users never construct.
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"

