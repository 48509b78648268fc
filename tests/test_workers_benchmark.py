"""The task benchmark (``benchmarks/tasks.py``) measures what it says: each variant's driver
publishes or runs the task, the diaglog variants with their lines, the bare ones without."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import tasks

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("variant", list(tasks.VARIANTS))
def test_each_variant_does_its_operation(tmp_path: Path, variant: str) -> None:
    """Runs write job_start and job_end only with diaglog; publishes write no line."""
    assert tasks.drive(variant, str(tmp_path), 1, 3) == 4
    jobs = tmp_path / "jobs.log"
    text = jobs.read_text() if jobs.exists() else ""
    what, diaglog = tasks.VARIANTS[variant]
    expected = 4 if what == "run" and diaglog else 0
    assert text.count("job_start bench.add") == expected
    assert text.count("job_end bench.add ok") == expected


def test_the_driver_command_prints_what_it_did(tmp_path: Path) -> None:
    """``python -m benchmarks.tasks drive`` (what valgrind runs) says ``ok <operations>``."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.tasks", "drive", "run_diaglog", str(tmp_path), "2", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (proc.returncode, proc.stdout.split()) == (0, ["ok", "5"]), proc.stderr


def test_instructions_table_gives_the_overhead_per_task() -> None:
    """The overhead column is diaglog's count minus Celery's, in thousands."""
    per = {"publish_bare": 1000.0, "publish_diaglog": 1500.0, "run_bare": 2000.0,
           "run_diaglog": 3000.0}  # fmt: skip
    out = tasks.instructions_table(per, 10, 20, 5)
    assert "| task publish" in out and "+0.5 k (+50%)" in out
    assert "+1.0 k (+50%)" in out
