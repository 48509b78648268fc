"""The benchmark variants still build and serve (the benchmarks themselves run on demand only).

The floor row is only a fair reference if it really does the work it stands for: a request id in
both headers and two lines per request, the start line written before the view runs; its stage
row a stage line, a ``Server-Timing`` entry and the end line's ``stages=`` word.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import instructions, specialized
from benchmarks import request as request_bench
from benchmarks.floor import floor_app
from flask_diaglog.signals import signal_for


def test_floor_writes_two_lines_and_both_headers(tmp_path: Path) -> None:
    log = tmp_path / "floor.log"
    app = floor_app(str(log))
    seen_in_view: list[str] = []

    @app.get("/jobs/<job_id>")
    def job(job_id: str) -> str:
        seen_in_view.append(log.read_text())
        return job_id

    client = app.test_client()
    r = client.get("/jobs/j-1")
    assert r.status_code == 200
    rid = r.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{12}[0-9a-f]{6,}", rid)
    assert re.fullmatch(r"total;dur=\d+\.\d\d", r.headers["Server-Timing"])
    assert f"req={rid} job=j-1 | request_start GET /jobs/j-1" in seen_in_view[0]
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert (
        lines[1].endswith("ms")
        and f"req={rid} job=j-1 | request_end GET /jobs/j-1 200 " in (lines[1])
    )
    assert client.get("/").headers["X-Request-ID"] != rid


def test_the_floors_stage_writes_its_line_header_entry_and_end_word(tmp_path: Path) -> None:
    log = tmp_path / "floor.log"
    app = floor_app(str(log), "floor_stage", stages=True)
    r = app.test_client().get("/")
    assert r.status_code == 200
    assert re.fullmatch(r"work;dur=\d+\.\d\d, total;dur=\d+\.\d\d", r.headers["Server-Timing"])
    lines = log.read_text().splitlines()
    assert len(lines) == 3
    assert re.search(r"\| stage work \d+\.\d\dms ok$", lines[1])
    assert re.search(r"request_end GET / 200 \d+\.\d\dms stages=work:\d+\.\d\d$", lines[2])


@pytest.mark.parametrize("key", list(request_bench.VARIANTS))
def test_request_benchmark_variants_serve(tmp_path: Path, key: str) -> None:
    if key == "log_request_id":
        pytest.importorskip("flask_log_request_id")
    _, make = request_bench.VARIANTS[key]
    try:
        response = make(tmp_path).test_client().get("/")
        assert response.status_code == 200
        assert response.get_json() == {"ok": True}
    finally:
        bench_logger = logging.getLogger("bench.handwritten")  # the hand-written variant's
        for handler in list(bench_logger.handlers):
            bench_logger.removeHandler(handler)
            handler.close()


# -- the callgrind benchmark (valgrind itself is never run here: far too slow) -----------------

# Log lines per request of each DiagLog variant, and the directory its builder writes to.
_DIAGLOG_LINES = {"diaglog": 2, "stage": 3, "json": 2, "signal": 2}


@pytest.mark.parametrize("variant", list(instructions.VARIANTS))
def test_instruction_variants_serve(tmp_path: Path, variant: str) -> None:
    if variant == "request_id":
        pytest.importorskip("flask_log_request_id")
    try:
        app = instructions.build(variant, tmp_path)
        assert instructions.serve(app, 2, 3) == 5
        if variant in _DIAGLOG_LINES:
            (log,) = tmp_path.glob("*/requests.log")
            lines = log.read_text().splitlines()
            assert len(lines) == 5 * _DIAGLOG_LINES[variant]
            if variant == "json":
                assert [json.loads(line)["event"] for line in lines[:2]] == [
                    "request_start",
                    "request_end",
                ]
            else:
                assert " | request_end GET / 200 " in lines[-1]
            if variant == "stage":
                assert " | stage work " in lines[1]
        if variant == "signal":
            receiver = app.extensions["bench_signal_receiver"]
            assert receiver in signal_for("request_end").receivers_for(app)
            assert receiver not in signal_for("request_start").receivers_for(app)
    finally:
        bench_logger = logging.getLogger("bench.handwritten")
        for handler in list(bench_logger.handlers):
            bench_logger.removeHandler(handler)
            handler.close()


def test_instruction_serve_rejects_a_failing_view(tmp_path: Path) -> None:
    app = instructions.build("bare", tmp_path)
    app.view_functions["index"] = lambda: ("no", 500)
    with pytest.raises(RuntimeError, match="500"):
        instructions.serve(app, 0, 1)


def test_instruction_driver_command_runs(tmp_path: Path) -> None:
    """The exact command valgrind is given, run without valgrind."""
    cmd = instructions.driver_command("diaglog", tmp_path, 3, 4)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(
        cmd, cwd=instructions.REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", "7"]
    assert len((tmp_path / "diaglog" / "requests.log").read_text().splitlines()) == 14


_CALLGRIND_SAMPLE = """\
# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 4242
cmd:  python -m benchmarks.instructions drive bare /tmp/x 50 100
part: 1

positions: line
events: Dr Ir Dw
summary: 11 987654321 33

ob=(1) /usr/bin/python3.11
fl=(1) ???
fn=(1) main
0 7 9000 5
cfn=(2) helper
calls=1 0
0 2 50 1

fn=(2) helper
0 2 50 1

totals: 11 987654321 33
"""


def test_read_total_picks_ir_from_the_totals(tmp_path: Path) -> None:
    out = tmp_path / "callgrind.out"
    out.write_text(_CALLGRIND_SAMPLE)
    assert instructions.read_total(out) == 987654321
    assert instructions.read_total(out, "Dw") == 33
    # no totals line (an interrupted dump): the summary line
    out.write_text(_CALLGRIND_SAMPLE.replace("totals: 11 987654321 33\n", ""))
    assert instructions.read_total(out) == 987654321
    # two dumped parts: their totals add up
    out.write_text(_CALLGRIND_SAMPLE + _CALLGRIND_SAMPLE.replace("987654321", "1000"))
    assert instructions.read_total(out) == 987655321
    with pytest.raises(ValueError, match="Bc"):
        instructions.read_total(out, "Bc")
    out.write_text("events: Ir\n")
    with pytest.raises(ValueError, match="totals"):
        instructions.read_total(out)


def test_instruction_results_difference_and_derived_figures() -> None:
    n1, n2 = 100, 600
    per_request = {"bare": 800_000, "floor": 830_000, "diaglog": 860_000}
    per_request |= {"stage": 875_000, "json": 890_000, "signal": 880_000, "floor_stage": 841_000}
    # start-up differs by variant and by seed and must cancel; the seeds' figures are averaged
    totals = {
        name: [
            (
                10**9 + i * 10**7 + s * 10**5 + n1 * (pr + d),
                10**9 + i * 10**7 + s * 10**5 + n2 * (pr + d),
            )
            for s, d in enumerate((-1_000, 0, 1_000))
        ]
        for i, (name, pr) in enumerate(per_request.items())
    }
    res = instructions.results(totals, n1, n2)
    v = res["variants"]
    assert v["bare"]["per_request"] == 800_000
    assert v["bare"]["per_seed"] == [799_000, 800_000, 801_000]
    assert v["bare"]["spread"] == 1_000
    assert v["diaglog"]["overhead"] == 60_000
    assert v["diaglog"]["overhead_vs_floor"] == pytest.approx(2.0)
    assert v["floor"]["overhead_vs_floor"] is None
    assert res["derived"] == {
        "json_plain_overhead_ratio": pytest.approx(1.5),
        "per_stage": 15_000,
        "floor_per_stage": 11_000,
        "per_signal_event": 20_000,
    }
    text = instructions.markdown(res, n1, n2, 50)
    assert "| diaglog " in text and "| 860.0 " in text and "| +60.0 " in text and "2.00x" in text
    assert "| ±1.0 " in text and "mean of 3 hash seeds" in text
    assert "json/plain overhead ratio: 1.50x" in text
    assert "per stage (stage - diaglog): +15.0 k" in text
    assert "the floor's stage (floor_stage - floor): +11.0 k" in text


@pytest.mark.parametrize(
    ("seeds", "error"), [("a,1", "not a list of integers"), ("-1", "from 0 to 4294967295")]
)
def test_instruction_seeds_option_refuses_what_is_not_a_seed(
    capsys: pytest.CaptureFixture[str], seeds: str, error: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        instructions.main(["--seeds", seeds, "bare"])
    assert exc.value.code == 2
    assert error in capsys.readouterr().err


@pytest.mark.skipif(
    sys.version_info[:2] != (3, 11), reason="the adaptive instruction names are CPython 3.11's"
)
@pytest.mark.parametrize("variant", ["diaglog", "stage", "json"])
def test_the_request_path_has_no_generic_attribute_sites(variant: str) -> None:
    """Every attribute read, write and method lookup diaglog makes on a request (plain, with a
    stage, JSON) is one CPython specializes: none goes through the type-attribute cache, whose
    hits depend on memory layout (``python -m benchmarks specialized`` lists them)."""
    assert specialized.sites_in_fresh_process(variant) == []


def test_the_specialization_report_finds_a_generic_site() -> None:
    """The report is not empty by construction: a signal receiver's re-entrancy flag is a
    thread-local attribute, which CPython does not specialize."""
    if sys.version_info < (3, 11):
        pytest.skip("specialization needs CPython 3.11 or later")
    sites = specialized.sites_in_fresh_process("signal")
    assert any(site.endswith(" active") and "record.py" in site for site in sites), sites
