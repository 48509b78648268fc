"""Reading the documentation (README.md and docs/*.md), so documented examples run as written.

* :func:`docs_section` is the Markdown under one heading of one page.
* :func:`blocks` lists every fenced code block of every page: its page, line, language, the
  headings above it and its ``<!-- docs-test: skip (reason) -->`` mark, if any.
* :func:`run_by` is how a dedicated test takes the blocks it runs: it returns them and registers
  them in :data:`RUN_BY`, which ``test_docs.py`` reads to tell that every Python block of the docs
  is run by some test. Call it at module level, so importing the test module registers them.

Pages are named as in the repository: ``"README.md"`` for the README, ``"live.md"`` (or
``"docs/live.md"``) for a page of the documentation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"

#: Python blocks run by a dedicated test: block id (``"live.md:204"``) to the test
#: (``"test_live_workers.py::test_the_documented_python_client_follows_a_job"``).
RUN_BY: dict[str, str] = {}

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_HEADING = re.compile(r"^(?P<hashes>#{1,6}) +\S")
_MARK = re.compile(r"^<!--\s*docs-test:(?P<body>.*?)-->\s*$")
_SKIP = re.compile(r"^\s*skip\s*\((?P<reason>.*\S.*)\)\s*$")
_FILENAME = re.compile(r"^# (?P<name>[\w.-]+\.py)\b")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str  # "README.md" or the name of a page in docs/ ("live.md")
    line: int  # 1-based line of the opening fence; the code starts on the next line
    lang: str  # the first word of the info string ("python", "console", "{eval-rst}", "")
    code: str  # the text between the fences, dedented by the fence's indentation
    headings: tuple[str, ...]  # the headings above it, outermost first ("# Live events", ...)
    skip: str | None = None  # the reason of a `<!-- docs-test: skip (reason) -->` mark

    @property
    def id(self) -> str:
        """``page:line``, e.g. ``live.md:204``."""
        return f"{self.page}:{self.line}"

    @property
    def path(self) -> str:
        """The page's path from the repository root (``docs/live.md``), for messages."""
        return self.page if self.page == "README.md" else f"docs/{self.page}"

    @property
    def filename(self) -> str | None:
        """``myapp.py`` for a block whose first line is ``# myapp.py`` (a file of an example)."""
        m = _FILENAME.match(self.code)
        return m.group("name") if m else None

    @property
    def is_directive(self) -> bool:
        """A MyST directive (``{eval-rst}``, ``{toctree}``, ``{include}``), not a code example."""
        return self.lang.startswith("{")


def page_path(page: str) -> Path:
    """The file of ``page`` (``"README.md"``, ``"live.md"`` or ``"docs/live.md"``)."""
    name = page.removeprefix("docs/")
    path = README if name == "README.md" else DOCS / name
    if not path.is_file():
        raise LookupError(f"no documentation page {page!r} (looked for {path})")
    return path


def page_name(page: str) -> str:
    """The canonical name of ``page``: ``"README.md"`` or ``"live.md"``."""
    page_path(page)
    return page.removeprefix("docs/")


def pages() -> list[str]:
    """Every page: ``README.md`` and the Markdown pages of ``docs/``, in a stable order."""
    return ["README.md", *sorted(p.name for p in DOCS.glob("*.md"))]


def parse(text: str, page: str = "<text>") -> list[Block]:
    """Every fenced code block of the Markdown ``text``.

    Headings inside fences are not headings. A ``<!-- docs-test: ... -->`` mark applies to the
    next fence, which must follow it (blank lines allowed); a mark that is not ``skip (reason)``
    or that no fence follows is an error, so a typo cannot silently un-skip or skip a block.
    """
    out: list[Block] = []
    headings: list[str] = []
    lines = text.splitlines()
    open_fence: tuple[int, str, str, str] | None = None  # line, fence, indent, info
    body: list[str] = []
    mark: tuple[int, str] | None = None  # line, reason
    for number, line in enumerate(lines, start=1):
        if open_fence is not None:
            start, fence, indent, info = open_fence
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                skip = None
                if mark is not None and mark[0] == start:
                    skip = mark[1]
                    mark = None
                out.append(
                    Block(
                        page=page,
                        line=start,
                        lang=info.split()[0] if info.split() else "",
                        code="".join(
                            (b[len(indent) :] if b.startswith(indent) else b.lstrip()) + "\n"
                            for b in body
                        ),
                        headings=tuple(headings),
                        skip=skip,
                    )
                )
                open_fence, body = None, []
            else:
                body.append(line)
            continue
        fence_match = _FENCE.match(line)
        if fence_match:
            info = fence_match.group("info").strip()
            open_fence = (number, fence_match.group("fence"), fence_match.group("indent"), info)
            if mark is not None:
                mark = (number, mark[1])  # the mark belongs to this fence
            continue
        mark_match = _MARK.match(line.strip())
        if mark_match:
            if mark is not None:
                raise ValueError(f"{page}:{number}: two docs-test marks before one block")
            skip = _SKIP.match(mark_match.group("body"))
            if skip is None:
                raise ValueError(
                    f"{page}:{number}: unknown docs-test mark {line.strip()!r}; the only mark is "
                    "<!-- docs-test: skip (reason) -->"
                )
            mark = (0, skip.group("reason").strip())
            continue
        if mark is not None and line.strip():
            raise ValueError(f"{page}:{number}: a docs-test mark must be followed by a code block")
        heading = _HEADING.match(line)
        if heading:
            level = len(heading.group("hashes"))
            headings[:] = [h for h in headings if len(h.split(" ", 1)[0]) < level]
            headings.append(line.rstrip())
    if open_fence is not None:
        raise ValueError(f"{page}:{open_fence[0]}: code block is never closed")
    if mark is not None:
        raise ValueError(f"{page}: a docs-test mark at the end is followed by no code block")
    return out


@cache
def _blocks_of(page: str, text: str) -> tuple[Block, ...]:
    return tuple(parse(text, page))


def blocks(page: str | None = None, *, lang: str | None = None) -> list[Block]:
    """Every fenced code block of ``page`` (default: of every page), optionally of one language."""
    names = [page_name(page)] if page is not None else pages()
    found = [b for name in names for b in _blocks_of(name, page_path(name).read_text())]
    return [b for b in found if lang is None or b.lang == lang]


def docs_section(page: str, title: str) -> str:
    """The text of ``page`` under the heading ``title`` (``"## Quick start"``), up to the next
    heading of the same or a higher level (lines inside code fences are never headings)."""
    depth = len(title.split(" ", 1)[0])
    out: list[str] = []
    inside = False
    fence: str | None = None
    for line in page_path(page).read_text().splitlines(keepends=True):
        fence_match = _FENCE.match(line.rstrip("\n"))
        if fence is not None:
            closes = fence_match and fence_match.group("fence").startswith(fence)
            if closes and not fence_match.group("info").strip():
                fence = None
        elif fence_match:
            fence = fence_match.group("fence")
        elif _HEADING.match(line):
            level = len(line) - len(line.lstrip("#"))
            if inside and level <= depth:
                break
            if line.rstrip("\n") == title:
                inside = True
                continue
        if inside:
            out.append(line)
    if not inside:
        raise LookupError(f"{page} has no heading {title!r}")
    return "".join(out)


def section_blocks(page: str, title: str, lang: str | None = "python") -> list[Block]:
    """The blocks under the heading ``title`` of ``page`` (in its subsections too)."""
    docs_section(page, title)  # raises LookupError for a missing heading
    return [b for b in blocks(page, lang=lang) if title in b.headings]


def run_by(test: str, page: str, title: str, lang: str = "python") -> list[Block]:
    """The ``lang`` blocks under ``title`` on ``page``, registered as run by ``test``.

    ``test`` names the dedicated test, ``"test_module.py::test_name"``; ``test_docs.py`` checks
    that it exists and leaves these blocks to it. Raises ``LookupError`` when the section has no
    such block, so a moved example fails loudly instead of going untested.
    """
    found = section_blocks(page, title, lang)
    if not found:
        raise LookupError(f"{page} has no {lang} block under {title!r}")
    for block in found:
        other = RUN_BY.setdefault(block.id, test)
        if other != test:
            raise ValueError(f"{block.id} is registered as run by both {other} and {test}")
    return found
