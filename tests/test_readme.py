"""The README's quick start runs as written and gives the lines and headers it shows."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from readme import readme_section


def test_quick_start_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quick-start app answers 202 with the headers shown and writes the trail it shows."""
    code = re.search(r"```python\n(.*?)```", readme_section("## Quick start"), flags=re.S)
    assert code is not None
    monkeypatch.chdir(tmp_path)  # DIAGLOG_LOG_DIR defaults to ./logs
    namespace: dict[str, object] = {"__name__": "quickstart"}
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    app = namespace["app"]
    client = app.test_client()  # type: ignore[attr-defined]
    r = client.post("/api/jobs/j1/generate")
    assert r.status_code == 202 and r.json == {"job_id": "j1"}
    assert re.fullmatch(r"[0-9a-f]{18}", r.headers["X-Request-ID"])
    assert re.fullmatch(r"validate;dur=\d+\.\d, total;dur=\d+\.\d", r.headers["Server-Timing"])
    lines = (tmp_path / "logs" / "requests.log").read_text().splitlines()
    rid = r.headers["X-Request-ID"]
    assert [line.split(" | ")[-1].split(" ")[0] for line in lines] == [
        "request_start", "stage", "request_end",
    ]  # fmt: skip
    assert all(f"req={rid} job=j1" in line for line in lines)
    assert os.path.exists(tmp_path / "logs" / "jobs.log")
