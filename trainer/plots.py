"""Inline SVG line charts for the HTML report: no files, no scripts, no plotting library.

A chart is one ``<svg>`` element (HTML5 inline SVG needs no namespace, so the report names no URL); every
series is one ``<polyline class="series" data-series="...">`` with its markers and a legend entry.
"""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
REFERENCE = "#777777"           # dashed grey: the reference series (e.g. the catalogue)
REF_DASHES = ("6 4", "2 3", "10 3 2 3")   # one dash pattern per reference series

W, H = 640, 320
LEFT, RIGHT, TOP, BOTTOM = 56, 170, 28, 44


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def line_chart(title: str, x_labels: Sequence[str], series: Mapping[str, Sequence[float]], x_title: str,
               y_title: str, references: Mapping[str, Sequence[float]] | None = None) -> str:
    """An SVG chart of ``series`` (name -> one y per x label, evenly spaced on x); ``references`` are drawn
    dashed in grey. The y axis runs from 0 to the largest value (at least 1e-9)."""
    lines = [(name, list(ys), False) for name, ys in series.items()] + \
        [(name, list(ys), True) for name, ys in (references or {}).items()]
    for name, ys, _ in lines:
        if len(ys) != len(x_labels):
            raise ValueError(f"series {name!r} has {len(ys)} values for {len(x_labels)} x labels")
    y_max = max([float(v) for _, ys, _ in lines for v in ys] + [1e-9])
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    n = len(x_labels)

    def x(i: int) -> float:
        return LEFT + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v: float) -> float:
        return TOP + ph * (1.0 - float(v) / y_max)

    out = [f'<svg class="chart" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
           f'aria-label="{html.escape(title)}">',
           f'<text x="{LEFT}" y="16" font-weight="bold">{html.escape(title)}</text>',
           f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#bbb"/>']
    for t in range(5):                                      # y grid and ticks
        v = y_max * t / 4
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{_fmt(y(v))}" y2="{_fmt(y(v))}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 4}" y="{_fmt(y(v) + 4)}" text-anchor="end" font-size="11">{v:.3g}</text>')
    for i, lab in enumerate(x_labels):
        out.append(f'<text x="{_fmt(x(i))}" y="{TOP + ph + 16}" text-anchor="middle" font-size="11">'
                   f'{html.escape(str(lab))}</text>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{H - 6}" text-anchor="middle" font-size="12">'
               f'{html.escape(x_title)}</text>')
    out.append(f'<text x="14" y="{TOP + ph / 2}" text-anchor="middle" font-size="12" '
               f'transform="rotate(-90 14 {TOP + ph / 2})">{html.escape(y_title)}</text>')
    n_ref = 0
    for k, (name, ys, ref) in enumerate(lines):
        colour = REFERENCE if ref else PALETTE[k % len(PALETTE)]
        dash = f' stroke-dasharray="{REF_DASHES[n_ref % len(REF_DASHES)]}"' if ref else ""
        n_ref += bool(ref)
        pts = " ".join(f"{_fmt(x(i))},{_fmt(y(v))}" for i, v in enumerate(ys))
        label = html.escape(name)
        out.append(f'<polyline class="series{" reference" if ref else ""}" data-series="{label}" fill="none" '
                   f'stroke="{colour}" stroke-width="2"{dash} points="{pts}"><title>{label}</title></polyline>')
        if not ref:
            out += [f'<circle cx="{_fmt(x(i))}" cy="{_fmt(y(v))}" r="2.5" fill="{colour}"/>'
                    for i, v in enumerate(ys)]
        ly = TOP + 10 + 16 * k
        out.append(f'<line x1="{LEFT + pw + 10}" x2="{LEFT + pw + 30}" y1="{ly}" y2="{ly}" stroke="{colour}" '
                   f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{LEFT + pw + 34}" y="{ly + 4}" font-size="11">{label}</text>')
    out.append("</svg>")
    return "\n".join(out)
