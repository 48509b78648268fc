"""Stages: the three forms, nesting, failures, Server-Timing, and stages outside requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from flask_diaglog import DiagLog, get_request_timings, stage, timed_stage
from flask_diaglog.cli import diaglog_cli


def test_three_forms_and_nesting(make_app: Callable[..., Flask], logs: object) -> None:
    """@timed_stage("x"), bare @timed_stage and with stage() all record; nested names use dots."""
    app = make_app({"DIAGLOG_FORMAT": "json"})

    @timed_stage("load")
    def load() -> int:
        return 1

    @timed_stage
    def transform() -> int:
        with stage("inner"):
            return 2

    @stage("decorated")
    def decorated() -> int:
        return 3

    @app.get("/")
    def index() -> dict[str, float]:
        with stage("outer"):
            load()
            transform()
        decorated()
        return get_request_timings()

    r = app.test_client().get("/")
    names = [e["stage"] for e in logs.events("requests", "stage")]  # type: ignore[attr-defined]
    assert names == [
        "outer.load",
        "outer.transform.inner",
        "outer.transform",
        "outer",
        "decorated",
    ]
    assert set(r.json) == set(names)  # type: ignore[arg-type]


def test_failed_stage_is_recorded_and_exception_propagates(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """A raising stage is logged with ok=false, its error and duration; the exception goes on."""
    app = make_app({"DIAGLOG_FORMAT": "json"})
    caught: list[BaseException] = []

    @app.get("/")
    def index() -> str:
        try:
            with stage("fragile"):
                raise RuntimeError("GPU out of memory")
        except RuntimeError as exc:
            caught.append(exc)
        return "recovered"

    assert app.test_client().get("/").status_code == 200
    assert len(caught) == 1
    (ev,) = logs.events("requests", "stage")  # type: ignore[attr-defined]
    assert ev["ok"] is False and ev["error"] == "RuntimeError: GPU out of memory"
    assert ev["level"] == "WARNING" and isinstance(ev["duration_ms"], float)
    assert "failed" in ev["msg"]


def test_server_timing_header_lists_stages_and_total(make_app: Callable[..., Flask]) -> None:
    """Server-Timing has name;dur=x for each stage and total; names become valid tokens."""
    app = make_app()

    @app.get("/")
    def index() -> str:
        with stage("load model"):
            pass
        with stage("mesh/obj"):
            pass
        return "ok"

    header = app.test_client().get("/").headers["Server-Timing"]
    parts = [p.strip() for p in header.split(",")]
    assert [p.split(";")[0] for p in parts] == ["load_model", "mesh_obj", "total"]
    for p in parts:
        assert re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+;dur=\d+\.\d\d", p), p


def test_server_timing_shows_each_stage_as_its_line_and_the_end_line_do(
    make_app: Callable[..., Flask], logs: Any
) -> None:
    """Each stage's ``Server-Timing`` entry is the number of its own line and of the end line's
    ``stages=`` word, to 0.01 ms; a nested stage too. Thirty requests: durations near a rounding
    edge come up among them."""
    app = make_app()

    @app.get("/")
    def index() -> str:
        with stage("load model"):
            time.sleep(0.001)
            with stage("mesh"):
                pass
        return "ok"

    client = app.test_client()
    headers = [client.get("/").headers["Server-Timing"] for _ in range(30)]
    msgs = [line.split(" | ", 4)[4] for line in logs.lines("requests")]
    assert len(msgs) == 30 * 4
    for n, header in enumerate(headers):
        _, inner, outer, end = msgs[4 * n : 4 * n + 4]
        shown = {
            name: ms for name, ms in re.findall(r"stage (\S+) (\d+\.\d\d)ms ok", inner + outer)
        }
        entries = dict(re.findall(r"([^,; ]+);dur=(\d+\.\d\d)", header))
        assert entries.pop("total")
        assert entries == {
            "load_model.mesh": shown["load%20model.mesh"],
            "load_model": shown["load%20model"],
        }
        assert end.endswith(
            f" stages=load%20model.mesh:{shown['load%20model.mesh']},"
            f"load%20model:{shown['load%20model']}"
        )


def test_names_past_the_name_cache_are_shown_as_the_first_ones(
    make_app: Callable[..., Flask], logs: Any
) -> None:
    """A stage name's shown forms are kept for a bounded number of names (an app may make them
    from anything); five thousand distinct names, more than are kept, are each shown in their
    line, the end line's word and ``Server-Timing`` as the first one is."""
    app = make_app()
    names = [f"step {i}\x1b,%" for i in range(5000)]

    @app.get("/")
    def index() -> str:
        for name in names:
            with stage(name):
                pass
        return "ok"

    header = app.test_client().get("/").headers["Server-Timing"]
    tokens = re.findall(r"([^,; ]+);dur=", header)
    assert tokens[:-1] == [f"step_{i}__%" for i in range(5000)] and tokens[-1] == "total"
    msgs = [line.split(" | ", 4)[4] for line in logs.lines("requests")]
    shown = [m.split(" ")[1] for m in msgs if m.startswith("stage ")]
    assert shown == [f"step%20{i}\\x1b%2C%25" for i in range(5000)]
    word = msgs[-1].split(" stages=", 1)[1]
    assert [part.rpartition(":")[0] for part in word.split(",")] == shown


def test_server_timing_can_be_turned_off(make_app: Callable[..., Flask]) -> None:
    """DIAGLOG_SERVER_TIMING=False sends no Server-Timing header."""
    app = make_app({"DIAGLOG_SERVER_TIMING": False})
    app.add_url_rule("/", view_func=lambda: "ok")
    r = app.test_client().get("/")
    assert "Server-Timing" not in r.headers and r.headers["X-Request-ID"]


def test_repeated_stage_is_summed_in_header(make_app: Callable[..., Flask], logs: Any) -> None:
    """A stage run twice appears once in Server-Timing with the summed duration."""
    app = make_app({"DIAGLOG_FORMAT": "json"})

    @app.get("/")
    def index() -> str:
        for _ in range(2):
            with stage("a"):
                time.sleep(0.01)
        with contextlib.suppress(ValueError), stage("b"):
            raise ValueError("failed stages count too")
        return "ok"

    header = app.test_client().get("/").headers["Server-Timing"]
    parts = header.split(", ")
    assert [p.split(";dur=")[0] for p in parts] == ["a", "b", "total"]
    runs = [e["duration_ms"] for e in logs.events("requests", "stage") if e["stage"] == "a"]
    assert len(runs) == 2
    assert abs(float(parts[0].split(";dur=")[1]) - sum(runs)) <= 0.006  # the header: to 0.01


def test_end_line_stages_word_shows_each_stage_as_its_line_does(
    make_app: Callable[..., Flask], logs: Any
) -> None:
    """The end line's ``stages=`` word lists the stages in the order they first ended; a stage
    run once shows the number of its own line (also when another name repeats, so the word is
    made from the totals), a repeated one the sum of its runs. Thirty requests: durations that
    fall near a rounding edge come up among them."""
    app = make_app()

    @app.get("/")
    def index() -> str:
        with stage("a"):
            time.sleep(0.002)
        with contextlib.suppress(ValueError), stage("b"):
            with stage("c"):
                time.sleep(0.001)
            raise ValueError("a failed stage is listed too")
        with stage("a"):
            time.sleep(0.003)
        return "ok"

    client = app.test_client()
    for _ in range(30):
        assert client.get("/").status_code == 200
    msgs = [line.split(" | ", 4)[4] for line in logs.lines("requests")]
    assert len(msgs) == 30 * 6
    for n in range(30):
        start, *stages, end = msgs[6 * n : 6 * n + 6]
        assert start.startswith("request_start ") and end.startswith("request_end ")
        runs = [re.fullmatch(r"stage (\S+) (\d+\.\d\d)ms (?:ok|failed: .*)", m) for m in stages]
        assert [m[1] for m in runs if m] == ["a", "b.c", "b", "a"]
        word = re.search(r" stages=(\S+)$", end)
        assert word is not None, end
        listed = [part.split(":") for part in word[1].split(",")]
        assert [name for name, _ in listed] == ["a", "b.c", "b"]
        ms = {name: float(text) for name, text in listed}
        once = {m[1]: m[2] for m in runs if m and m[1] != "a"}
        assert {name: text for name, text in listed if name != "a"} == once  # the same text
        summed = sum(float(m[2]) for m in runs if m and m[1] == "a")
        assert abs(ms["a"] - summed) <= 0.0151  # three numbers, each rounded to 0.01


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_any_stage_name_reads_back_as_written(make_app: Callable[..., Flask], fmt: str) -> None:
    """A stage name with spaces, commas or ``%`` stays one word of its lines, so the CLI's summary
    reads the request, its route and its stages back by their own names."""
    app = make_app({"DIAGLOG_FORMAT": fmt})

    @app.post("/jobs/<job_id>/make")
    def make(job_id: str) -> str:
        with stage("load model"), stage("pass 1, 50%"):
            pass
        return "ok"

    for _ in range(3):
        assert app.test_client().post("/jobs/j1/make").status_code == 200
    result = app.test_cli_runner().invoke(diaglog_cli, ["summary", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["routes"]["POST /jobs/<job_id>/make"]["count"] == 3
    assert {"load model", "load model.pass 1, 50%"} <= set(summary["stages"])
    assert summary["stages"]["load model"]["count"] == 3


def test_a_generator_function_stage_lasts_while_it_runs(
    make_app: Callable[..., Flask], logs: Any
) -> None:
    """``@timed_stage`` on a generator function (a streamed body's chunks) times the iteration,
    not the call that creates the generator; the chunks and what the generator returns pass
    through unchanged."""
    app = make_app({"DIAGLOG_FORMAT": "json"})

    @timed_stage("chunks")
    def chunks() -> Any:
        for part in ("a", "b"):
            time.sleep(0.03)
            yield part
        return "done"

    @timed_stage("async chunks")
    async def async_chunks() -> Any:
        for part in ("c", "d"):
            await asyncio.sleep(0.03)
            yield part

    async def collect() -> list[str]:
        return [part async for part in async_chunks()]

    @app.get("/")
    def index() -> str:
        return "".join(chunks()) + "".join(asyncio.run(collect()))

    assert app.test_client().get("/").text == "abcd"
    events = logs.events("requests", "stage")
    assert [(e["stage"], e["ok"]) for e in events] == [("chunks", True), ("async chunks", True)]
    assert all(e["duration_ms"] >= 55.0 for e in events)  # both sleeps, not the creation
    gen = chunks()  # outside a request: a plain timer, and the return value passes through
    assert next(gen) == "a" and next(gen) == "b"
    with pytest.raises(StopIteration) as end:
        next(gen)
    assert end.value.value == "done"


def test_stage_in_spawned_work_goes_to_jobs_log(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """Stages inside background work are written to jobs.log with the request's ids."""
    app = make_app({"DIAGLOG_FORMAT": "json"}, init=False)
    diaglog = DiagLog(app)
    threads: list[threading.Thread] = []

    def work() -> None:
        with stage("generate"):
            pass

    @app.post("/jobs/<job_id>")
    def start(job_id: str) -> tuple[str, int]:
        threads.append(diaglog.spawn(work))
        return "", 202

    app.test_client().post("/jobs/J1", headers={"X-Request-ID": "R1"})
    threads[0].join(10)
    (ev,) = logs.events("jobs", "stage")  # type: ignore[attr-defined]
    assert (ev["stage"], ev["request_id"], ev["job_id"]) == ("generate", "R1", "J1")
    assert logs.events("requests", "stage") == []  # type: ignore[attr-defined]


def test_stage_in_app_context_outside_request_goes_to_jobs_log(
    make_app: Callable[..., Flask], logs: object
) -> None:
    """A stage in an app context (a CLI command, a scheduler) is logged to jobs.log."""
    app = make_app({"DIAGLOG_FORMAT": "json"})
    with app.app_context(), stage("nightly_report"):
        pass
    (ev,) = logs.events("jobs", "stage")  # type: ignore[attr-defined]
    assert ev["stage"] == "nightly_report" and "request_id" not in ev


def test_stage_without_any_context_is_a_harmless_timer() -> None:
    """Outside any app, a stage just runs its block (nothing to log to)."""
    with stage("standalone") as s:
        pass
    assert s.name == "standalone"
    assert get_request_timings() == {}


def test_stage_name_must_be_a_nonempty_string() -> None:
    """stage('') is a TypeError at the call site, not a silent no-op."""
    with pytest.raises(TypeError):
        stage("")


def test_async_function_stage(make_app: Callable[..., Flask]) -> None:
    """@timed_stage on an async function times the awaited call."""

    @timed_stage("fetch")
    async def fetch() -> int:
        await asyncio.sleep(0.02)
        return 5

    app = make_app()

    @app.get("/")
    def index() -> dict[str, float]:
        assert asyncio.run(fetch()) == 5
        return get_request_timings()

    timings = app.test_client().get("/").json
    assert list(timings) == ["fetch"]
    assert timings["fetch"] >= 20  # the awaited sleep, not just creating the coroutine


def test_stages_ending_in_several_threads_of_one_request_all_count(
    make_app: Callable[..., Flask], log_dir: Any
) -> None:
    """A view that runs stages in threads sharing its context (``copy_context``): every stage's
    total is kept, in ``get_request_timings()``, the end line's ``stages`` and ``Server-Timing``,
    however the threads interleave (a tiny switch interval makes them interleave often). A stage
    is named under the stage running in the request when it starts, whichever thread runs that
    one (the request has one current stage), so each name is checked by its own last part."""
    import contextvars
    import sys

    app = make_app({"DIAGLOG_FORMAT": "json"})
    names = [f"t{t}.s{i}" for t in range(4) for i in range(1000)]

    def work(t: int) -> None:
        for i in range(1000):
            with stage(f"t{t}.s{i}"):
                pass

    @app.get("/")
    def view() -> dict[str, list[str]]:
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(work, t))
            for t in range(4)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return {"names": list(get_request_timings())}

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        response = app.test_client().get("/")
    finally:
        sys.setswitchinterval(before)

    def own(full_names: list[str]) -> list[str]:
        return sorted(".".join(n.split(".")[-2:]) for n in full_names)

    assert own(response.get_json()["names"]) == sorted(names)
    header = response.headers["Server-Timing"].split(", ")
    assert own([entry.split(";dur=")[0] for entry in header[:-1]]) == sorted(names)
    assert header[-1].startswith("total;dur=")
    with open(f"{log_dir}/requests.log") as f:
        end = [e for e in map(json.loads, f) if e["event"] == "request_end"][-1]
    assert own(list(end["stages"])) == sorted(names)
