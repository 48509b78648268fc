"""The vocabulary of the trail: what every line can say, and how to read it back.

This module owns, in one place:

* the event kinds (the ``event`` key) and the logger each kind is written under; level names;
* the file names and the routing rule (requests, jobs, and ERROR and above also to errors);
* for each event kind, the builder of its message text, and beside it the pattern that parses that
  text back into fields (:func:`parse_message`).

Writers (the recorder's producers) build messages here; readers (``logread``, the CLI, the
dashboard) parse them here, so the two cannot drift (a round-trip test checks every kind).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any, Union
from urllib.parse import unquote

from .escapes import ESCAPES, STAGE_NAMES, shown, stage_names, stage_word

__all__ = [
    "ERRORS_FROM",
    "FILES",
    "KINDS",
    "KIND_LOGGER",
    "LEVELS",
    "LEVEL_NAMES",
    "PRINTABLE",
    "file_for",
    "format_float",
    "hang_msg",
    "job_end_msg",
    "job_rejected_msg",
    "job_start_msg",
    "kind_of",
    "level_name",
    "parse_message",
    "progress_msg",
    "request_end_msg",
    "request_error_msg",
    "request_start_msg",
    "stage_end",
    "stage_msg",
    "stage_word",
]

#: ``format_float(x, ".2f")`` is ``f"{x:.2f}"`` for a float (only floats: durations), without the
#: f-string's lookup of ``__format__`` (0.4 k instructions less a number, callgrind).
format_float = float.__format__

# -- kinds and loggers ------------------------------------------------------------------------

#: Every value of the ``event`` key, in the order a request or job produces them.
KINDS = (
    "request_start", "stage", "request_end", "request_error", "log", "job_start", "job_end",
    "job_rejected", "hang", "progress",
)  # fmt: skip

LOGGER_ROOT = "flask_diaglog"
LOGGER_REQUEST = "flask_diaglog.request"
LOGGER_JOB = "flask_diaglog.job"
LOGGER_STAGE = "flask_diaglog.stage"
LOGGER_GUARD = "flask_diaglog.jobs"
LOGGER_WATCHDOG = "flask_diaglog.watchdog"
LOGGER_PROGRESS = "flask_diaglog.progress"

#: The logger name a kind's lines are written under (``log`` lines keep their record's logger).
KIND_LOGGER: dict[str, str] = {
    "request_start": LOGGER_REQUEST,
    "stage": LOGGER_STAGE,
    "request_end": LOGGER_REQUEST,
    "request_error": LOGGER_REQUEST,
    "log": LOGGER_ROOT,
    "job_start": LOGGER_JOB,
    "job_end": LOGGER_JOB,
    "job_rejected": LOGGER_GUARD,
    "hang": LOGGER_WATCHDOG,
    "progress": LOGGER_PROGRESS,
}

#: The fields of the kinds written on every request, in order. Their producers pass the values
#: as a tuple in this order, possibly cut short after the last value (cheaper than a dict on the
#: hot path); :func:`fields_dict` names them.
FIELDS: dict[str, tuple[str, ...]] = {
    "request_start": ("method", "path", "query", "client", "content_type", "testing"),
    "request_end": (
        "method", "path", "route", "status", "duration_ms", "stages", "aborted", "hung", "slow",
        "bad_job_id",
    ),
    "stage": ("stage", "duration_ms", "ok", "error"),
}  # fmt: skip

Fields = Union["Mapping[str, Any]", "tuple[Any, ...]"]


def fields_dict(kind: str, fields: Fields | None) -> dict[str, Any]:
    """The fields of a record as a dict: a tuple is named by :data:`FIELDS`; ``None`` values are
    left out, as in JSON lines."""
    if fields is None:
        return {}
    if type(fields) is tuple:
        # zip's strict=False left unsaid: spelled out, it takes the keyword path (+25 %, timeit)
        return {k: v for k, v in zip(FIELDS[kind], fields) if v is not None}  # noqa: B905
    return dict(fields)


#: The host name every JSON line and event carries (``host``): whose line it is, once merged.
HOST = socket.gethostname()

#: Decimal places of float fields (durations in ms) in JSON lines and ``Event.to_dict()``.
FLOAT_DIGITS = 3

#: Kinds that open an entry of the in-flight registry (the end's producer closes it: see
#: :meth:`flask_diaglog.record.Recorder.close`).
OPENS = frozenset({"request_start", "job_start"})
#: Kinds whose builder escapes what it embeds (no ESCAPES character): a plain line skips its check.
PRINTABLE = frozenset({"stage", "request_end"})

# -- levels -----------------------------------------------------------------------------------

#: Level number to name, for the levels diaglog writes and filters on.
LEVEL_NAMES: dict[int, str] = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}
#: Level name to number.
LEVELS: dict[str, int] = {name: no for no, name in LEVEL_NAMES.items()}


def level_name(level: int) -> str:
    """``INFO`` for 20; ``Level 25`` for a level without a name (as :mod:`logging` says it)."""
    return LEVEL_NAMES.get(level) or f"Level {level}"


# -- files and routing ------------------------------------------------------------------------

#: The files of a log directory, without the ``.log`` suffix.
FILES = ("requests", "jobs", "errors")
#: Lines at this level or above are also written to ``errors.log``.
ERRORS_FROM = 40


def file_for(trace_kind: str | None) -> str:
    """The file a line of a request (``requests``) or a background job (``jobs``) goes to."""
    return "jobs" if trace_kind == "job" else "requests"


def file_name(target: str) -> str:
    """``requests.log`` for ``requests``."""
    return f"{target}.log"


# -- messages: each builder with the pattern that reads it back ---------------------------------


def _parse_stages(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        name, _, ms = part.rpartition(":")
        with contextlib.suppress(ValueError):
            out[unquote(name)] = float(ms)
    return out


def _tail(
    totals: Mapping[str, float] | None,
    aborted: bool,
    hung: int,
    slow: bool,
    bad_job_id: str | None = None,
    word: str | None = None,
) -> str:
    """The optional words of an end line, in a fixed order. ``stages=a:1.20,b:40.31`` is ``word``
    (built by :func:`stage_end`) when given, else made from ``totals`` by a loop."""
    tail = word or ""
    if word is None and totals:
        sep = " stages="
        for k, v in totals.items():
            tail += f"{sep}{stage_word(k)}:{format_float(v, '.2f')}"
            sep = ","
    if aborted:
        tail += " aborted"
    if hung:
        tail += f" was_hung({hung})"
    if slow:
        tail += " slow"
    if bad_job_id is not None:
        tail += " bad_job_id=" + json.dumps(bad_job_id)  # printable ASCII: \u escapes
    return tail


_TAIL = (
    r"(?: stages=(?P<stages>\S+))?(?P<aborted> aborted)?"
    r"(?: was_hung\((?P<hung>\d+)\))?(?P<slow> slow)?"
    r'(?: bad_job_id=(?P<bad>"(?:[^"\\]|\\.)*"))?'
)


def _tail_fields(m: re.Match[str], out: dict[str, Any]) -> None:
    if m["stages"]:
        out["stages"] = _parse_stages(m["stages"])
    if m["aborted"]:
        out["aborted"] = True
    if m["hung"]:
        out["hung"] = int(m["hung"])
    if m["slow"]:
        out["slow"] = True
    if m["bad"]:
        with contextlib.suppress(ValueError):
            out["bad_job_id"] = json.loads(m["bad"])


def request_start_msg(
    method: str | None, target: str, client: str | None, ctype: str | None, testing: str
) -> str:
    """``request_start GET /path?query client=1.2.3.4 type=application/json testing=false``;
    ``target`` is the path with its (redacted) query string; ``testing`` is ``true``/``false``."""
    return f"request_start {method} {target} client={client} type={ctype or '-'} testing={testing}"


_REQUEST_START = re.compile(
    r"request_start (?P<method>\S+) (?P<target>.*?) client=(?P<client>\S*) type=(?P<ctype>\S+)"
    r" testing=(?P<testing>true|false)$"
)


def _request_start_fields(m: re.Match[str]) -> dict[str, Any]:
    path, sep, query = m["target"].partition("?")
    out: dict[str, Any] = {"method": m["method"], "path": path}
    if sep:
        out["query"] = query
    if m["client"] != "None":
        out["client"] = m["client"]
    if m["ctype"] != "-":
        out["content_type"] = m["ctype"]
    out["testing"] = m["testing"] == "true"
    return out


def request_end_msg(
    method: str | None,
    path: str | None,
    status: int | None,
    ms: float,
    route: str | None = None,
    totals: Mapping[str, float] | None = None,
    aborted: bool = False,
    hung: int = 0,
    slow: bool = False,
    bad_job_id: str | None = None,
    word: str | None = None,
) -> str:
    """``request_end GET /p 200 12.34ms [route=/items/<id>] [stages=a:1.00,b:2.00] [aborted]
    [was_hung(n)] [slow] [bad_job_id="a/b"]``.

    ``route`` is the URL rule Flask matched. The word is left out when the rule is the path
    itself, and is ``route=-`` when no rule matched (a 404), so the common line stays short.
    ``bad_job_id`` is an invalid job id the request carried, JSON-quoted; ``word`` the stages
    word from :func:`stage_end`. (All positional: a keyword costs a lookup per call.)
    """
    msg = f"request_end {method} {path} {status} {format_float(ms, '.2f')}ms"
    try:  # printable as built (PRINTABLE): the client's text checked, each part alone (-0.35 k)
        clean = path.isprintable() and method.isprintable()  # type: ignore[union-attr]
    except AttributeError:  # None, shown as "None"
        clean = f"{method}{path}".isprintable()
    if not clean:
        msg = msg.translate(ESCAPES)
    if route != path:  # the app's own rule text: checked all the same
        msg += f" route={shown(route or '-')}"
    if totals or aborted or hung or slow or bad_job_id is not None:
        msg += _tail(totals, aborted, hung, slow, bad_job_id, word)
    return msg


_REQUEST_END = re.compile(
    r"request_end (?P<method>\S+) (?P<path>.*) (?P<status>\d{3}|None) (?P<ms>[\d.]+)ms"
    r"(?: route=(?P<route>\S+))?" + _TAIL + "$"
)


def _request_end_fields(m: re.Match[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"method": m["method"], "path": m["path"], "duration_ms": float(m["ms"])}
    if m["status"] != "None":
        out["status"] = int(m["status"])
    route = m["route"]
    if route is not None and route != "-":  # left out: the rule is the path (or an old line)
        out["route"] = route
    _tail_fields(m, out)
    return out


def request_error_msg(method: str | None, path: str | None, error: str) -> str:
    """``request_error GET /path ValueError: message``."""
    return f"request_error {method} {path} {error}"


_REQUEST_ERROR = re.compile(
    r"request_error (?P<method>\S+) (?P<path>.*?) (?P<error>[A-Za-z_][\w.]*(?:: .*)?)$"
)


def _request_error_fields(m: re.Match[str]) -> dict[str, Any]:
    return {"method": m["method"], "path": m["path"], "error": m["error"]}


def stage_msg(name: str, ms: float, ok: bool, error: str | None = None) -> str:
    """``stage render 12.34ms ok`` or ``stage render 12.34ms failed: ValueError: message``."""
    return stage_end(name, format_float(ms, ".2f"), ok, error, None, None)[0]


#: ``STAGE_NAMES.get`` (a method of an imported name is a generic site in 3.11; never rebound).
_shown_get = STAGE_NAMES.get


def stage_end(
    name: str, text: str, ok: bool, error: str | None, word: str | None, head: str | None
) -> tuple[str, str | None, str | None]:
    """The stage's message (built without a character a line escapes), and ``word`` (the end
    line's ``stages=`` word so far, ``""`` first) and ``head`` (the ``Server-Timing`` entries so
    far) with this stage added; ``None`` stays. ``text``: the run in ms, formatted ``.2f`` once."""
    forms = _shown_get(name) or stage_names(name)  # the cache inline: this runs every stage
    name = forms[0]
    if word is not None:
        word = f"{word},{name}:{text}" if word else f" stages={name}:{text}"
    if head is not None:
        head = f"{head}{forms[1]};dur={text}, "  # as stage_entries() makes it
    if ok:
        return f"stage {name} {text}ms ok", word, head
    return f"stage {name} {text}ms failed: {shown(str(error))}", word, head


_STAGE = re.compile(r"stage (?P<stage>\S+) (?P<ms>[\d.]+)ms (?:(?P<ok>ok)|failed: (?P<error>.*))$")


def _stage_fields(m: re.Match[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"stage": unquote(m["stage"]), "duration_ms": float(m["ms"])}
    return {**out, "ok": True} if m["ok"] else {**out, "ok": False, "error": m["error"]}


def job_start_msg(name: str, attempt: int | None = None) -> str:
    """``job_start module.function [attempt=N]``: ``attempt`` of a retried task, from 2."""
    return f"job_start {name}" + (f" attempt={attempt}" if attempt and attempt > 1 else "")


_JOB_START = re.compile(r"job_start (?P<name>\S+)(?: attempt=(?P<attempt>\d+))?$")


def _job_start_fields(m: re.Match[str]) -> dict[str, Any]:
    return {"name": m["name"], **({"attempt": int(m["attempt"])} if m["attempt"] else {})}


def job_end_msg(
    name: str,
    ok: bool,
    ms: float,
    totals: Mapping[str, float] | None = None,
    *,
    error: str | None = None,
    hung: int = 0,
    aborted: bool = False,
    word: str | None = None,
    retried: bool = False,
) -> str:
    """``job_end fn ok|failed|retried 12.34ms [stages=..] [aborted] [was_hung(n)][: <error>]``."""
    msg = f"job_end {name} {'ok' if ok else 'retried' if retried else 'failed'} {ms:.2f}ms"
    if totals or aborted or hung:
        msg += _tail(totals, aborted, hung, False, None, word)
    if not ok:
        msg += f": {error}"
    return msg


_JOB_END = re.compile(
    r"job_end (?P<name>\S+) (?P<ok>ok|failed|retried) (?P<ms>[\d.]+)ms"
    + (_TAIL + r"(?:: (?P<error>.*))?$")
)


def _job_end_fields(m: re.Match[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": m["name"], "ok": m["ok"] == "ok", "duration_ms": float(m["ms"])}
    _tail_fields(m, out)
    if m["error"] is not None:
        out["error"] = m["error"]
    return {**out, "retried": True} if m["ok"] == "retried" else out


#: The ``reason`` of a ``job_rejected`` line, and how its message says it.
REJECT_REASONS = {
    "in_progress": "is already in progress",
    "payload_mismatch": "was used with another payload",
}


def job_rejected_msg(method: str | None, path: str | None, job_id: str, reason: str) -> str:
    """``job_rejected POST /api/generate job abc123 is already in progress``."""
    return f"job_rejected {method} {path} job {job_id} {REJECT_REASONS.get(reason, reason)}"


_JOB_REJECTED = re.compile(
    r"job_rejected (?P<method>\S+) (?P<path>.*?) job (?P<job>\S+) (?P<reason>.*)$"
)
_REASON_OF = {text: code for code, text in REJECT_REASONS.items()}


def _job_rejected_fields(m: re.Match[str]) -> dict[str, Any]:
    reason = _REASON_OF.get(m["reason"], m["reason"])
    return {"method": m["method"], "path": m["path"], "reason": reason}


def hang_msg(what: str, ms: float, stage: str | None, report: int, thread: str | None) -> str:
    """``hang GET /path still running after 31.00s in stage render (report 1, thread t)``;
    ``what`` is ``GET /path`` for a request, ``job fn (from POST /path)`` for a job."""
    where = f"in stage {stage_word(stage)}" if stage else "outside any stage"
    return (
        f"hang {what} still running after {ms / 1000:.2f}s {where} "
        f"(report {report}, thread {thread})"
    )


_HANG = re.compile(
    r"hang (?:job (?P<name>\S+)(?: \(from (?P<jmethod>\S+) (?P<jpath>.*?)\))?"
    r"|(?P<method>\S+) (?P<path>.*?)) still running after (?P<s>[\d.]+)s "
    r"(?:in stage (?P<stage>\S+)|outside any stage) "
    r"\(report (?P<hung>\d+), thread (?P<thread>.*)\)$"
)


def _hang_fields(m: re.Match[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"duration_ms": float(m["s"]) * 1000.0, "hung": int(m["hung"])}
    if m["name"]:
        out["name"] = m["name"]
        if m["jmethod"]:
            out["method"], out["path"] = m["jmethod"], m["jpath"]
    else:
        out["method"], out["path"] = m["method"], m["path"]
    if m["stage"]:
        out["stage"] = unquote(m["stage"])
    return out


def progress_msg(
    fraction: float, step: float | None, total: float | None, message: str | None
) -> str:
    """``progress 42.5% [3/7] [- message]``: the fraction with one decimal of a percent."""
    msg = f"progress {fraction * 100:.1f}%"
    if step is not None and total is not None:
        msg += f" {step:g}/{total:g}"
    if message:
        msg += f" - {message}"
    return msg


_PROGRESS = re.compile(
    r"progress (?P<pct>[\d.]+)%(?: (?P<step>[\d.e+\-]+)/(?P<total>[\d.e+\-]+))?"
    r"(?: - (?P<message>.*))?$"
)


def _progress_fields(m: re.Match[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"fraction": round(float(m["pct"]) / 100.0, 3)}
    if m["step"] is not None:
        out["step"], out["total"] = float(m["step"]), float(m["total"])
    if m["message"] is not None:
        out["message"] = m["message"]
    return out


#: For each kind with a structured message: its pattern and the function that turns a match into
#: fields. ``log`` lines are the app's own text and have none.
_PARSERS: dict[str, tuple[re.Pattern[str], Callable[[re.Match[str]], dict[str, Any]]]] = {
    "request_start": (_REQUEST_START, _request_start_fields),
    "request_end": (_REQUEST_END, _request_end_fields),
    "request_error": (_REQUEST_ERROR, _request_error_fields),
    "stage": (_STAGE, _stage_fields),
    "job_start": (_JOB_START, _job_start_fields),
    "job_end": (_JOB_END, _job_end_fields),
    "job_rejected": (_JOB_REJECTED, _job_rejected_fields),
    "hang": (_HANG, _hang_fields),
    "progress": (_PROGRESS, _progress_fields),
}


def kind_of(logger: str, msg: str) -> str:
    """The event kind of a plain line, from its logger and the first word of its message. Only
    diaglog's loggers write structured messages: an app's line ``request_end ..`` is a ``log``."""
    if not logger.startswith(LOGGER_ROOT):
        return "log"
    word = msg.split(" ", 1)[0]
    return word if word in _PARSERS else "log"


def parse_message(kind: str, msg: str) -> dict[str, Any]:
    """The fields a message of ``kind`` carries (empty when it does not match its pattern)."""
    parser = _PARSERS.get(kind)
    if parser is None:
        return {}
    m = parser[0].match(msg)
    return parser[1](m) if m is not None else {}
