"""(e) Instructions per request under callgrind: the deterministic counterpart of (a).

Wall time on this shared 2-core machine moves by several percent from one minute to the next,
which is as large as the differences worth measuring. Callgrind counts the instructions the
process executes (``Ir``) instead: the count does not depend on the other load on the machine or
on the CPU's clock, so two runs of the same code give the same figure to a few parts in 10^5,
and a change of a few hundred instructions per request is visible. It is not a time (a cache
miss and an add count the same), so it complements (a) and (c); it does not replace them.

Method, per variant (the same trivial JSON view ``GET /`` as in (a), built by the builders of
``benchmarks/request.py``):

* a fresh ``valgrind --tool=callgrind .venv/bin/python -m benchmarks.instructions drive ...``
  builds the app, makes ``W`` warm-up requests with the Flask test client, then ``N`` more;
* it runs twice, for ``N = N1`` and ``N = N2``, so that
  ``instructions per request = (Ir(N2) - Ir(N1)) / (N2 - N1)``: interpreter start-up, imports,
  app set-up and the warm-up are the same in both runs and cancel;
* a fixed ``PYTHONHASHSEED`` and log directory per run (wiped first) keep each run repeatable;
* each variant is measured under several hash seeds (``--seeds``, default 1, 2 and 3) and the
  mean is reported, with the spread: where objects land in memory decides which attribute names
  collide in CPython's type attribute cache, and a change anywhere in the program (a new
  constant, a longer path) moves the same code's count by up to 3 k instructions per request.
  Another seed (and a run directory of another length) is another layout; their mean is the
  figure, half their range the spread;
* what still varies (timestamps crossing a second, random request ids, the watchdog thread's
  wake-ups) is far below a per-request difference worth reporting;
* at most ``--jobs`` (default 2) valgrind processes at once; the two runs of one variant go
  together, so they see the same code.

The callgrind files are kept next to the logs (``--log-root``, default
``$TMPDIR/diaglog-instructions``): ``callgrind_annotate`` on the two files of a variant shows
where its instructions go.

``python -m benchmarks instructions [--n1 100] [--n2 600] [--warmup 50] [--seeds 1,2,3] [--json]
[variant ...]``
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flask import Flask

from . import request as req
from ._common import table

REPO = Path(__file__).resolve().parents[1]

#: name: (label, builder). Every builder takes a log directory and returns the app.
VARIANTS: dict[str, tuple[str, Callable[[Path], Flask]]] = {
    "bare": ("bare Flask", req.bare),
    "floor": ("floor: the same 2 lines and 2 headers, no features", req.floor),
    "floor_stage": ("floor + one stage: its line, header entry and end-line word", req.floor_stage),
    "diaglog": ("DiagLog(app), default config (plain lines)", req.diaglog),
    "stage": ("DiagLog(app) + one timed stage", req.diaglog_stage),
    "json": ("DiagLog(app), DIAGLOG_FORMAT=json", req.diaglog_json),
    "signal": ("DiagLog(app) + one no-op request_end receiver", req.diaglog_signal),
    "request_id": ("flask-log-request-id (request id only, no line)", req.log_request_id),
    "handwritten": ("hand-written hooks, 2 lines via RotatingFileHandler", req.handwritten),
}
#: The variants whose overhead is also given relative to the floor's.
DIAGLOG_VARIANTS = ("diaglog", "stage", "json", "signal")


# -- the driver (runs inside valgrind) ---------------------------------------------------------


def build(variant: str, log_dir: Path) -> Flask:
    return VARIANTS[variant][1](log_dir)


def serve(app: Flask, warmup: int, n: int) -> int:
    """``warmup`` then ``n`` requests to ``GET /``; each must answer 200 ``{"ok": true}``.
    Returns the number of requests served."""
    get = app.test_client().get
    served = 0
    for i in range(warmup + n):
        if i == warmup:
            # Everything alive after the warm-up (the interpreter, Flask, the app) is moved out
            # of the collector's reach: a full collection then costs what the requests left, not
            # what the process imported, and no longer makes the count jump by thousands per
            # request depending on where in the window it falls.
            gc.collect()
            gc.freeze()
        response = get("/")
        if response.status_code != 200 or response.get_data() != b'{"ok":true}\n':
            raise RuntimeError(f"GET / answered {response.status} {response.get_data()!r}")
        served += 1
    return served


def driver_command(variant: str, log_dir: Path, warmup: int, n: int) -> list[str]:
    """The command valgrind runs (from the repository root)."""
    return [
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "drive",
        variant,
        str(log_dir),
        str(warmup),
        str(n),
    ]


def _drive(argv: Sequence[str]) -> int:
    variant, log_dir, warmup, n = argv
    served = serve(build(variant, Path(log_dir)), int(warmup), int(n))
    print(f"ok {served}", flush=True)
    return 0


# -- callgrind ---------------------------------------------------------------------------------


def read_total(path: Path, event: str = "Ir") -> int:
    """The total count of ``event`` in a callgrind output file: the sum of its ``totals:`` lines
    (one per dumped part), or of its ``summary:`` lines if it has none."""
    events: list[str] | None = None
    totals: list[list[str]] = []
    summaries: list[list[str]] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("totals:"):
                totals.append(line.split()[1:])
            elif line.startswith("summary:"):
                summaries.append(line.split()[1:])
    parts = totals or summaries
    if events is None or not parts:
        raise ValueError(f"{path}: no 'events:' line or no 'totals:'/'summary:' line")
    if event not in events:
        raise ValueError(f"{path}: event {event} not collected (events: {' '.join(events)})")
    i = events.index(event)
    return sum(int(values[i]) if i < len(values) else 0 for values in parts)


def callgrind(variant: str, n: int, warmup: int, run_dir: Path, seed: int = 1) -> int:
    """One run under callgrind with ``PYTHONHASHSEED=seed``; returns its total ``Ir``."""
    log_dir = run_dir / "logs"
    out = run_dir / "callgrind.out"
    shutil.rmtree(run_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        *driver_command(variant, log_dir, warmup, n),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or proc.stdout.split() != ["ok", str(warmup + n)]:
        raise RuntimeError(
            f"{variant} N={n}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
        )
    return read_total(out)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One run per log root at a time (the run directories are fixed, so they would clash)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"{root} is in use by another run; pass another --log-root") from None
        yield


def measure(
    names: Sequence[str],
    *,
    n1: int,
    n2: int,
    warmup: int,
    seeds: Sequence[int] = (1, 2, 3),
    jobs: int = 2,
    root: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[tuple[int, int]]]:
    """``{variant: [(Ir at N1, Ir at N2) for each seed]}``."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    if not 0 <= n1 < n2:
        raise SystemExit("need 0 <= --n1 < --n2")
    if not seeds:
        raise SystemExit("need at least one seed")
    root = root or Path(tempfile.gettempdir()) / "diaglog-instructions"
    tasks = [
        (name, seed, n, tag)
        for name in names
        for seed in seeds
        for n, tag in ((n1, "a"), (n2, "b"))
    ]

    def one(task: tuple[str, int, int, str]) -> int:
        name, seed, n, tag = task
        # The directory's name grows with the seed: a path of another length is another layout
        # too (it moved the same code's count by up to 3 k under one seed).
        total = callgrind(name, n, warmup, root / name / f"seed{seed}{'-' * seed}" / tag, seed)
        if progress:
            progress(f"{name} seed {seed} N={n}: {total:,} Ir")
        return total

    with _locked(root), ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        totals = list(pool.map(one, tasks))
    k = len(seeds)
    return {
        name: [(totals[2 * (i * k + j)], totals[2 * (i * k + j) + 1]) for j in range(k)]
        for i, name in enumerate(names)
    }


# -- the report --------------------------------------------------------------------------------


def results(totals: dict[str, list[tuple[int, int]]], n1: int, n2: int) -> dict[str, Any]:
    """Per-request instructions (the mean over the seeds), overheads and the derived figures, as
    plain data. ``spread`` is half the range of a variant's per-seed figures."""
    per_seed = {
        name: [(b - a) / (n2 - n1) for a, b in runs] for name, runs in totals.items() if runs
    }
    per = {name: sum(v) / len(v) for name, v in per_seed.items()}
    bare = per.get("bare")
    floor_over = per["floor"] - bare if bare is not None and "floor" in per else None
    variants: dict[str, dict[str, Any]] = {}
    for name, runs in totals.items():
        if name not in per:
            continue
        over = per[name] - bare if bare is not None else None
        vs_floor = None
        if name in DIAGLOG_VARIANTS and over is not None and floor_over:
            vs_floor = over / floor_over
        variants[name] = {
            "label": VARIANTS[name][0],
            "runs": [list(r) for r in runs],
            "per_seed": per_seed[name],
            "per_request": per[name],
            "spread": (max(per_seed[name]) - min(per_seed[name])) / 2,
            "overhead": over,
            "overhead_vs_floor": vs_floor,
        }
    derived: dict[str, float | None] = {}
    if bare is not None and "json" in per and "diaglog" in per and per["diaglog"] != bare:
        derived["json_plain_overhead_ratio"] = (per["json"] - bare) / (per["diaglog"] - bare)
    if "stage" in per and "diaglog" in per:
        derived["per_stage"] = per["stage"] - per["diaglog"]
    if "floor_stage" in per and "floor" in per:
        derived["floor_per_stage"] = per["floor_stage"] - per["floor"]
    if "signal" in per and "diaglog" in per:
        derived["per_signal_event"] = per["signal"] - per["diaglog"]
    return {"variants": variants, "derived": derived}


def markdown(res: dict[str, Any], n1: int, n2: int, warmup: int) -> str:
    def k(x: float | None, sign: str = "") -> str:
        return "-" if x is None else f"{x / 1000:{sign}.1f}"

    rows = []
    for name, v in res["variants"].items():
        over = "-" if name == "bare" else k(v["overhead"], "+")
        ratio = v["overhead_vs_floor"]
        rows.append(
            [
                name,
                v["label"],
                k(v["per_request"]),
                f"±{v['spread'] / 1000:.1f}",
                over,
                "-" if ratio is None else f"{ratio:.2f}x",
            ]
        )
    seeds = len(next(iter(res["variants"].values()))["per_seed"]) if res["variants"] else 0
    head = (
        "(e) instructions per request under callgrind, Flask test client, trivial JSON view: "
        f"(Ir(N={n2}) - Ir(N={n1})) / {n2 - n1}, after {warmup} warm-up requests, mean of "
        f"{seeds} hash seeds (± half their range); k = 1000 instructions"
    )
    out = [
        head,
        "",
        table(
            [
                "variant",
                "what",
                "k instr/request",
                "spread",
                "overhead vs bare (k)",
                "overhead / floor's",
            ],
            rows,
        ),
    ]
    d = res["derived"]
    lines = []
    if "json_plain_overhead_ratio" in d:
        lines.append(f"json/plain overhead ratio: {d['json_plain_overhead_ratio']:.2f}x")
    if "per_stage" in d:
        lines.append(f"per stage (stage - diaglog): {k(d['per_stage'], '+')} k instructions")
    if "floor_per_stage" in d:
        floor_stage = k(d["floor_per_stage"], "+")
        lines.append(f"the floor's stage (floor_stage - floor): {floor_stage} k instructions")
    if "per_signal_event" in d:
        lines.append(
            f"per signal event (signal - diaglog, one request_end per request): "
            f"{k(d['per_signal_event'], '+')} k instructions"
        )
    if lines:
        out += ["", *lines]
    return "\n".join(out)


def _valgrind_version() -> str:
    try:
        return subprocess.run(
            ["valgrind", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return "?"


def run(quick: bool = False) -> str:
    """The whole table (``quick``: fewer requests, and so a little less exact)."""
    n1, n2, warmup = (20, 120, 20) if quick else (100, 600, 50)
    totals = measure(
        list(VARIANTS), n1=n1, n2=n2, warmup=warmup, seeds=(1,) if quick else (1, 2, 3)
    )
    return markdown(results(totals, n1, n2), n1, n2, warmup)


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not seeds or any(not 0 <= s <= 4294967295 for s in seeds):
        raise argparse.ArgumentTypeError("seeds are integers from 0 to 4294967295")
    return seeds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks instructions",
        description="Instructions per request under callgrind (deterministic; see the module).",
    )
    parser.add_argument(
        "names", nargs="*", metavar="variant", help=f"any of {', '.join(VARIANTS)} (default: all)"
    )
    parser.add_argument("--n1", type=int, default=100, help="requests in the short run (100)")
    parser.add_argument("--n2", type=int, default=600, help="requests in the long run (600)")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up requests (50)")
    parser.add_argument(
        "--seeds",
        type=_seeds,
        default=(1, 2, 3),
        help="PYTHONHASHSEED values, comma-separated; the figures are their mean (1,2,3)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="valgrind processes at once (2)")
    parser.add_argument("--log-root", type=Path, default=None, help="logs and callgrind files")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    names = list(dict.fromkeys(args.names)) or list(VARIANTS)
    totals = measure(
        names,
        n1=args.n1,
        n2=args.n2,
        warmup=args.warmup,
        seeds=args.seeds,
        jobs=args.jobs,
        root=args.log_root,
        progress=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    res = results(totals, args.n1, args.n2)
    if args.json:
        meta = {
            "python": platform.python_version(),
            "valgrind": _valgrind_version(),
            "n1": args.n1,
            "n2": args.n2,
            "warmup": args.warmup,
            "seeds": list(args.seeds),
        }
        print(json.dumps({**meta, **res}, indent=2))
    else:
        print(markdown(res, args.n1, args.n2, args.warmup))
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(_drive(args[1:]) if args[:1] == ["drive"] else main(args))
