"""Plotly figure specs as plain dicts ({"data": [...], "layout": {...}}), for every experiment's report section.
Every string that can come from a corpus goes through `label` (Plotly renders its own pseudo-HTML in labels; escaped
entities show as text)."""

from __future__ import annotations

import html

ATTENTION = [[0, "#ffffff"], [1, "#08306b"]]  # white (no attention) to dark blue


def esc(s) -> str:
    """For HTML text and attributes."""
    return html.escape(str(s), quote=True)


def label(s) -> str:
    """For Plotly's labels (titles, ticks, hover text, annotations): Plotly reads its own pseudo-HTML there and
    decodes &lt; &gt; &amp; but not &quot;, so quotes are left as they are (a label is never an HTML attribute)."""
    return html.escape(str(s), quote=False)


def fig(data: list, title: str, x: str = "", y: str = "", **layout) -> dict:
    base = {"title": {"text": title, "font": {"size": 14}}, "xaxis": {"title": {"text": x}},
            "yaxis": {"title": {"text": y}}, "margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "height": 340,
            "legend": {"orientation": "h", "y": -0.25}}
    for k, v in layout.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return {"data": data, "layout": base}


def window_shapes(windows: list[tuple[int | None, int | None, str]]) -> list[dict]:
    return [{"type": "rect", "xref": "x", "yref": "paper", "x0": a, "x1": b, "y0": 0, "y1": 1, "fillcolor": c,
             "opacity": 0.15, "line": {"width": 0}} for a, b, c in windows if a is not None and b is not None]


def vlines(xs: dict[str, float | None]) -> tuple[list[dict], list[dict]]:
    shapes = [{"type": "line", "xref": "x", "yref": "paper", "x0": x, "x1": x, "y0": 0, "y1": 1,
               "line": {"dash": "dot", "width": 1, "color": "#555"}} for x in xs.values() if x is not None]
    notes = [{"x": x, "y": 1, "xref": "x", "yref": "paper", "text": label(k), "showarrow": False, "yanchor": "bottom",
              "font": {"size": 10}} for k, x in xs.items() if x is not None]
    return shapes, notes


def band(series: list[tuple[list[float], list[float | None]]], name: str, color: str | None = None) -> list[dict]:
    """The spread of one curve over seeds as a shaded band: series = [(x, y)] for each seed. At each x of the first
    seed, the band spans the lowest to the highest y of the seeds measured at that same x (same checkpoint
    schedule), where at least two are; [] when there is no second seed."""
    if len(series) < 2:
        return []
    at = [dict(zip(x, y)) for x, y in series]
    xs, lo, hi = [], [], []
    for x in series[0][0]:
        ys = [d[x] for d in at if d.get(x) is not None]
        if len(ys) >= 2:
            xs.append(x)
            lo.append(min(ys))
            hi.append(max(ys))
    if not xs:
        return []
    style = {"type": "scatter", "mode": "lines", "line": {"width": 0, "color": color}, "hoverinfo": "skip",
             "legendgroup": f"band {name}"}
    return [{**style, "x": xs, "y": hi, "showlegend": False, "name": f"{name} max"},
            {**style, "x": xs, "y": lo, "fill": "tonexty", "opacity": 0.2, "fillcolor": _faint(color),
             "name": f"{name}: {len(series)} seeds, min–max"}]


def _faint(color: str | None) -> str:
    """A hex colour at 20% opacity (Plotly fills ignore trace opacity)."""
    if not color or not color.startswith("#") or len(color) != 7:
        return "rgba(120,120,120,0.2)"
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},0.2)"
