"""Secret scrubbing for headers, query strings, JSON bodies and free text.

``Authorization``, ``Proxy-Authorization``, ``Cookie`` and ``Set-Cookie`` headers are always
redacted. Other keys are redacted when their name contains one of the ``DIAGLOG_REDACT`` fragments
(case-insensitive). Free text (log messages, exception messages) is scrubbed for ``key=value``,
``"key": "value"`` and ``Bearer``/``Basic`` credentials.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote

__all__ = ["MASK", "Redactor"]

MASK = "[REDACTED]"
ALWAYS_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


class Redactor:
    """Redacts by key name; one instance per app, built from ``DIAGLOG_REDACT``."""

    def __init__(self, fragments: Iterable[str]) -> None:
        frags = tuple(f.lower() for f in fragments if f)
        words = sorted({*frags, "authorization", "cookie"}, key=len, reverse=True)
        self.fragments = frags
        alt = "|".join(re.escape(w) for w in words)
        # key=value, key: value, "key": "value", 'key': 'value' (key may be a longer name that
        # contains a fragment, e.g. db_password or X-Api-Token).
        self._text = re.compile(
            r"""(?ix)
            (?P<key>["']?[\w.\-]*(?:"""
            + alt
            + r""")[\w.\-]*["']?)
            (?P<sep>\s*[:=]\s*)
            (?P<val>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|(?:(?:bearer|basic|token)\s+)?[^\s&,;)}\]]+)
            """
        )
        self._bearer = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{6,}")

    def key_is_secret(self, key: str) -> bool:
        k = key.lower()
        if k in ALWAYS_HEADERS:
            return True
        return any(f in k for f in self.fragments)

    def headers(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in headers:
            out[k] = MASK if self.key_is_secret(k) else self.text(v)
        return out

    def query(self, qs: str) -> str:
        """A query string with secret values masked (keys kept, order kept)."""
        if not qs:
            return qs
        pairs = parse_qsl(qs, keep_blank_values=True)
        if not pairs:
            return self.text(qs)
        return "&".join(
            f"{quote(k, safe='')}={MASK if self.key_is_secret(k) else quote(v, safe='')}"
            for k, v in pairs
        )

    def data(self, value: Any, _depth: int = 0) -> Any:
        """A copy of JSON-like data with secret keys masked, to any depth."""
        if _depth > 32:
            return MASK
        if isinstance(value, Mapping):
            return {
                k: (
                    MASK
                    if isinstance(k, str) and self.key_is_secret(k)
                    else self.data(v, _depth + 1)
                )
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.data(v, _depth + 1) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def text(self, text: str) -> str:
        """Free text with ``secret=...``-like pairs and bearer credentials masked."""
        if not text:
            return text
        out = self._text.sub(self._sub, text)
        return self._bearer.sub(lambda m: f"{m.group(1)} {MASK}", out)

    @staticmethod
    def _sub(m: re.Match[str]) -> str:
        val = m.group("val")
        q = val[0] if val[:1] in ("'", '"') else ""
        return f"{m.group('key')}{m.group('sep')}{q}{MASK}{q}"
