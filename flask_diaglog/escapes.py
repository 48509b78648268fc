"""How outside text is shown inside one line: the characters a line escapes, and a stage's name
as one word of a line and as a ``Server-Timing`` token.

This module owns:

* :data:`ESCAPES` and :data:`JSON_ESCAPES`, the ``str.translate`` tables of every character a
  line escapes (line breaks, terminal and bidirectional controls), in plain text and in JSON. The
  renderers escape with them; readers use them to make text safe for a terminal;
* :func:`stage_names`, a stage name's two shown forms, kept per name: its word in a line (the
  stage line and the end line's ``stages=`` word) and its ``Server-Timing`` token.

It imports nothing from the package: the vocabulary (:mod:`flask_diaglog.trail`) and the
renderers (:mod:`flask_diaglog.files.render`) both build on it.
"""

from __future__ import annotations

import re
from urllib.parse import quote

__all__ = ["ESCAPES", "JSON_ESCAPES", "STAGE_NAMES", "shown", "stage_names", "stage_word"]

#: Line breaks and terminal controls for every reader (``str.splitlines``, text-mode ``io``,
#: ``grep``, ``less``): C0, DEL, C1 (NEL included), U+2028, U+2029; and the bidirectional controls,
#: which reorder the text shown after them ("Trojan Source"): U+061C, U+200E/F, U+202A-E, U+2066-9.
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_BREAKERS = (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *_BIDI)
#: ``str.translate`` table of every character a plain line escapes (the above); readers use it to
#: make text from JSON lines safe for a terminal.
ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _BREAKERS}
ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})
#: In JSON the same characters become ``\\u00XX`` escapes, so the value survives a JSON parser;
#: readers use it for the JSON they print.
JSON_ESCAPES: dict[int, str] = {c: f"\\u{c:04x}" for c in _BREAKERS}


def shown(text: str) -> str:
    """``text`` as a plain line shows it: every character of :data:`ESCAPES` escaped."""
    return text if text.isprintable() else text.translate(ESCAPES)


#: A character a ``Server-Timing`` token cannot hold (RFC 9110 ``tchar``).
_TOKEN_BAD = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
#: Stage names' shown forms (:func:`stage_names`), by name; bounded, since a name may be anything.
#: The stage's hot path reads it first (``trail.stage_end``): no call on a hit.
STAGE_NAMES: dict[str, tuple[str, str]] = {}
_NAMES_MAX = 4096


def stage_names(name: str) -> tuple[str, str]:
    """``(word, token)``: ``name`` as one word of a line, and as a ``Server-Timing`` token.

    The word has whitespace, ``,`` and ``%`` percent-encoded (``unquote`` reads it back) and any
    other character a line escapes shown as :data:`ESCAPES` shows it, so a line built from it is
    printable without a check. The token has every character a token cannot hold made ``_``.
    Kept in :data:`STAGE_NAMES`.
    """
    forms = STAGE_NAMES.get(name)
    if forms is None:
        word = "".join(quote(c, safe="") if c.isspace() or c in ",%" else c for c in name)
        forms = (shown(word), _TOKEN_BAD.sub("_", name) or "_")
        if len(STAGE_NAMES) < _NAMES_MAX:
            STAGE_NAMES[name] = forms
    return forms


def stage_word(name: str) -> str:
    """``name`` as one word of a line (see :func:`stage_names`)."""
    return stage_names(name)[0]
