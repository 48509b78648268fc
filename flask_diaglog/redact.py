"""Secret scrubbing for headers, query strings, URL paths, JSON-like data and free text, in time
linear in the input and with a cap on the text scanned.

The rules (the user's copy is the "Redaction rules" section of ``docs/security.md``):

* A key is secret when its name, lower-cased and without ``-``, ``_``, ``.`` and spaces, contains
  one of the built-in fragments (:data:`BUILTIN`: ``authorization``, ``cookie``, ``apikey``,
  ``credential``, ``signature``) or one of the ``DIAGLOG_REDACT`` fragments, normalised the same
  way. So ``X-Api-Key``, ``Api-Key``, ``ACCESS_TOKEN`` and ``client_secret`` are all secret.
* Headers, query parameters and JSON keys that are secret have their whole value masked. Every
  other value is scanned as free text, so ``?next=/cb?token=X`` (percent-encoded or not) loses X.
* Free text is scanned for ``key=value``, ``key: value``, ``"key": "value"``, ``'key': 'value'``,
  ``key%3Dvalue`` and ``('key', 'value')`` pairs. A secret key's value is masked whole when it is
  quoted or bracketed; the unquoted value of an ``Authorization``/``Cookie`` key runs to the end
  of the line (any scheme, every cookie); any other unquoted value runs to the next space,
  ``&``, ``,``, ``;`` or closing bracket. Bare ``Bearer``/``Basic``/``Negotiate``/``NTLM``/
  ``ApiKey``/``AWS4-HMAC-SHA256`` credentials are masked too.
* URL paths (:meth:`Redactor.path`): ``key=value`` pairs inside a path segment
  (``/reset/token=X;password=Y``) are masked up to the next ``/``, ``;``, ``&``, ``,``, ``?``.
* Each text value is scanned up to :data:`SCAN_LIMIT` characters; the rest is cut and replaced
  by ``[diaglog: N characters cut]``, so a hostile megabyte costs what 64 KiB costs.

Every pattern is anchored so that each character is looked at a bounded number of times: key
candidates start only where a word starts (a look-behind), and values are found by forward scans
that never go back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote

__all__ = ["BUILTIN", "MASK", "SCAN_LIMIT", "Redactor"]

MASK = "[REDACTED]"
#: The most characters of one text value (a message, a traceback, a header value, a query
#: string, a path, a string in a body) that are scanned; the rest is cut.
SCAN_LIMIT = 64 * 1024
#: Key fragments that are always secret, whatever ``DIAGLOG_REDACT`` says (normalised).
BUILTIN = ("authorization", "cookie", "apikey", "credential", "signature")
#: Keys whose unquoted value in free text runs to the end of the line.
_WHOLE_LINE = ("authorization", "cookie")
#: Characters left out when key names are compared: ``X-Api-Key`` is ``xapikey``.
_DROP = str.maketrans("", "", "-_. ")
_CUT = "[diaglog: {} characters cut]"
_QUOTED_MASK = quote(MASK, safe="")

# A key candidate: a run of word characters, dots and hyphens that starts a word (the
# look-behind makes every other start position fail at once), an optional closing quote, and a
# separator. The comma separator is only the tuple form ``('key', 'value')``, checked in code.
_SEP = r"(?P<sep>[ \t]*+(?:[:=]|%(?:25)*+3[aAdD]|,)[ \t]*+)"
# A key also starts right after a percent-escape (``next=%2Fcb%3Ftoken%3DX``).
_START = r"(?:(?<![\w.\-])|(?<=%[0-9A-Fa-f]{2}))"
_KEY = re.compile(_START + r"(?P<key>[\w.\-]++)(?P<kq>\\?[\"'])?" + _SEP)
_PATH_KEY = re.compile(_START + r"(?P<key>[\w.\-]++)(?P<sep>=|%(?:25)*+3[dD])")
# Values, matched at a position (never searched).
_SCHEMES = (
    "bearer|basic|token|digest|negotiate|ntlm|apikey|api-key|key|aws4-hmac-sha256|dpop|gnap"
    "|hoba|mutual|oauth|hawk|vapid|scram-sha-1|scram-sha-256"
)
_PLAIN_VALUE = re.compile(r"(?i:(?:" + _SCHEMES + r")[ \t]++)?[^\s&,;)}\]]*+")
_PATH_VALUE = re.compile(r"[^/;&,?#\s]*+")
_DQ_REST = re.compile(r'(?:[^"\\\r\n]++|\\.)*+"')
_SQ_REST = re.compile(r"(?:[^'\\\r\n]++|\\.)*+'")
_EOL = re.compile(r"[\r\n]|\\[rn]")
#: The end of an escaped-quoted value: its closing \" (or \') or the end of the line, whichever
#: comes first; one search, so each value is scanned once, not to the end of the line first.
_ESC_END = {q: re.compile(rf"\\{q}|{_EOL.pattern}") for q in "\"'"}
# A credential with no key in front of it.
_BARE_WORDS = ("bearer", "basic", "negotiate", "ntlm", "apikey", "aws4-hmac-sha256")
_BARE = re.compile(r"(?i)\b(" + "|".join(_BARE_WORDS) + r")[ \t]++[A-Za-z0-9._~+/=\-]{6,}+")
_BRACKET = re.compile(r"[()\[\]{}\r\n]")
#: Key names remembered per redactor (bounded: key names come from clients).
_CACHE_MAX = 2048
_CACHE_KEY_MAX = 128


def _line_end(text: str, pos: int) -> int:
    m = _EOL.search(text, pos)
    return m.start() if m is not None else len(text)


def _bracket_end(text: str, pos: int) -> int:
    """The index of the bracket closing the one at ``pos`` (nesting counted, quotes not), or the
    end of the line when it is not closed on it."""
    depth = 0
    for m in _BRACKET.finditer(text, pos):
        c = m.group()
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return m.start()
        else:  # a line break
            return m.start()
    return len(text)


#: The password of a ``scheme://user:password@host`` URL in free text (a DSN in a log line). The
#: scheme must start a word, so a long run of letters is tried once, not from every letter.
_URL_USERINFO = re.compile(
    r"((?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://)([^\s/?#@:]*):[^\s/?#@]+@"
)


class Redactor:
    """Masks secrets by key name and in free text; one instance per app, built from
    ``DIAGLOG_REDACT``.

    :param fragments: key-name fragments that make a key secret (case-insensitive substrings),
        on top of :data:`BUILTIN`.
    :param limit: the most characters of one text value that are scanned (:data:`SCAN_LIMIT`).
    """

    def __init__(self, fragments: Iterable[str], *, limit: int = SCAN_LIMIT) -> None:
        frags = tuple(f.lower() for f in fragments if f)
        self.fragments = frags
        self.limit = limit
        normal = (f.translate(_DROP) for f in (*BUILTIN, *frags))
        self._needles = tuple(dict.fromkeys(f for f in normal if f))
        self._cache: dict[str, bool] = {}

    # -- keys -----------------------------------------------------------------------------------

    def key_is_secret(self, key: str) -> bool:
        """Whether values under ``key`` are masked whole (any case, ``-``/``_``/``.`` ignored)."""
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        norm = key.lower().translate(_DROP)
        hit = any(f in norm for f in self._needles)
        if len(key) <= _CACHE_KEY_MAX:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    # -- structured values ----------------------------------------------------------------------

    def headers(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Header name to value, secret headers masked whole and the others scanned as text."""
        out: dict[str, str] = {}
        for k, v in headers:
            out[k] = MASK if self.key_is_secret(k) else self.text(v)
        return out

    def query(self, qs: str) -> str:
        """A query string with secret values masked and secrets nested in other values (such as
        ``next=/cb?token=X``, percent-encoded or not) masked; keys and order kept."""
        if not qs:
            return qs
        qs, cut = self._cap(qs)
        pairs = parse_qsl(qs, keep_blank_values=True)
        if not pairs:
            return self.text(qs) + cut
        parts = []
        for k, v in pairs:
            value = MASK if self.key_is_secret(k) else _quote(self.text(v))
            parts.append(f"{_quote(self.text(k))}={value}")
        return "&".join(parts) + cut

    def path(self, path: str) -> str:
        """A URL path with the values of secret ``key=value`` pairs masked
        (``/reset/token=X;password=Y`` gives ``/reset/token=[REDACTED];password=[REDACTED]``)."""
        if "=" not in path and "%" not in path:
            return path  # the common case: no pair can be in it
        path, cut = self._cap(path)
        return self._scan(path, _PATH_KEY, True) + cut

    def data(self, value: Any, _depth: int = 0) -> Any:
        """A copy of JSON-like data with secret keys masked, to any depth; strings are scanned as
        free text."""
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

    # -- free text ------------------------------------------------------------------------------

    def text(self, text: str) -> str:
        """Free text with the values of secret keys and bare credentials masked; at most
        ``limit`` characters are scanned, the rest is cut with a marker."""
        if not text:
            return text
        text, cut = self._cap(text)
        if "=" in text or ":" in text or "%" in text or "," in text:
            text = self._scan(text, _KEY, False)
        if "://" in text:  # scheme://user:password@host: the password shows as ***
            text = _URL_USERINFO.sub(r"\g<1>\g<2>:***@", text)
        low = text.lower()  # a substring test per scheme is far cheaper than a regex pass
        if any(w in low for w in _BARE_WORDS):
            text = _BARE.sub(_bare, text)
        return text + cut

    def _cap(self, text: str) -> tuple[str, str]:
        n = len(text) - self.limit
        if n <= 0:
            return text, ""
        return text[: self.limit], _CUT.format(n)

    def _scan(self, text: str, pattern: re.Pattern[str], in_path: bool) -> str:
        """``text`` with the value after every secret key masked. One forward pass: a value is
        found by a scan from its key, and key candidates inside a masked value are skipped."""
        out: list[str] = []
        last = 0  # text[:last] is done (copied or masked)
        for m in pattern.finditer(text):
            if m.start() < last:
                continue
            key = m.group("key")
            if not self.key_is_secret(key):
                continue
            p = m.end()
            tuple_form = not in_path and "," in m.group("sep")
            if tuple_form and not (m.group("kq") and m.start() >= 2 and text[m.start() - 2] == "("):
                continue  # "token, next" in prose is not a pair
            start, end = _value_span(text, p, key, in_path, tuple_form)
            if end <= start:
                continue  # an empty value: nothing to mask
            out.append(text[last:start])
            out.append(MASK)
            last = end
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)


def _value_span(text: str, p: int, key: str, in_path: bool, tuple_form: bool) -> tuple[int, int]:
    """Where the value after a secret key at ``p`` starts and ends (end exclusive)."""
    c = text[p : p + 1]
    if c == "\\" and text[p + 1 : p + 2] in ('"', "'"):  # \"value\" inside an escaped string
        m = _ESC_END[text[p + 1]].search(text, p + 2)
        return p + 2, m.start() if m is not None else len(text)
    if c == '"' or c == "'":
        m = (_DQ_REST if c == '"' else _SQ_REST).match(text, p + 1)
        return p + 1, m.end() - 1 if m is not None else _line_end(text, p + 1)
    if tuple_form:
        return p, p  # ('key', value) without quotes is not the tuple form
    if c and c in "([{" and not in_path:
        return p + 1, _bracket_end(text, p)
    if in_path:
        return p, _PATH_VALUE.match(text, p).end()  # type: ignore[union-attr]
    norm = key.lower().translate(_DROP)
    if any(w in norm for w in _WHOLE_LINE):
        return p, _line_end(text, p)  # any scheme, every cookie: the rest of the line
    return p, _PLAIN_VALUE.match(text, p).end()  # type: ignore[union-attr]


def _bare(m: re.Match[str]) -> str:
    return f"{m.group(1)} {MASK}"


def _quote(value: str) -> str:
    """Percent-encoded like a query value, with the mask left readable."""
    return quote(value, safe="").replace(_QUOTED_MASK, MASK)
