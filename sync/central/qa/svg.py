"""Charts as SVG text, drawn on the server: bars for distributions and counts, a line for a trend.

No script and no ``style`` attribute (the console's Content-Security-Policy
allows neither inline): shapes carry classes the console's stylesheet
colours, and presentation attributes as a fallback. Every label is escaped;
the chart has a ``<title>`` and ``role="img"`` with an ``aria-label`` so a
screen reader names it. Output is one well-formed XML element.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

WIDTH, HEIGHT = 560, 220
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP, MARGIN_RIGHT = 44, 40, 24, 12
MAX_POINTS = 400  # more would not be readable at this width; the caller sums first


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _frame(title: str, body: list[str], y_max: float, unit: str) -> str:
    label = quoteattr(title)
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    axis = [f'<line class="axis" x1="{MARGIN_LEFT}" y1="{MARGIN_TOP}" x2="{MARGIN_LEFT}" '
            f'y2="{HEIGHT - MARGIN_BOTTOM}" stroke="#666"/>',
            f'<line class="axis" x1="{MARGIN_LEFT}" y1="{HEIGHT - MARGIN_BOTTOM}" x2="{WIDTH - MARGIN_RIGHT}" '
            f'y2="{HEIGHT - MARGIN_BOTTOM}" stroke="#666"/>']
    for frac in (0.0, 0.5, 1.0):
        y = MARGIN_TOP + plot_h * (1 - frac)
        axis.append(f'<text class="tick" x="{MARGIN_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" '
                    f'font-size="10">{escape(_fmt(y_max * frac))}{escape(unit)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label={label}>'
            f'<title>{escape(title)}</title>'
            f'<text class="chart-title" x="{MARGIN_LEFT}" y="14" font-size="12">{escape(title)}</text>'
            + "".join(axis) + "".join(body) + "</svg>")


def _labels(labels: Sequence[str], xs: Sequence[float]) -> list[str]:
    step = max(1, len(labels) // 12)  # at most about a dozen labels fit under the axis
    return [f'<text class="label" x="{x:.1f}" y="{HEIGHT - MARGIN_BOTTOM + 14}" text-anchor="middle" '
            f'font-size="10">{escape(label[:16])}</text>'
            for i, (label, x) in enumerate(zip(labels, xs)) if i % step == 0]


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], *, unit: str = "") -> str:
    """Vertical bars, one per label; an empty chart says "no data"."""
    labels, values = list(labels)[-MAX_POINTS:], list(values)[-MAX_POINTS:]
    if not values:
        return _frame(title, [_no_data()], 1, unit)
    y_max = max(values) if max(values) > 0 else 1  # all zero: an empty plot on a 0..1 scale
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    slot = plot_w / len(values)
    body, xs = [], []
    for i, (label, value) in enumerate(zip(labels, values)):
        h = plot_h * max(value, 0) / y_max
        x = MARGIN_LEFT + i * slot
        xs.append(x + slot / 2)
        body.append(f'<rect class="bar" x="{x + slot * 0.1:.1f}" y="{MARGIN_TOP + plot_h - h:.1f}" '
                    f'width="{slot * 0.8:.1f}" height="{h:.1f}" fill="#3a6ea5">'
                    f'<title>{escape(label)}: {escape(_fmt(value))}{escape(unit)}</title></rect>')
    return _frame(title, body + _labels(labels, xs), y_max, unit)


def line_chart(title: str, labels: Sequence[str], values: Sequence[float | None], *, y_max: float,
               unit: str = "") -> str:
    """A line through the values (a None leaves a gap), dots at each, on a fixed scale 0..y_max."""
    labels, values = list(labels)[-MAX_POINTS:], list(values)[-MAX_POINTS:]
    if not any(v is not None for v in values):
        return _frame(title, [_no_data()], y_max, unit)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    slot = plot_w / len(values)
    xs = [MARGIN_LEFT + slot * (i + 0.5) for i in range(len(values))]
    body, run = [], []
    for label, x, value in zip(labels, xs, values):
        if value is None:
            run = _flush(body, run)
            continue
        y = MARGIN_TOP + plot_h * (1 - min(max(value, 0), y_max) / y_max)
        run.append(f"{x:.1f},{y:.1f}")
        body.append(f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#3a6ea5">'
                    f'<title>{escape(label)}: {escape(_fmt(value))}{escape(unit)}</title></circle>')
    _flush(body, run)
    return _frame(title, body + _labels(labels, xs), y_max, unit)


def _flush(body: list[str], run: list[str]) -> list[str]:
    if len(run) > 1:
        body.insert(0, f'<polyline class="line" points="{" ".join(run)}" fill="none" stroke="#3a6ea5" '
                       'stroke-width="2"/>')
    return []


def _no_data() -> str:
    return (f'<text class="no-data" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" '
            'font-size="12">no data</text>')
