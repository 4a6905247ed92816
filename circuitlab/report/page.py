"""One self-contained HTML page (Plotly inlined once, no network) built from sections that the experiments write:
the page, its tables, the claims table and the attention viewer. Imports no experiment.

Safety: every string that reaches HTML text goes through `html.escape`; every JSON blob inside <script> has '<',
'>' and '&' written as \\u escapes, so a corpus token like '</script>' or '<div>' stays text."""

from __future__ import annotations

import json
import math
from pathlib import Path

from circuitlab.report.figures import esc, label
from circuitlab.results import atomic_write_text


def script_json(obj) -> str:
    """JSON that is safe inside a <script> element (no '</script>', no '<!--'), with NaN/inf as null."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x
    s = json.dumps(clean(obj), separators=(",", ":"))
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def tok(s: str) -> str:
    """A token for an HTML table: escaped, whitespace made visible."""
    return f"<code>{esc(str(s).replace(chr(10), '⏎').replace(chr(9), '⇥'))}</code>"


def table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """headers are escaped here; cells must already be safe HTML (use esc/tok)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Page:
    def __init__(self) -> None:
        self.figures: dict[str, dict] = {}
        self.parts: list[str] = []

    def plot(self, key: str, spec: dict | None) -> str:
        if spec is None:
            return ""
        self.figures[key] = spec
        return f'<div class="plot" id="fig-{esc(key)}" data-fig="{esc(key)}"></div>'

    def section(self, sid: str, title: str, body: str, intro: str = "") -> None:
        p = f"<p>{intro}</p>" if intro else ""
        self.parts.append(f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{p}{body}</section>')


def claims_table(claims: list[dict]) -> str:
    rows = []
    for c in claims:
        v = c["verdict"]
        link = f'<a href="#{esc(c["section"])}">{esc(c["section"])}</a>' if c.get("section") else ""
        rows.append([esc(c["experiment"]), esc(c["paper"]), esc(c["claim"]), esc(c["expected"]), esc(c["measured"]),
                     f'<span class="verdict {esc(v.split(":")[0].replace(" ", "-"))}">{esc(v)}</span>', link])
    counts = {v: sum(c["verdict"] == v for c in claims) for v in ("reproduced", "not reproduced", "differs")}
    counts["unstable"] = sum(c["verdict"].startswith("unstable") for c in claims)  # the float-noise check's
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    return f"<p>{len(claims)} claims: {esc(summary)}.</p>" + table(
        ["experiment", "paper", "claim", "expected", "measured", "verdict", "section"], rows, "claims")


def viewer_section(page: Page, prompts: list[dict], start_head: str | None = None) -> None:
    """start_head: 'layer.head' shown first (the best induction head), else the last layer's head 0."""
    n_layers, n_heads = len(prompts[0]["patterns"]), len(prompts[0]["patterns"][0])
    layer, head = map(int, (start_head or f"{n_layers - 1}.0").split("."))
    data = [{"title": label(p["title"]), "tokens": [label(t) for t in p["tokens"]], "patterns": p["patterns"],
             "start": [layer, head]} for p in prompts]
    page.figures["__viewer__"] = data
    prompt_buttons = "".join(f'<button class="prompt" data-prompt="{i}">{esc(p["title"])}</button>'
                             for i, p in enumerate(prompts))
    head_buttons = "".join(f'<button class="head" data-layer="{l}" data-head="{h}">{l}.{h}</button>'
                           for l in range(n_layers) for h in range(n_heads))
    page.section("attention-viewer", "Attention viewer",
                 f'<div id="viewer" data-head=""><div>prompt: {prompt_buttons}</div><div>head: {head_buttons}</div>'
                 f'<div class="plot tall" id="viewer-plot"></div></div>',
                 "The 2-layer model's attention on two prompts. Click a head to show its pattern (query rows, key "
                 "columns); an induction head lights up the stripe one token after the earlier copy.")


# Nothing is fetched: no source is allowed but the page's own inline scripts and styles, and data: / blob: images.
CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:")


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1250px;padding:0 20px;color:#222}
h1{margin-top:24px} section{border-top:1px solid #ddd;padding-top:8px;margin-top:24px}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top}
th{background:#f4f4f4} code{background:#f6f6f6;padding:0 2px;white-space:pre}
.verdict{padding:1px 6px;border-radius:3px;white-space:nowrap} .reproduced{background:#d9f2d9}
.not-reproduced{background:#f8d7d7} .differs{background:#fff1c2} .unstable{background:#e4d9f4}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:8px} .grid3{display:grid;grid-template-columns:1fr 1fr 1fr;gap:8px}
.plot{min-height:300px} .tall{height:640px} button{margin:2px;padding:2px 8px;cursor:pointer}
button.active{background:#333;color:#fff}
"""

JS = """
const FIGS = JSON.parse(document.getElementById('figures').textContent);
const CONF = {displaylogo:false, responsive:true, displayModeBar:false};
document.querySelectorAll('.plot[data-fig]').forEach(function(div){
  const f = FIGS[div.dataset.fig]; Plotly.newPlot(div, f.data, f.layout, CONF);
});
const VIEW = FIGS['__viewer__'];
if (VIEW) {
  const state = {p: 0, l: VIEW[0].start[0], h: VIEW[0].start[1]};
  const div = document.getElementById('viewer-plot');
  function draw() {
    const pr = VIEW[state.p];
    const labels = pr.tokens.map(function(t, i){ return i + ' ' + t; });
    const trace = {type:'heatmap', z: pr.patterns[state.l][state.h], x: labels, y: labels, colorscale:[[0,'#ffffff'],[1,'#08306b']],
                   zmin: 0, zmax: 1, hovertemplate:'query %{y}<br>key %{x}<br>%{z:.3f}<extra></extra>'};
    const layout = {title:{text: pr.title + ': head ' + state.l + '.' + state.h, font:{size:14}},
                    yaxis:{autorange:'reversed', tickfont:{size:9}}, xaxis:{tickfont:{size:9}},
                    margin:{l:110, r:20, t:40, b:110}, height:640};
    Plotly.react(div, [trace], layout, CONF);
    document.getElementById('viewer').dataset.head = state.l + '.' + state.h;
    document.querySelectorAll('#viewer button.head').forEach(function(b){
      b.classList.toggle('active', +b.dataset.layer === state.l && +b.dataset.head === state.h); });
    document.querySelectorAll('#viewer button.prompt').forEach(function(b){
      b.classList.toggle('active', +b.dataset.prompt === state.p); });
  }
  document.querySelectorAll('#viewer button.head').forEach(function(b){
    b.addEventListener('click', function(){ state.l = +b.dataset.layer; state.h = +b.dataset.head; draw(); }); });
  document.querySelectorAll('#viewer button.prompt').forEach(function(b){
    b.addEventListener('click', function(){ state.p = +b.dataset.prompt; draw(); }); });
  draw();
}
"""


def render(page: Page, title: str, intro_html: str = "") -> str:
    """The whole page as HTML text. `title` is escaped here; `intro_html` must already be safe HTML."""
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>circuitlab report</title><style>{CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1>" + (f"<p>{intro_html}</p>" if intro_html else "")
        + "".join(page.parts)
        + f'<script id="figures" type="application/json">{script_json(page.figures)}</script>'
        + f"<script>{_plotly_js()}</script><script>{JS}</script></body></html>"
    )


def write_page(page: Page, path: Path | str, title: str, intro_html: str = "") -> Path:
    path = Path(path)
    atomic_write_text(path, render(page, title, intro_html))
    return path
