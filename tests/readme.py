"""Reading README sections, so documented examples run as written."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_section(title: str) -> str:
    """The README text under the heading ``title``, up to the next heading of the same or a higher
    level (lines inside code fences are never headings)."""
    depth = len(title.split(" ", 1)[0])
    out: list[str] = []
    inside = fenced = False
    for line in README.read_text().splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            if inside and level <= depth and line[level : level + 1] == " ":
                break
            if line.rstrip("\n") == title:
                inside = True
                continue
        if inside:
            out.append(line)
    if not inside:
        raise LookupError(f"README.md has no heading {title!r}")
    return "".join(out)
