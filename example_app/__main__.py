"""``python -m example_app --host 127.0.0.1 --port 5000`` (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import sys

from . import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description="flask-diaglog example: 2D-to-3D backend")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    app = create_app({"DIAGLOG_CONSOLE": True})
    log_dir = app.config["DIAGLOG_LOG_DIR"]  # resolved and absolute after DiagLog(app)
    sys.stderr.write(
        f"flask-diaglog example: http://{args.host}:{args.port}/ (live page: /live), "
        f"log files in {log_dir}\n"
    )
    app.run(host=args.host, port=args.port, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
