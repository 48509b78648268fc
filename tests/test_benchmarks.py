"""The benchmark variants still build and serve (the benchmarks themselves run on demand only).

The floor row is only a fair reference if it really does the work it stands for: a request id in
both headers and two lines per request, the start line written before the view runs.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from benchmarks import request as request_bench
from benchmarks.floor import floor_app


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
    assert re.fullmatch(r"total;dur=\d+\.\d", r.headers["Server-Timing"])
    assert f"req={rid} job=j-1 | request_start GET /jobs/j-1" in seen_in_view[0]
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert (
        lines[1].endswith("ms")
        and f"req={rid} job=j-1 | request_end GET /jobs/j-1 200 " in (lines[1])
    )
    assert client.get("/").headers["X-Request-ID"] != rid


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
