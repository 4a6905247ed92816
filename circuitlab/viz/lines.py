"""A small line chart as inline SVG, drawn in Python: it shows in Jupyter, VS Code and a notebook's static preview,
with no JavaScript and no network (what the notebooks plot curves with)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from circuitlab.report.figures import esc

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


@dataclass
class Lines:
    """Curves y(x) by name; log_x for token counts. `marks`: vertical dotted lines {label: x}."""

    x: list[float]
    series: dict[str, list[float | None]]
    title: str = ""
    x_label: str = ""
    y_label: str = ""
    log_x: bool = False
    marks: dict[str, float] | None = None
    width: int = 640
    height: int = 300

    def _repr_svg_(self) -> str:
        return self.svg()

    def svg(self) -> str:
        W, H, l, r, t, b = self.width, self.height, 56, 12, 28, 62
        fx = (lambda v: math.log10(max(v, 1e-12))) if self.log_x else float
        xs = [fx(v) for v in self.x if not self.log_x or v > 0]
        ys = [y for s in self.series.values() for y in s if y is not None and math.isfinite(y)]
        if not xs or not ys:
            return f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="40"><text x="4" y="20">{esc(self.title)}: no data</text></svg>'
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
        X = lambda v: l + (W - l - r) * (fx(v) - x0) / (x1 - x0)  # noqa: E731
        Y = lambda v: t + (H - t - b) * (1 - (v - y0) / (y1 - y0))  # noqa: E731
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
               f'<text x="{l}" y="16" font-size="13">{esc(self.title)}</text>',
               f'<rect x="{l}" y="{t}" width="{W - l - r}" height="{H - t - b}" fill="none" stroke="#ccc"/>']
        for v in (y0, (y0 + y1) / 2, y1):
            out.append(f'<text x="{l - 4}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
        ticks = [self.x[0], self.x[len(self.x) // 2], self.x[-1]] if self.x else []
        for v in ticks:
            if not self.log_x or v > 0:
                out.append(f'<text x="{X(v):.1f}" y="{H - b + 14}" text-anchor="middle">{v:,.4g}</text>')
        out.append(f'<text x="{(W + l) / 2}" y="{H - b + 28}" text-anchor="middle">{esc(self.x_label)}'
                   f'{" (log scale)" if self.log_x else ""}</text>')
        out.append(f'<text x="12" y="{(H - b + t) / 2}" transform="rotate(-90 12 {(H - b + t) / 2})" '
                   f'text-anchor="middle">{esc(self.y_label)}</text>')
        for name, v in (self.marks or {}).items():
            if v is not None and (not self.log_x or v > 0):
                out.append(f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{t}" y2="{H - b}" stroke="#555" stroke-dasharray="3,3"/>'
                           f'<text x="{X(v) + 3:.1f}" y="{t + 12}">{esc(name)}</text>')
        for i, (name, s) in enumerate(self.series.items()):
            c = COLOURS[i % len(COLOURS)]
            pts = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in zip(self.x, s)
                           if y is not None and math.isfinite(y) and (not self.log_x or x > 0))
            out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="1.6"/>')
            out.append(f'<text x="{l + 140 * i}" y="{H - 8}" fill="{c}">— {esc(name)}</text>')
        return "".join(out) + "</svg>"


def lines(x, series: dict, **kw) -> Lines:
    return Lines([float(v) for v in x], {k: [None if v is None else float(v) for v in s] for k, s in series.items()}, **kw)
