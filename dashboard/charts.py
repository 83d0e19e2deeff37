"""Charts as pictures: inline SVG rendered on the server, readable without JavaScript.

Colours come from CSS classes (static/app.css), never inline styles, so the strict
Content-Security-Policy holds. Every label passes through `escape`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from markupsafe import Markup, escape

from ledger.money import MICROS_PER_CENT, format_usd


def nice_step(top: int, lines: int = 4) -> int:
    """A round step (1, 2 or 5 × 10ⁿ cents, in µ$) that splits 0..top into at most `lines`."""
    raw = max(top // lines, 1)
    step = MICROS_PER_CENT
    while True:
        for factor in (1, 2, 5):
            if step * factor >= raw:
                return step * factor
        step *= 10


def _axis_label(micros: int) -> str:
    text = format_usd(micros)
    return text[:-3] if text.endswith(".00") else text


# The chart's box (viewBox units): size, the money axis's margin, the date row, the top pad.
WIDTH, HEIGHT, LEFT, BOTTOM, TOP_PAD = 900, 240, 64, 28, 12
PLOT_W, PLOT_H = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP_PAD


def _frame(peak: int, count: int, title: str) -> tuple[list[str], int, float, float]:
    """The opening of a bar chart of `count` columns up to `peak` µ$: the svg, its title and
    the money axis with grid lines. Returns (parts, ceiling µ$, slot width, gap)."""
    step = nice_step(peak)
    ceiling = max(step, -(-peak // step) * step)
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>"]
    for tick in range(0, ceiling + 1, step):
        y = TOP_PAD + PLOT_H - PLOT_H * tick // ceiling
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y}" x2="{WIDTH - 8}" y2="{y}"/>'
                     f'<text class="axis" x="{LEFT - 6}" y="{y + 4}" text-anchor="end">'
                     f"{escape(_axis_label(tick))}</text>")
    slot = PLOT_W / max(count, 1)
    return parts, ceiling, slot, min(2.0, slot * 0.2)


def _close(parts: list[str], days: Sequence[date], slot: float) -> Markup:
    """The first, middle and last dates under the columns, and the end of the svg."""
    n = len(days)
    for i in sorted({0, n // 2, n - 1} if days else set()):
        x = LEFT + i * slot + slot / 2
        anchor = "start" if i == 0 and n > 1 else "end" if i == n - 1 and n > 1 else "middle"
        parts.append(f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">'
                     f"{escape(days[i].strftime('%b %d'))}</text>")
    parts.append("</svg>")
    return Markup("".join(parts))


def daily_bars(points: Sequence[tuple[date, int]], title: str = "Spend per day") -> Markup:
    """A bar per day (µ$), with a money axis and the first, middle and last dates."""
    parts, ceiling, slot, gap = _frame(max((v for _, v in points), default=0), len(points),
                                       title)
    for i, (day, value) in enumerate(points):
        h = PLOT_H * value / ceiling
        x = LEFT + i * slot + gap / 2
        top = TOP_PAD + PLOT_H - h
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{top:.1f}" width="{slot - gap:.1f}" '
                     f'height="{max(h, 0.0):.1f}"><title>{escape(day.isoformat())}: '
                     f"{escape(format_usd(value))}</title></rect>")
    return _close(parts, [day for day, _ in points], slot)


def level(spent: int, cap: int, thresholds: Sequence[int]) -> str:
    """ok, warn (past the first soft threshold), high (past the last) or over (at the cap)."""
    if cap <= 0:
        return "over" if spent > 0 else "ok"
    if spent >= cap:
        return "over"
    pct = spent * 100 // cap
    if thresholds and pct >= max(thresholds):
        return "high"
    if thresholds and pct >= min(thresholds):
        return "warn"
    return "ok"


def meter(spent: int, cap: int, thresholds: Sequence[int],
          projected: int | None = None) -> Markup:
    """A usage bar of spend against a cap, with the soft thresholds marked and, optionally,
    where the period is projected to end."""
    pct = 100.0 if cap <= 0 else min(spent * 100 / cap, 100.0)
    label = f"{format_usd(spent)} of {format_usd(cap)}"
    parts = [f'<svg class="meter meter-{level(spent, cap, thresholds)}" viewBox="0 0 100 10" '
             f'preserveAspectRatio="none" role="img" aria-label="{escape(label)}" '
             'xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(label)}</title>",
             '<rect class="track" x="0" y="0" width="100" height="10"/>']
    if projected is not None and cap > 0 and projected > spent:
        proj = min(projected * 100 / cap, 100.0)
        parts.append(f'<rect class="projected" x="0" y="0" width="{proj:.2f}" height="10"/>')
    parts.append(f'<rect class="fill" x="0" y="0" width="{pct:.2f}" height="10"/>')
    for t in thresholds:
        if 0 < t < 100:
            parts.append(f'<line class="mark" x1="{t}" y1="0" x2="{t}" y2="10"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def share_bar(value: int, largest: int) -> Markup:
    """A horizontal bar for a row of a breakdown table (its share of the largest row)."""
    width = 0.0 if largest <= 0 else max(value, 0) * 100 / largest
    return Markup('<svg class="share" viewBox="0 0 100 8" preserveAspectRatio="none" '
                  'aria-hidden="true" xmlns="http://www.w3.org/2000/svg">'
                  f'<rect x="0" y="0" width="{width:.2f}" height="8"/></svg>')


SERIES_CLASSES = 8  # .s0 … .s7 in static/app.css; "others" is .s-others


def stacked_bars(periods: Sequence[date], series: Sequence[tuple[str, Sequence[int]]],
                 links: Sequence[str], title: str) -> Markup:
    """A column per period (µ$), stacked by series in the order given (the last may be
    "others"), each column a link (to that period's requests). `series` holds (label,
    amount per period); the legend is the page's, with the same .sN classes."""
    columns = [sum(cells[i] for _, cells in series) for i in range(len(periods))]
    parts, ceiling, slot, gap = _frame(max(columns, default=0), len(periods), title)
    for i, day in enumerate(periods):
        x = LEFT + i * slot + gap / 2
        base = float(TOP_PAD + PLOT_H)
        parts.append(f'<a class="column" href="{escape(links[i])}" data-day="{day}">'
                     f"<title>{escape(day.isoformat())}: {escape(format_usd(columns[i]))}"
                     "</title>")
        for s, (label, cells) in enumerate(series):
            h = PLOT_H * cells[i] / ceiling
            if h <= 0:
                continue
            base -= h
            css = "s-others" if label == "(others)" else f"s{s % SERIES_CLASSES}"
            parts.append(f'<rect class="seg {css}" x="{x:.1f}" y="{base:.1f}" '
                         f'width="{slot - gap:.1f}" height="{h:.1f}"><title>'
                         f"{escape(day.isoformat())} · {escape(label)}: "
                         f"{escape(format_usd(cells[i]))}</title></rect>")
        parts.append("</a>")
    return _close(parts, periods, slot)
