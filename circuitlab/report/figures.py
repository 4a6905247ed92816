"""Plotly figure specs as plain dicts ({"data": [...], "layout": {...}}), for every experiment's report section.
Every string that can come from a corpus goes through `esc` (Plotly renders its own pseudo-HTML in labels; escaped
entities show as text)."""

from __future__ import annotations

import html

ATTENTION = [[0, "#ffffff"], [1, "#08306b"]]  # white (no attention) to dark blue


def esc(s) -> str:
    return html.escape(str(s), quote=True)


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
    notes = [{"x": x, "y": 1, "xref": "x", "yref": "paper", "text": esc(k), "showarrow": False, "yanchor": "bottom",
              "font": {"size": 10}} for k, x in xs.items() if x is not None]
    return shapes, notes
