"""``flask diaglog``: tail, trace and summarise the log files; show the resolved configuration.

Registered through the ``flask.commands`` entry point, so it appears in every Flask app's CLI.
The log directory comes from the app's ``DIAGLOG_LOG_DIR``, or from ``--dir`` (no app needed).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import click
from flask.cli import ScriptInfo

from .config import KEYS, ConfigError, shown
from .config import log_dir as configured_log_dir
from .logread import parse_line, read_records, summarize
from .trail import FILES, LEVELS

__all__ = ["diaglog_cli"]

_DIR = click.option(
    "--dir",
    "log_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Log directory (default: the app's DIAGLOG_LOG_DIR).",
)


def _log_dir(ctx: click.Context, log_dir: str | None) -> str:
    if log_dir:
        return log_dir
    info = ctx.ensure_object(ScriptInfo)
    try:
        app = info.load_app()
    except Exception as exc:
        raise click.UsageError(
            f"Could not load the app to find DIAGLOG_LOG_DIR ({exc}). Use --app or --dir."
        ) from exc
    try:
        return configured_log_dir(app.config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _check_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise click.ClickException(f"log directory {path} does not exist")


@click.group("diaglog")
def diaglog_cli() -> None:
    """Read flask-diaglog's log files."""


@diaglog_cli.command("tail")
@_DIR
@click.option("-n", "--lines", "count", default=20, show_default=True, help="Lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@click.option(
    "--file",
    "which",
    type=click.Choice([*FILES, "all"]),
    default="requests",
    show_default=True,
)
@click.option("--level", type=click.Choice(list(LEVELS)), default=None, help="Minimum level.")
@click.pass_context
def tail_cmd(
    ctx: click.Context, log_dir: str | None, count: int, follow: bool, which: str, level: str | None
) -> None:
    """Show the last lines of a log file (follows rotation with -f)."""
    directory = _log_dir(ctx, log_dir)
    _check_dir(directory)
    names = FILES if which == "all" else (which,)
    minimum = LEVELS[level] if level else 0

    def keep(line: str) -> bool:
        if not minimum:
            return True
        rec = parse_line(line)
        return rec is not None and LEVELS.get(str(rec.data.get("level")), 0) >= minimum

    recs = sorted(
        (rec for rec in read_records(directory, names) if keep(rec.raw)), key=lambda r: r.ts
    )
    for rec in recs[-count:] if count > 0 else []:
        click.echo(rec.raw)
    if not follow:
        return
    positions: dict[str, tuple[int, int]] = {}
    for name in names:
        path = os.path.join(directory, f"{name}.log")
        if os.path.exists(path):
            st = os.stat(path)
            positions[path] = (st.st_ino, st.st_size)
    try:
        while True:
            for name in names:
                path = os.path.join(directory, f"{name}.log")
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                ino, pos = positions.get(path, (st.st_ino, 0))
                if ino != st.st_ino or st.st_size < pos:
                    pos = 0  # rotated: start the new file from its beginning
                if st.st_size > pos:
                    with open(path, encoding="utf-8", errors="replace") as fh:
                        fh.seek(pos)
                        for line in fh:
                            if line.endswith("\n") and keep(line):
                                click.echo(line.rstrip("\n"))
                        pos = fh.tell()
                positions[path] = (st.st_ino, pos)
            time.sleep(0.25)
    except KeyboardInterrupt:
        return


@diaglog_cli.command("trace")
@_DIR
@click.argument("ident")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON lines.")
@click.pass_context
def trace_cmd(ctx: click.Context, log_dir: str | None, ident: str, as_json: bool) -> None:
    """Every line of one request id or job id, from all files and backups, in time order."""
    directory = _log_dir(ctx, log_dir)
    _check_dir(directory)
    seen: set[str] = set()
    found = []
    for rec in read_records(directory):
        if ident not in (rec.request_id, rec.job_id):
            continue
        if rec.file == "errors" and rec.raw in seen:
            continue  # errors.log repeats lines that are also in requests.log or jobs.log
        seen.add(rec.raw)
        found.append(rec)
    if not found:
        raise click.ClickException(f"no line has request id or job id {ident!r} in {directory}")
    for rec in sorted(found, key=lambda r: r.ts):
        if as_json:
            click.echo(json.dumps({"file": rec.file, **rec.data}, default=str))
        else:
            click.echo(f"{rec.file:<8} {rec.raw}")


_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def _since(text: str | None) -> float:
    if not text:
        return 0.0
    m = _SINCE.match(text.strip())
    if m is None:
        raise click.BadParameter("use a number with s, m, h or d, e.g. 15m or 24h")
    mult = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    return time.time() - float(m[1]) * mult


@diaglog_cli.command("summary")
@_DIR
@click.option("--since", default=None, help="Only records newer than this, e.g. 1h or 30m.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def summary_cmd(ctx: click.Context, log_dir: str | None, since: str | None, as_json: bool) -> None:
    """Per-route counts, 5xx errors and p50/p95/max durations; the stages that cost most."""
    directory = _log_dir(ctx, log_dir)
    _check_dir(directory)
    result = summarize(read_records(directory, ("requests", "jobs")), since=_since(since))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    routes: dict[str, Any] = result["routes"]
    if not routes and not result["stages"]:
        click.echo("no finished requests or stages in the logs")
        return
    width = max([len(k) for k in routes] + [5])
    click.echo(
        f"{'route':<{width}}  {'count':>6} {'5xx':>5} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}"
    )
    for key, r in routes.items():
        click.echo(
            f"{key:<{width}}  {r['count']:>6} {r['errors']:>5} {r['p50_ms']:>9.2f} "
            f"{r['p95_ms']:>9.2f} {r['max_ms']:>9.2f}"
        )
    if result["stages"]:
        swidth = max([len(k) for k in result["stages"]] + [5])
        click.echo("")
        click.echo(f"{'stage':<{swidth}}  {'count':>6} {'total ms':>11} {'p95 ms':>9}")
        for key, s in result["stages"].items():
            click.echo(
                f"{key:<{swidth}}  {s['count']:>6} {s['total_ms']:>11.2f} {s['p95_ms']:>9.2f}"
            )
    click.echo(f"\nfailed background jobs: {result['failed_jobs']}")


@diaglog_cli.command("config")
@click.pass_context
def config_cmd(ctx: click.Context) -> None:
    """The resolved DIAGLOG_* configuration of the app (after environment overrides)."""
    info = ctx.ensure_object(ScriptInfo)
    app = info.load_app()
    if "diaglog" not in app.extensions:
        raise click.ClickException("this app does not use DiagLog")
    for key in KEYS:
        click.echo(f"{key.name} = {shown(key, app.config.get(key.name, key.default))}")
