"""``flask diaglog`` and the standalone ``diaglog``: tail, trace and summarise the log files of
one or several hosts; show the resolved configuration.

One click group serves both. Through the ``flask.commands`` entry point it is in every Flask app's
CLI and reads the app's ``DIAGLOG_LOG_DIR``; as the ``diaglog`` console script (:func:`main`) it
needs no app: ``--log-dir DIR`` (repeat it, one per host), else ``DIAGLOG_LOG_DIR`` or its default.
Reading, merging and statistics are :mod:`~flask_diaglog.logread`'s, following across rotations
(``tail -f``) :mod:`~flask_diaglog.follow`'s; this module selects and draws (tables, the stage
waterfall, the progress bar).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click
from flask.cli import ScriptInfo

from .config import KEYS, ConfigError, shown
from .config import log_dir as configured_log_dir
from .escapes import ESCAPES, JSON_ESCAPES
from .follow import Follower
from .linecheck import unsurrogate
from .logread import (
    LogRecord,
    Scan,
    Span,
    files_of,
    label_dirs,
    merge_records,
    spans_of,
    summarize,
    trace_records,
)
from .trail import FILES, LEVELS

__all__ = ["diaglog_cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])
Dirs = list[tuple[str, str]]

#: Scans of at least this many bytes show a progress bar when stderr is a terminal.
PROGRESS_FROM = 4 << 20
_META = "flask_diaglog.log_dirs"


def _when(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``--since``/``--until``: ``15m``, ``2h``, ``1d``, ``30s`` ago, or an ISO 8601 time."""
    if not value:
        return None
    text = value.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
            return time.time() - float(text[:-1]) * units[text[-1]]
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(
            "use 30s, 15m, 2h or 1d (ago), or a time such as 2026-11-22T10:15 or 2026-11-22 10:15"
        ) from None


_LOG_DIR_HELP = (
    "Log directory (repeat for several hosts; LABEL=DIR names one). "
    "Default: the app's DIAGLOG_LOG_DIR."
)
_OPTIONS = (
    click.option(
        "--log-dir", "--dir", "log_dirs", multiple=True, type=click.Path(), help=_LOG_DIR_HELP
    ),
    click.option("--since", callback=_when, help="Only lines from then on: 1h, 30m or a time."),
    click.option("--until", callback=_when, help="Only lines up to then: 1h, 30m or a time."),
    click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table."),
)


def _scan_options(fn: F) -> F:
    for option in reversed(_OPTIONS):
        fn = option(fn)
    return fn


def _dirs(ctx: click.Context, given: Sequence[str]) -> Dirs:
    """The ``(label, path)`` log directories: ``--log-dir`` of the group and the command, else
    the app's (under ``flask``), else ``DIAGLOG_LOG_DIR`` or its default (standalone)."""
    given = (*ctx.meta.get(_META, ()), *given)
    try:
        if not given:
            info = ctx.find_object(ScriptInfo)
            given = (configured_log_dir(_load_app(info).config if info else None),)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    # Each directory once (by its resolved path; the first spelling wins), else read twice.
    paths = [os.path.realpath(path) for _, path in label_dirs(given)]
    dirs = label_dirs([text for i, text in enumerate(given) if paths.index(paths[i]) == i])
    for _, path in dirs:
        if not os.path.isdir(path):
            what = "is not a directory" if os.path.exists(path) else "does not exist"
            raise click.ClickException(f"log directory {path} {what}")
    return dirs


def _load_app(info: ScriptInfo) -> Any:
    try:
        return info.load_app()
    except Exception as exc:
        raise click.UsageError(
            f"Could not load the app to find DIAGLOG_LOG_DIR ({exc}). Use --app or --log-dir."
        ) from exc


@contextlib.contextmanager
def _scan(
    dirs: Dirs, names: Iterable[str], since: float | None, say: bool = True
) -> Iterator[Scan]:
    """A :class:`~flask_diaglog.logread.Scan`, drawn as a progress bar on stderr when it is a
    terminal and the files are big; with ``say``, the files it could not read are then named on
    stderr (each once per command)."""
    total = 0
    for _, _, path in files_of(dirs, names, since):
        with contextlib.suppress(OSError):  # gone since: the scan names it
            total += os.path.getsize(path)
    if total < PROGRESS_FROM or not sys.stderr.isatty():
        scan = Scan()
        yield scan
    else:
        with click.progressbar(length=total, label="reading logs", file=sys.stderr) as bar:
            scan = Scan(progress=bar.update)
            yield scan
    if say:
        _say(scan)


def _say(scan: Scan, skipped: bool = False) -> None:
    """Name on stderr the files ``scan`` could not read (each once per command); with
    ``skipped``, say how many of its lines were skipped, in ``summary``'s words, when more were
    than when it last said so."""
    meta = click.get_current_context().meta
    said = meta.setdefault("flask_diaglog.said", set())
    for text in _unread(scan):
        if text not in said:
            said.add(text)
            click.echo(text, err=True)
    if skipped and scan.skipped > meta.get("flask_diaglog.told", 0):
        meta["flask_diaglog.told"] = scan.skipped
        click.echo(scan.skipped_note(), err=True)


def _unread(scan: Scan) -> list[str]:
    """Lines naming the files a scan could not read (whole, or to their end)."""
    out = [f"skipped, cannot be read: {_safe(what)}" for what in scan.unreadable]
    return out + [f"damaged, read up to the damage: {_safe(path)}" for path in scan.damaged]


def _safe(text: str) -> str:
    """Text fit for a terminal: controls escaped as the plain layout escapes them, and a lone
    surrogate (a path's undecodable bytes) as the text ``\\udXXX``."""
    return text if text.isprintable() else unsurrogate(text.translate(ESCAPES))


def _echo_json(obj: Any) -> None:
    """One JSON object on one line for every splitter (``str.splitlines()`` too): line breaks
    and terminal controls in it (U+2028, U+2029, NEL and the other C1 controls) escaped as the
    JSON layout escapes them."""
    text = json.dumps(obj, default=str, ensure_ascii=False)
    click.echo(text if text.isprintable() else unsurrogate(text.translate(JSON_ESCAPES)))


@click.group("diaglog")
@click.option(
    "--log-dir", "--dir", "log_dirs", multiple=True, type=click.Path(), help=_LOG_DIR_HELP
)
@click.pass_context
def diaglog_cli(ctx: click.Context, log_dirs: tuple[str, ...]) -> None:
    """Read flask-diaglog's log files: tail, trace one id, summarise (several hosts merged)."""
    ctx.meta[_META] = log_dirs


def main(args: Sequence[str] | None = None) -> None:
    """The ``diaglog`` console script: the same commands, for a box that has only the logs."""
    diaglog_cli.main(args=args, prog_name="diaglog")


# -- tail --------------------------------------------------------------------------------------


def _status(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> Callable[[Any], bool] | None:
    """``--status``: a status from 100 to 599 (``503``) or a class from 1xx to 5xx (``5xx``)."""
    if value is None:
        return None
    spec = value.strip().lower()
    if len(spec) == 3 and spec[0] in "12345" and spec[1:] == "xx":
        return lambda s: isinstance(s, int) and s // 100 == int(spec[0])
    if spec.isascii() and spec.isdigit() and 100 <= int(spec) <= 599:
        return lambda s: s == int(spec)
    raise click.BadParameter(
        f"{value!r}: use a status from 100 to 599 such as 503, or a class from 1xx to 5xx"
    )


def _filter(
    level: str | None,
    job: str | None,
    request: str | None,
    status_ok: Callable[[Any], bool] | None,
    min_ms: float | None,
) -> Callable[[LogRecord], bool]:
    minimum = LEVELS[level] if level else 0

    def keep(rec: LogRecord) -> bool:
        d = rec.data
        return (
            (not minimum or LEVELS.get(str(d.get("level")), 0) >= minimum)
            and (job is None or rec.job_id == job)
            and (request is None or rec.request_id == request)
            and (status_ok is None or status_ok(d.get("status")))
            and (min_ms is None or float(d.get("duration_ms") or 0.0) >= min_ms)
        )

    return keep


@diaglog_cli.command("tail")
@_scan_options
@click.option(
    "-n",
    "--lines",
    "count",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Lines to show.",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@click.option(
    "--file",
    "which",
    type=click.Choice([*FILES, "all"]),
    default=None,
    help="File to read [default: requests; all with --job or --request].",
)
@click.option("--level", type=click.Choice(list(LEVELS)), default=None, help="Minimum level.")
@click.option("--job", "job_id", default=None, help="Only lines of this job id.")
@click.option("--request", "request_id", default=None, help="Only lines of this request id.")
@click.option("--status", callback=_status, help="Only end lines with this status: 503, 5xx, 4xx.")
@click.option(
    "--min-ms", type=click.FloatRange(min=0), help="Only lines of at least this duration."
)
@click.pass_context
def tail_cmd(
    ctx: click.Context,
    log_dirs: tuple[str, ...],
    since: float | None,
    until: float | None,
    as_json: bool,
    count: int,
    follow: bool,
    which: str | None,
    level: str | None,
    job_id: str | None,
    request_id: str | None,
    status: Callable[[Any], bool] | None,
    min_ms: float | None,
) -> None:
    """The last lines, backups included, filtered; -f follows new lines across rotations.

    ``--file all`` reads requests.log and jobs.log (errors.log repeats their ERROR lines)."""
    dirs = _dirs(ctx, log_dirs)
    if which is None:
        which = "all" if job_id or request_id else "requests"
    names = ("requests", "jobs") if which == "all" else (which,)
    keep = _filter(level, job_id, request_id, status, min_ms)
    several = len(dirs) > 1

    def show(rec: LogRecord) -> None:
        if as_json:
            _echo_json(rec.to_dict())
        else:
            text = _safe(rec.text())  # a plain line as read: a crafted one may hold controls
            click.echo(f"{_safe(rec.host)}  {text}" if several else text)

    with Follower(dirs, names, lambda rec: show(rec) if keep(rec) else None) as follower:
        if follow:
            follower.mark()  # before the scan: no line falls in between
        with _scan(dirs, names, since) as scan:
            records = merge_records(dirs, names, since=since, until=until, scan=scan)
            last = deque((r for r in records if keep(r)), maxlen=count)
        for rec in last:
            show(rec)
        _say(scan, skipped=True)
        if follow:
            follower.scan = scan  # one count for the whole command
            with contextlib.suppress(KeyboardInterrupt):
                follower.run(after=lambda: _say(scan, skipped=True))


# -- trace -------------------------------------------------------------------------------------

_BAR_WIDTH = 40
#: A bar's character by how its work ended (:attr:`Span.outcome`); ``#`` otherwise (it ended
#: well, or has no end line yet).
_FILL = {"failed": "!", "retried": "~"}


def _bar(span: Span, t0: float, total: float, last: float) -> str:
    start = (span.start - t0) / total * _BAR_WIDTH
    end = ((span.end if span.end is not None else last) - t0) / total * _BAR_WIDTH
    a = min(round(start), _BAR_WIDTH - 1)
    b = max(a + 1, min(round(end), _BAR_WIDTH))
    fill = _FILL.get(span.outcome or "", "#")
    return " " * a + fill * (b - a) + " " * (_BAR_WIDTH - b)


def _waterfall(spans: list[Span], several: bool) -> list[str]:
    """The requests and jobs of a trace as bars on one time axis, each stage under its owner
    (``#`` done, ``!`` failed, ``~`` a job attempt run again; a bar without an end runs to the
    last line)."""
    rows = [s for span in spans for s in [span, *span.stages]]
    t0 = min(s.start for s in rows)
    last = max(s.end or s.start for s in rows)
    total = max(last - t0, 1e-6)
    out = [f"waterfall: 0 to {total * 1000:.2f} ms, one # is {total * 1000 / _BAR_WIDTH:.2f} ms"]
    for s in rows:
        if s.kind == "stage":
            name = "  " * s.depth + s.name
        else:
            name = f"{'job ' if s.kind == 'job' else ''}{s.name}{f' @{s.host}' if several else ''}"
        ms = f"{s.duration_ms:.2f} ms" if s.duration_ms is not None else "(no end)"
        out.append(f"  {_safe(name)[:44]:<44} {ms:>12} |{_bar(s, t0, total, last)}|")
    return out


@diaglog_cli.command("trace")
@_scan_options
@click.argument("ident")
@click.pass_context
def trace_cmd(
    ctx: click.Context,
    log_dirs: tuple[str, ...],
    since: float | None,
    until: float | None,
    as_json: bool,
    ident: str,
) -> None:
    """Every line of one request id or job id, from all files, backups and hosts, in time order,
    with tracebacks unfolded and a stage waterfall. A job id brings the request that created it."""
    dirs = _dirs(ctx, log_dirs)

    def read() -> Iterator[LogRecord]:
        with _scan(dirs, FILES, since) as scan:
            yield from merge_records(dirs, FILES, since=since, until=until, scan=scan)

    found = trace_records(ident, read)
    if not found:
        places = ", ".join(path for _, path in dirs)
        raise click.ClickException(f"no line has request id or job id {ident!r} in {places}")
    if as_json:
        for rec in found:
            _echo_json(rec.to_dict())
        return
    hosts = sorted({rec.host for rec in found})
    several = len(hosts) > 1
    t0 = found[0].ts
    first = datetime.fromtimestamp(t0 + 5e-7).isoformat(sep=" ", timespec="milliseconds")
    click.echo(f"{ident}: {len(found)} lines from {_safe(', '.join(hosts))}, starting {first}")
    width = max(len(_safe(h)) for h in hosts)
    for rec in found:
        host = f"{_safe(rec.host):<{width}}  " if several else ""
        d = rec.data
        msg = _safe(str(d.get("msg", "")))
        offset = f"+{(rec.ts - t0) * 1000:.0f}ms"
        click.echo(f"{offset:>10}  {host}{rec.file:<8} {_safe(str(d.get('level', ''))):<8} {msg}")
        if d.get("exc"):
            for line in str(d["exc"]).split("\n"):
                click.echo(f"{'':>10}  | {_safe(line)}")
    spans = spans_of(found)
    if spans:
        click.echo("")
        for line in _waterfall(spans, several):
            click.echo(line)


# -- summary -----------------------------------------------------------------------------------


def _table(head: Sequence[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Rows under a header: the first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [list(head), *rows]) for i in range(len(head))]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            f"{c:<{w}}" if i < left else f"{c:>{w}}"
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [fmt(head), *[fmt(r) for r in rows]]


def _stats_rows(table: dict[str, dict[str, Any]], total: bool) -> list[list[str]]:
    rows = []
    for key, s in table.items():
        row = [_safe(key), str(s["count"]), str(s["errors"]), f"{s['error_rate'] * 100:.1f}"]
        row += [f"{s[k]:.2f}" for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")]
        rows.append(row + ([f"{s['total_ms']:.2f}"] if total else []))
    return rows


_PCTS = ["p50 ms", "p95 ms", "p99 ms", "max ms"]


@diaglog_cli.command("summary")
@_scan_options
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Slowest requests to list.",
)
@click.pass_context
def summary_cmd(
    ctx: click.Context,
    log_dirs: tuple[str, ...],
    since: float | None,
    until: float | None,
    as_json: bool,
    top: int,
) -> None:
    """Per route, stage and job: count, errors, error rate, p50/p95/p99/max ms; the failed jobs
    with their errors; the slowest requests. Paths that match no route are one row."""
    dirs = _dirs(ctx, log_dirs)
    names = ("requests", "jobs")
    with _scan(dirs, names, since, say=False) as scan:
        records = merge_records(dirs, names, since=since, until=until, scan=scan)
        result = summarize(records, slowest=top)
    result.update(lines=scan.lines, skipped=scan.skipped, damaged=scan.damaged)
    result["unreadable"] = scan.unreadable
    result["hosts"] = [label for label, _ in dirs]
    if as_json:
        _echo_json(result)
        return
    notes = []
    if scan.skipped:
        notes.append(scan.skipped_note())
    notes += _unread(scan)
    if not result["routes"] and not result["stages"] and not result["jobs"]:
        click.echo("\n".join(["no finished requests, stages or jobs in the logs", *notes]))
        return
    out: list[str] = []
    if result["routes"]:
        head = ["route", "count", "5xx", "err %", *_PCTS]
        out += _table(head, _stats_rows(result["routes"], False))
    if result["stages"]:
        head = ["stage", "count", "failed", "fail %", *_PCTS, "total ms"]
        out += ["", *_table(head, _stats_rows(result["stages"], True))]
    if result["jobs"]:
        head = ["job", "count", "failed", "fail %", *_PCTS, "total ms"]
        out += ["", *_table(head, _stats_rows(result["jobs"], True))]
    out += ["", f"failed background jobs: {result['failed_jobs']}"]
    if result["failed"]:
        rows = [
            [_safe(str(f[k])) for k in ("job_id", "name", "error", "host", "ts")]
            for f in result["failed"]
        ]
        out += ["  " + line for line in _table(["job id", "name", "error", "host", "at"], rows, 5)]
    if result["slowest"]:
        rows = [
            [_safe(f"{r['method']} {r['path']}"), str(r["status"]), f"{r['duration_ms']:.2f}",
             *(_safe(str(r[k] or "-")) for k in ("request_id", "job_id", "host", "ts"))]
            for r in result["slowest"]
        ]  # fmt: skip
        head = ["slowest requests", "status", "ms", "request id", "job id", "host", "at"]
        out += ["", *_table(head, rows)]
    out += ["", *notes] if notes else []
    click.echo("\n".join(out).lstrip("\n"))


@diaglog_cli.command("config")
@click.pass_context
def config_cmd(ctx: click.Context) -> None:
    """The resolved DIAGLOG_* configuration of the app (after environment overrides)."""
    app = _load_app(ctx.ensure_object(ScriptInfo))
    if "diaglog" not in app.extensions:
        raise click.ClickException("this app does not use DiagLog")
    for key in KEYS:
        click.echo(f"{key.name} = {shown(key, app.config.get(key.name, key.default))}")
