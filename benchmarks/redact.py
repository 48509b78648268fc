"""(r) Redaction cost per kB of input: free text, header dumps and query strings.

Every shape is built to the exact size (1 kB, 64 kB, 1 MB) and given to the app's
:class:`~flask_diaglog.redact.Redactor` with the default ``DIAGLOG_REDACT`` fragments. Inputs past
the scan limit (64 KiB) are cut with a marker, so the 1 MB column costs what 64 kB costs; the last
column lifts the limit to show that the scan itself is linear (µs per kB stays flat).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask_diaglog.redact import SCAN_LIMIT, Redactor

from ._common import median, spread, table

#: DIAGLOG_REDACT's default fragments (config.py).
FRAGMENTS = ("password", "passwd", "secret", "token", "api_key", "apikey")
SIZES = (("1 kB", 1024), ("64 kB", 64 * 1024), ("1 MB", 1024 * 1024))


def _repeat(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


#: name -> (what it is, the method that takes it, build(size) -> input)
SHAPES: dict[str, tuple[str, str, Callable[[int], str]]] = {
    "word": ("one long word (log message)", "text", lambda n: "a" * n),
    "pairs": (
        "key=value pairs, 1 in 4 secret",
        "text",
        lambda n: _repeat("user=ann&page=2&lang=en&token=tok-123456&", n),
    ),
    "headers": (
        "str(request.headers) dump",
        "text",
        lambda n: _repeat(
            "Host: example.org\r\nAccept: */*\r\nAuthorization: Negotiate YIIBhwYGKwYBBQUC\r\n"
            "Cookie: theme=dark; session=s-1\r\nX-Forwarded-For: 10.0.0.1\r\n",
            n,
        ),
    ),
    "json": (
        "JSON text with secret keys",
        "text",
        lambda n: _repeat('{"user": "ann", "password": "hunter2", "items": [1, 2, 3]}, ', n),
    ),
    "query": (
        "query string, nested return URLs",
        "query",
        lambda n: _repeat("q=cats&next=%2Fcb%3Ftoken%3Dabc&page=2&", n),
    ),
    "path": ("URL path with pairs", "path", lambda n: _repeat("/reset/token=X;page=2", n)),
    "escaped": (
        "escaped quotes in one line (quadratic before 0.2.0's fix)",
        "text",
        lambda n: _repeat('token=\\"a\\" ', n),
    ),
    "unclosed": ("secret values that never close", "text", lambda n: _repeat('token=\\"a ', n)),
}


def _timer(fn: Callable[[str], str], text: str) -> Callable[[], float]:
    """A sample: enough calls for about 20 ms, in µs per kB of input."""
    t0 = time.perf_counter()
    fn(text)
    repeat = max(1, min(2000, int(0.02 / max(time.perf_counter() - t0, 1e-7))))

    def once() -> float:
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn(text)
        return (time.perf_counter() - t0) / repeat * 1e6 / (len(text) / 1024)

    return once


def run(quick: bool = False) -> str:
    rounds = 3 if quick else 9
    capped = Redactor(FRAGMENTS)
    uncapped = Redactor(FRAGMENTS, limit=10**9)
    columns = [*SIZES, ("1 MB, no limit", 1024 * 1024)]
    rows = []
    for label, method, build in SHAPES.values():
        row = [label]
        spreads = []
        for i, (_, size) in enumerate(columns):
            redactor = uncapped if i == len(SIZES) else capped
            text = build(size)
            timer = _timer(getattr(redactor, method), text)
            samples = [timer() for _ in range(rounds)]
            row.append(f"{median(samples):.2f}")
            spreads.append(spread(samples))
        row.append(max(spreads, key=lambda s: 0.0 if s == "-" else float(s[1:-1])))
        rows.append(row)
    head = (
        f"(r) redaction, µs per kB of input (median of {rounds} rounds); the scan limit is "
        f"{SCAN_LIMIT // 1024} KiB per text value, the rest is cut"
    )
    return head + "\n\n" + table(["input", *(c[0] for c in columns), "worst spread"], rows)
