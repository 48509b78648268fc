"""The floor: the least code that does what target (a) measures, with none of diaglog's features.

It is a reference row in the benchmarks, not a product. It shows what the required behaviour
costs at minimum on this machine, so diaglog's overhead can be read against it, not only
against bare Flask, which does none of the work. It has:

* a request id (random prefix + counter) in a ContextVar, ``X-Request-ID`` and ``Server-Timing``
  (added in a WSGI wrapper, as diaglog does);
* a ``before_request`` hook that takes the job id from the ``<job_id>`` view argument or the
  ``X-Job-ID`` header and writes the start line, before the view runs;
* an ``after_request`` hook that notes the status and whether the body is streamed;
* the end line, written when Flask returns;
* one ``os.write`` to an ``O_APPEND`` file per line, so each line is out before the call returns.

With ``stages=True`` the view runs one timed stage, the least a stage needs: its line, its
``Server-Timing`` entry and the ``stages=`` word of the end line (the "floor + one stage" row).

It leaves out everything else: id validation and the 400, the body, form and query job id
sources, redaction, rotation and the multi-process generation check, write-failure handling,
the in-flight registry and hang watchdog, signals and events, streamed bodies, errors, nested,
repeated and failing stages, background work, the JSON format and configuration.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

from flask import Flask, Response, request

_MS = tuple(f".{i:03d}" for i in range(1000))


class _Trace:
    __slots__ = (
        "head", "job_id", "method", "path", "request_id", "stages", "status", "streamed", "t0",
    )  # fmt: skip


def floor_app(log_path: str, name: str = "floor", stages: bool = False) -> Flask:
    app = Flask(name)
    stage = install(app, log_path)

    if stages:

        @app.get("/")
        def staged() -> dict[str, bool]:
            with stage("work"):
                pass
            return {"ok": True}

    else:

        @app.get("/")
        def index() -> dict[str, bool]:
            return {"ok": True}

    return app


def install(app: Flask, log_path: str) -> Callable[[str], Any]:
    """Add the floor's request lines to ``app``, writing to ``log_path``; returns its ``stage``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    current: ContextVar[_Trace | None] = ContextVar("floor_trace", default=None)
    counter = itertools.count(1)
    prefix = os.urandom(6).hex()
    second: list[Any] = [-1, ""]
    write, now, perf = os.write, time.time, time.perf_counter
    get_request = request._get_current_object  # type: ignore[attr-defined]

    def stamp() -> str:
        ts = now()
        sec = int(ts)
        if sec != second[0]:
            second[:] = [sec, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec))]
        return f"{second[1]}{_MS[int((ts - sec) * 1000)]}"

    def before() -> None:
        t = current.get()
        if t is None:
            return
        req = get_request()
        va = req.view_args
        env = req.environ
        jid = (va.get("job_id") if va else None) or env.get("HTTP_X_JOB_ID")
        t.job_id = jid
        t.head = f" | INFO | flask_diaglog.request | req={t.request_id} job={jid or '-'} | "
        line = (
            f"{stamp()}{t.head}request_start {t.method} {t.path} "
            f"client={env.get('REMOTE_ADDR')} type={env.get('CONTENT_TYPE') or '-'} testing=false\n"
        )
        write(fd, line.encode())

    def after(response: Response) -> Response:
        t = current.get()
        if t is not None:
            t.status = response.status_code
            t.streamed = response.is_streamed
        return response

    app.before_request_funcs.setdefault(None, []).insert(0, before)
    app.after_request_funcs.setdefault(None, []).insert(0, after)
    inner = app.wsgi_app

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        t = _Trace()
        rid = t.request_id = f"{prefix}{next(counter):06x}"
        t0 = t.t0 = perf()
        t.method, t.path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
        t.job_id, t.status, t.head = None, None, " | INFO | flask_diaglog.request | req=- job=- | "
        t.stages = None

        def sr(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append(("X-Request-ID", rid))
            timing = f"total;dur={(perf() - t0) * 1000:.2f}"
            if t.stages:
                head = ""
                for stage_name, stage_ms in t.stages:
                    head += f"{stage_name};dur={stage_ms}, "
                timing = head + timing
            headers.append(("Server-Timing", timing))
            return start_response(status, headers, exc_info)

        token = current.set(t)
        try:
            body = inner(environ, sr)
        finally:
            current.reset(token)
        ms = (perf() - t0) * 1000
        line = f"{stamp()}{t.head}request_end {t.method} {t.path} {t.status} {ms:.2f}ms"
        if t.stages:
            sep = " stages="
            for stage_name, stage_ms in t.stages:
                line += f"{sep}{stage_name}:{stage_ms}"
                sep = ","
        write(fd, f"{line}\n".encode())
        return body

    app.wsgi_app = wsgi  # type: ignore[method-assign]

    class stage:
        __slots__ = ("name", "t0")

        def __init__(self, name: str) -> None:
            self.name = name

        def __enter__(self) -> None:
            self.t0 = perf()

        def __exit__(self, *exc_info: object) -> None:
            ms = f"{(perf() - self.t0) * 1000:.2f}"  # formatted once: line, header and end word
            t = current.get()
            if t is not None:
                if t.stages is None:
                    t.stages = []
                t.stages.append((self.name, ms))
                write(fd, f"{stamp()}{t.head}stage {self.name} {ms}ms ok\n".encode())

    return stage
