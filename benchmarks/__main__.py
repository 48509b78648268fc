"""``python -m benchmarks [--quick] [name ...]``: any of request, lines, http, procs, redact,
tasks, dashboard, instructions (default: all but ``instructions``, which needs valgrind and
takes 10+ minutes).

``python -m benchmarks specialized [variant ...]`` lists the attribute sites of the request path
that CPython leaves unspecialized (see :mod:`benchmarks.specialized`; it measures nothing).

``python -m benchmarks instructions [options] [variant ...]`` runs the callgrind benchmark with its
own options (``--n1``, ``--n2``, ``--warmup``, ``--jobs``, ``--json``; see ``--help``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

BENCHES = ("request", "lines", "http", "procs", "redact", "tasks", "dashboard")
#: Run only when named.
ON_DEMAND = ("instructions",)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["instructions"]:  # a subcommand with options of its own
        from . import instructions

        return instructions.main(argv[1:])
    if argv[:1] == ["specialized"]:
        from . import specialized

        return specialized.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="name",
        help=f"any of {', '.join(BENCHES + ON_DEMAND)} (default: all but {', '.join(ON_DEMAND)})",
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds (well under a minute)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHES + ON_DEMAND]
    if unknown:
        parser.error(
            f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHES + ON_DEMAND)}"
        )
    names = args.names or list(BENCHES)
    print(
        f"# flask-diaglog benchmarks: python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}{' (quick)' if args.quick else ''}",
        flush=True,
    )
    for name in names:
        t0 = time.monotonic()
        module = __import__(f"benchmarks.{name}", fromlist=["run"])
        out = module.run(quick=args.quick)
        print(f"\n{out}\n\n({name}: {time.monotonic() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
