"""Sphinx configuration: MyST Markdown pages, API reference from docstrings (autodoc), and the
configuration table generated from ``flask_diaglog.config`` at build time.

Build with ``make docs`` (``sphinx-build -W --keep-going -n -b html docs docs/_build/html``).
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GENERATED = HERE / "_generated"

# The package is installed in the venv (editable); the source tree wins if it is not.
sys.path.insert(0, str(ROOT))

project = "flask-diaglog"
author = "flask-diaglog developers"
copyright = "flask-diaglog developers"
try:
    from flask_diaglog import __version__ as release
except ImportError:  # the config table below reports the import error in full
    release = importlib.metadata.version("flask-diaglog")
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]

source_suffix = {".md": "markdown"}
root_doc = "index"
# _generated/ holds files {include}d by pages, not pages of their own.
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]

# "[Ids](lines.md#ids)" and "[...](#signals)": anchors for headings down to ####.
myst_heading_anchors = 4

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}

# No network at build time (and -n makes every unresolved reference an error): references to
# the standard library and to the libraries flask-diaglog builds on are not resolved.
nitpick_ignore_regex = [
    (r"py:.*", r"(typing|collections|contextlib|concurrent|threading|logging|types|os|io)(\..*)?"),
    (r"py:.*", r"(flask|werkzeug|blinker|flask_socketio|socketio|redis|_pytest|pytest)(\..*)?"),
    (r"py:.*", r"(Any|Callable|Iterator|Iterable|Sequence|Mapping|Thread|Flask|Request|Response)"),
    (r"py:.*", r"(F|R|T|P|NoneType|Signal|NamedSignal|HTTPException|BadRequest|Conflict)"),
    # Type variables, and internal classes that appear in public signatures and base classes.
    (r"py:class", r"(flask_diaglog\.[\w.]+\.)?[A-Z]"),
    (
        r"py:class",
        r"(flask_diaglog\.[\w.]+\.)?"
        r"(Trace|Recorder|JobStore|Claim|Lease|Fields|JobLease|JobIdGetter|LiveSubscribe)",
    ),
]

html_theme = "furo"
html_title = f"flask-diaglog {release}"
html_static_path: list[str] = []


def _write_config_table() -> None:
    """Write ``_generated/config-table.md`` from ``flask_diaglog.config.markdown_table()``.

    The configuration page ``{include}``s it, so the table in the docs is always the one the code
    declares. The file is rewritten only when its text changes (no needless rebuilds).
    """
    try:
        import flask_diaglog.config as config
    except Exception as exc:
        raise RuntimeError(
            f"docs/conf.py: cannot import flask_diaglog.config to generate the configuration "
            f"table: {type(exc).__name__}: {exc}"
        ) from exc
    markdown_table = getattr(config, "markdown_table", None)
    if markdown_table is None:
        raise RuntimeError(
            "docs/conf.py: flask_diaglog.config.markdown_table() is missing, so the configuration "
            "table (docs/_generated/config-table.md) cannot be generated. It must return the "
            "Markdown table of every DIAGLOG_* key (key, default, description) from "
            "flask_diaglog.config.KEYS, the one declaration of the keys."
        )
    text = markdown_table()
    if not isinstance(text, str) or not text.strip():
        raise RuntimeError("docs/conf.py: flask_diaglog.config.markdown_table() returned no table")
    GENERATED.mkdir(exist_ok=True)
    target = GENERATED / "config-table.md"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


_write_config_table()
