"""Crash durability: SIGKILL at a random moment loses no line whose logging call had returned.

The child serves requests through the Flask test client (the view logs a line) and logs a line
through a standalone :class:`~flask_diaglog.DiagLogHandler`, while rotating. After both calls
return it stores the iteration number in a shared file-backed counter. The parent kills it with
SIGKILL after a random delay; every number up to the stored one must be in the files.
"""

from __future__ import annotations

import gzip
import mmap
import os
import random
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_multiprocess import read_set

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import logging, mmap, os, struct, sys
    from flask import Flask
    from flask_diaglog import DiagLog, DiagLogHandler

    log_dir, counter_path, compress = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    app = Flask("crashapp")
    app.config.update(
        DIAGLOG_LOG_DIR=log_dir, DIAGLOG_MAX_BYTES=64 * 1024, DIAGLOG_BACKUP_COUNT=10_000,
        DIAGLOG_COMPRESS=compress,
    )
    log = logging.getLogger("crashapp")

    @app.get("/n/<int:n>")
    def view(n):
        log.info("in view %d", n)
        return {"n": n}

    DiagLog(app)
    standalone = logging.getLogger("standalone")
    standalone.propagate = False
    standalone.addHandler(DiagLogHandler(
        os.path.join(log_dir, "other.log"), max_bytes=64 * 1024, backup_count=10_000,
        compress=compress,
    ))
    standalone.setLevel(logging.INFO)

    fd = os.open(counter_path, os.O_RDWR)
    counter = mmap.mmap(fd, 8)
    client = app.test_client()
    n = 0
    while True:
        n += 1
        assert client.get(f"/n/{n}", headers={"X-Request-ID": f"r{n}"}).status_code == 200
        standalone.info("after %d", n)
        struct.pack_into("=Q", counter, 0, n)  # only after both calls returned
    """
)


def numbers(lines: list[str], pattern: str) -> set[int]:
    rx = re.compile(pattern)
    return {int(m.group(1)) for line in lines if (m := rx.search(line))}


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_sigkill_loses_no_returned_line(tmp_path: Path, compress: bool) -> None:
    """10 SIGKILLs at random moments: every line logged before the kill is in the files."""
    rng = random.Random()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("TESTING", None)
    for round_no in range(10):
        log_dir = tmp_path / f"round{round_no}"
        counter_path = tmp_path / f"counter{round_no}"
        counter_path.write_bytes(b"\0" * 8)
        fd = os.open(counter_path, os.O_RDONLY)
        counter = mmap.mmap(fd, 8, prot=mmap.PROT_READ)
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                str(log_dir),
                str(counter_path),
                "1" if compress else "0",
            ],
            env=env,
        )
        try:
            # Wait until it is writing, then let it run a random while (it rotates every ~0.1s).
            deadline = time.monotonic() + 60
            while struct.unpack_from("=Q", counter, 0)[0] == 0:
                assert child.poll() is None, "the child died on its own"
                assert time.monotonic() < deadline, "the child never started writing"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.6))
            child.send_signal(signal.SIGKILL)
            assert child.wait(30) == -signal.SIGKILL
            last = struct.unpack_from("=Q", counter, 0)[0]
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            counter.close()
            os.close(fd)

        requests = read_set(log_dir / "requests.log")
        other = read_set(log_dir / "other.log")
        expected = set(range(1, last + 1))
        for what, got in (
            ("start line", numbers(requests, r"req=r(\d+) job=- \| request_start ")),
            ("view line", numbers(requests, r"\| in view (\d+)$")),
            ("end line", numbers(requests, r"req=r(\d+) job=- \| request_end ")),
            ("standalone line", numbers(other, r"\| after (\d+)$")),
        ):
            missing = sorted(expected - got)
            assert not missing, f"round {round_no}: {what} lost for {missing[:10]} (last={last})"
        for name in os.listdir(log_dir):
            if name.endswith(".gz"):  # a compressed backup is complete or absent
                gzip.decompress((log_dir / name).read_bytes())
