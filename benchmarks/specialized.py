"""``python -m benchmarks specialized [variant ...]``: the attribute sites of diaglog's request path
that CPython left generic.

CPython 3.11 and later specialize an instruction once it has run a few times (PEP 659): a
``LOAD_ATTR`` of a slot or an instance attribute becomes a direct read, a ``LOAD_METHOD`` of a
method defined on the class skips the lookup. Some sites cannot be specialized: in 3.11, a class
default read through an instance, a method looked up on an attribute that holds a function, a
bound method made on each call, a method of an object whose type has a custom ``__getattribute__``.
Those take the generic path, a lookup in the type-attribute cache, whose hits depend on where
objects land in memory: they cost more, and they make instruction counts move with the memory
layout (see ``docs/performance.md``).

This serves a variant's requests until its code is specialized, then lists every attribute site of
``flask_diaglog`` that one more request ran and that is still generic. It counts and times nothing,
so it is deterministic, and a test keeps the request path of the default configuration free of such
sites.
"""

from __future__ import annotations

import argparse
import dis
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

from .instructions import DIAGLOG_VARIANTS, build, serve

#: The instruction families whose generic form means a type-attribute cache lookup.
FAMILIES = ("LOAD_ATTR", "STORE_ATTR", "LOAD_METHOD", "LOAD_GLOBAL")
PACKAGE = "flask_diaglog"
REPO = Path(__file__).resolve().parents[1]
#: Requests traced one after another; a site counts when all of them ran it.
TRACED = 3
#: The first CPython that specializes (PEP 659).
NEEDS = (3, 11)


def _generic(opname: str) -> bool:
    """True for an instruction of :data:`FAMILIES` left unspecialized: ``*_ADAPTIVE`` in 3.11,
    the family's own name in later versions."""
    return opname in FAMILIES or (
        opname.endswith("_ADAPTIVE") and opname.removesuffix("_ADAPTIVE") in FAMILIES
    )


def generic_sites(variant: str, warmup: int = 300) -> list[str]:
    """``file:line function: OPNAME name`` of each generic site that every one of
    :data:`TRACED` requests of ``variant`` ran. A site only some requests run (the timestamp's
    new second, once a second) has had too few runs to be specialized, and is left out."""
    if sys.version_info < NEEDS:
        raise RuntimeError("specialization needs CPython 3.11 or later")
    with tempfile.TemporaryDirectory() as tmp:
        app = build(variant, Path(tmp))
        serve(app, warmup, 0)
        every: dict[CodeType, set[int]] | None = None
        for _ in range(TRACED):
            ran: dict[CodeType, set[int]] = {}

            def tracer(frame: FrameType, event: str, arg: Any) -> Any:
                if PACKAGE not in frame.f_code.co_filename:
                    return None
                frame.f_trace_opcodes = True
                if event == "opcode":
                    ran.setdefault(frame.f_code, set()).add(frame.f_lasti)  # noqa: B023
                return tracer

            sys.settrace(tracer)
            try:
                serve(app, 0, 1)
            finally:
                sys.settrace(None)
            if every is None:
                every = ran
            else:
                every = {c: every[c] & ran[c] for c in every.keys() & ran.keys()}
    sites = []
    for code, offsets in (every or {}).items():
        # The instructions as quickened (tracing leaves the quickened code as it is).
        quick = {i.offset: i.opname for i in dis.get_instructions(code, adaptive=True)}
        for ins in dis.get_instructions(code):
            if ins.offset in offsets and _generic(quick[ins.offset]):
                line = ins.positions.lineno if ins.positions else None
                where = f"{Path(code.co_filename).name}:{line} {code.co_name}"
                sites.append(f"{where}: {quick[ins.offset]} {ins.argval}")
    return sorted(set(sites))


def sites_in_fresh_process(variant: str) -> list[str]:
    """:func:`generic_sites` of ``variant`` in a new interpreter: code objects are shared by all
    apps of a process, and what one variant's requests made of a site would carry over."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.specialized", "--only", variant],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return [line for line in done.stdout.splitlines() if line]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks specialized", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="variant",
        help=f"any of {', '.join(DIAGLOG_VARIANTS)} (default: all)",
    )
    parser.add_argument("--only", metavar="variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.only:  # the child of sites_in_fresh_process
        print("\n".join(generic_sites(args.only)))
        return 0
    unknown = [n for n in args.names if n not in DIAGLOG_VARIANTS]
    if unknown:
        parser.error(f"unknown variant {', '.join(unknown)}")
    found = 0
    for name in args.names or DIAGLOG_VARIANTS:
        sites = sites_in_fresh_process(name)
        found += len(sites)
        print(f"{name}: {len(sites)} generic site(s)")
        for site in sites:
            print(f"  {site}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
