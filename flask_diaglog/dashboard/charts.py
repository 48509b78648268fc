"""Charts drawn on the server as SVG: no script, no CDN, nothing to vendor.

Every function returns :class:`markupsafe.Markup` built from numbers it formats itself and text
it escapes with :func:`markupsafe.escape`, so a path or a stage name can never become markup.
Geometry is in SVG user units; CSS classes (``series-0`` ...) give the colours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

__all__ = ["bars", "histogram", "line_chart", "waterfall"]

_W = 640
_H = 180
_PAD_L = 48
_PAD_B = 22
_PAD_T = 10


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if v == v else "0"  # NaN-safe


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    step = 10 ** (len(str(int(v))) - 1)
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * step:
            return float(m * step)
    return float(10 * step)


def _svg(cls: str, label: str, body: str, width: int = _W, height: int = _H) -> Markup:
    return Markup(
        f'<svg class="chart {escape(cls)}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(label)}</title>{body}</svg>"
    )


def _axis(top: float, unit: str, width: int = _W, height: int = _H) -> str:
    out = []
    for k in range(5):
        v = top * k / 4
        y = height - _PAD_B - (height - _PAD_B - _PAD_T) * k / 4
        out.append(
            f'<line class="grid" x1="{_PAD_L}" x2="{width}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{_PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_num(v))}{escape(unit)}</text>"
        )
    return "".join(out)


def line_chart(
    label: str,
    series: Sequence[tuple[str, Sequence[float | None]]],
    x_labels: Sequence[str],
    unit: str = "",
    width: int = _W,
) -> Markup:
    """Lines over evenly spaced points; ``None`` breaks a line. A legend names each series."""
    n = max((len(v) for _, v in series), default=0)
    top = _nice_max(max((x for _, v in series for x in v if x is not None), default=0.0))
    plot_w = width - _PAD_L - 8
    plot_h = _H - _PAD_B - _PAD_T

    def xy(i: int, v: float) -> str:
        x = _PAD_L + (plot_w * i / max(1, n - 1))
        y = _H - _PAD_B - plot_h * v / top
        return f"{x:.1f},{y:.1f}"

    body = [_axis(top, unit, width)]
    for k, (name, values) in enumerate(series):
        runs: list[list[str]] = [[]]
        for i, v in enumerate(values):
            if v is None:
                runs.append([])
            else:
                runs[-1].append(xy(i, v))
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                body.append(f'<circle class="series-{k}" cx="{cx}" cy="{cy}" r="2"/>')
            elif run:
                body.append(f'<polyline class="series-{k}" points="{" ".join(run)}"/>')
        body.append(
            f'<text class="legend series-{k}" x="{_PAD_L + 8 + 90 * k}" y="{_PAD_T + 10}">'
            f"{escape(name)}</text>"
        )
    if x_labels:
        last = len(x_labels) - 1
        for i in sorted({0, last // 2, last}):
            x = _PAD_L + plot_w * i / max(1, last)
            anchor = "start" if i == 0 else "end" if i == last else "middle"
            body.append(
                f'<text class="tick" x="{x:.1f}" y="{_H - 6}" text-anchor="{anchor}">'
                f"{escape(x_labels[i])}</text>"
            )
    return _svg("line", label, "".join(body), width=width)


def histogram(label: str, bins: Sequence[tuple[str, int]], unit: str = "") -> Markup:
    """Vertical bars, one per ``(label, count)``."""
    top = _nice_max(max((c for _, c in bins), default=0))
    plot_w = _W - _PAD_L - 8
    plot_h = _H - _PAD_B - _PAD_T
    w = plot_w / max(1, len(bins))
    body = [_axis(top, unit)]
    for i, (name, count) in enumerate(bins):
        h = plot_h * count / top
        x = _PAD_L + i * w
        body.append(
            f'<rect class="bin" x="{x + 1:.1f}" y="{_H - _PAD_B - h:.1f}" width="{w - 2:.1f}" '
            f'height="{h:.1f}" data-count="{count}"><title>{escape(name)}: {count}</title></rect>'
            f'<text class="tick" x="{x + w / 2:.1f}" y="{_H - 6}" text-anchor="middle">'
            f"{escape(name)}</text>"
        )
    return _svg("histogram", label, "".join(body))


def bars(label: str, rows: Sequence[tuple[str, float]], unit: str = "") -> Markup:
    """Horizontal bars, one per ``(label, value)``, widths proportional to the values."""
    top = max((v for _, v in rows), default=0.0) or 1.0
    row_h = 22
    height = max(1, len(rows)) * row_h + 4
    left = 160
    plot_w = _W - left - 80
    body = []
    for i, (name, v) in enumerate(rows):
        y = 2 + i * row_h
        w = plot_w * v / top
        body.append(
            f'<text class="tick" x="{left - 6}" y="{y + 15}" text-anchor="end">'
            f"{escape(name[:28])}</text>"
            f'<rect class="hbar series-{i % 6}" x="{left}" y="{y + 3}" width="{w:.2f}" '
            f'height="{row_h - 6}"/>'
            f'<text class="tick" x="{left + w + 6:.1f}" y="{y + 15}">'
            f"{escape(_num(v))}{escape(unit)}</text>"
        )
    return _svg("bars", label, "".join(body), height=height)


def waterfall(total_ms: float, rows: Sequence[dict[str, Any]]) -> Markup:
    """A request's or job's stages on one time axis: one bar per stage, nested by depth.

    Each bar's width is ``duration_ms / total_ms`` of the plot and its offset is where the stage
    started; the first row is the whole request or job.
    """
    row_h = 22
    left = 180
    plot_w = _W - left - 90
    total = max(total_ms, max((r["offset_ms"] + r["duration_ms"] for r in rows), default=0.0))
    total = total or 1.0
    height = (len(rows) + 1) * row_h + 6
    body = [
        f'<text class="tick" x="{left - 6}" y="17" text-anchor="end">total</text>'
        f'<rect class="bar total" x="{left}" y="4" width="{plot_w * total_ms / total:.3f}" '
        f'height="{row_h - 6}" data-ms="{total_ms:.3f}"/>'
        f'<text class="tick" x="{left + plot_w * total_ms / total + 6:.1f}" y="17">'
        f"{escape(_num(total_ms))} ms</text>"
    ]
    for i, r in enumerate(rows, start=1):
        y = 4 + i * row_h
        x = left + plot_w * r["offset_ms"] / total
        w = plot_w * r["duration_ms"] / total
        name = ("  " * int(r["depth"])) + str(r["stage"])
        cls = "bar stage" + ("" if r["ok"] else " failed")
        body.append(
            f'<text class="tick" x="{left - 6}" y="{y + 13}" text-anchor="end" '
            f'xml:space="preserve">{escape(name[:40])}</text>'
            f'<rect class="{cls}" x="{x:.3f}" y="{y}" width="{w:.3f}" height="{row_h - 6}" '
            f'data-stage="{escape(r["stage"])}" data-ms="{float(r["duration_ms"]):.3f}" '
            f'data-depth="{int(r["depth"])}"><title>{escape(r["stage"])}: '
            f"{escape(_num(float(r['duration_ms'])))} ms</title></rect>"
            f'<text class="tick" x="{x + w + 6:.1f}" y="{y + 13}">'
            f"{escape(_num(float(r['duration_ms'])))} ms</text>"
        )
    return _svg("waterfall", "stages", "".join(body), height=height)
