"""``python -m example_app --host 127.0.0.1 --port 5000`` (what ``make demo`` runs).

The demo turns the dashboard on and prints its URL at startup. On a loopback host the dashboard
needs no token (it answers loopback clients only); on any other host it needs one: the one in
``DIAGLOG_DASHBOARD_TOKEN`` if set, else a fresh random token that the URL carries.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import socket
import sys
from collections.abc import Mapping
from typing import Any

from flask import Flask

from . import create_app


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (only local clients can connect)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def demo_config(host: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The demo's config: console echo and the dashboard on, with a token off loopback."""
    env = os.environ if environ is None else environ
    config: dict[str, Any] = {"DIAGLOG_CONSOLE": True, "DIAGLOG_DASHBOARD": True}
    if not is_loopback(host) and not env.get("DIAGLOG_DASHBOARD_TOKEN"):
        config["DIAGLOG_DASHBOARD_TOKEN"] = secrets.token_urlsafe(24)
    return config


def banner(app: Flask, host: str, port: int, *, generated_token: str | None = None) -> str:
    """The startup lines: the app, its live page, the dashboard (with its token) and the logs."""
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    base = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
    dashboard = f"{base}{app.config['DIAGLOG_DASHBOARD_URL']}/"
    if not app.config["DIAGLOG_DASHBOARD"]:
        dashboard = "off (DIAGLOG_DASHBOARD is false)"
    elif generated_token is not None:
        dashboard += f"?token={generated_token}"
    elif app.config.get("DIAGLOG_DASHBOARD_TOKEN"):
        dashboard += "?token=<your DIAGLOG_DASHBOARD_TOKEN>"
    return (
        f"flask-diaglog example: {base}/ (live page: {base}/live)\n"
        f"dashboard: {dashboard}\n"
        f"log files in {app.config['DIAGLOG_LOG_DIR']}\n"  # resolved and absolute by DiagLog(app)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="flask-diaglog example: 2D-to-3D backend")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    config = demo_config(args.host)
    app = create_app(config)
    sys.stderr.write(
        banner(app, args.host, args.port, generated_token=config.get("DIAGLOG_DASHBOARD_TOKEN"))
    )
    sys.stderr.flush()
    app.run(host=args.host, port=args.port, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
