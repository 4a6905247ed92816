"""`circuitlab report DIR`: one self-contained HTML file (Plotly inlined once, no network) from the results that
`circuitlab reproduce` leaves in DIR: circuits/attnN/analysis.json, induction/results.json, grokking/results.json.

Safety: every string that reaches HTML text goes through `html.escape`; every JSON blob inside <script> has '<',
'>' and '&' written as \\u escapes, so a corpus token like '</script>' or '<div>' stays text."""

from __future__ import annotations

import json
import math
from pathlib import Path

from circuitlab.errors import CircuitlabError
from circuitlab.experiments.induction_analysis import window_text
from circuitlab.report.figures import (
    bigram_figure, composition_figures, copying_histogram, esc, grokking_figures, induction_figures,
    term_importance_figure,
)

CIRCUIT_MODELS = ("attn0", "attn1", "attn2", "attn3", "attn8")


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


def load_results(out: Path) -> dict:
    res = {"circuits": {}, "induction": None, "grokking": None}
    for n in CIRCUIT_MODELS:
        p = out / "circuits" / n / "analysis.json"
        if p.exists():
            res["circuits"][n] = json.loads(p.read_text())
    for k in ("induction", "grokking"):
        p = out / k / "results.json"
        if p.exists():
            res[k] = json.loads(p.read_text())
    if not res["circuits"] and not res["induction"] and not res["grokking"]:
        raise CircuitlabError(f"{out} has no results to report: run `circuitlab reproduce --out {out}` first")
    return res


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
                     f'<span class="verdict {esc(v.replace(" ", "-"))}">{esc(v)}</span>', link])
    counts = {v: sum(c["verdict"] == v for c in claims) for v in ("reproduced", "not reproduced", "differs")}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    return f"<p>{len(claims)} claims: {esc(summary)}.</p>" + table(
        ["experiment", "paper", "claim", "expected", "measured", "verdict", "section"], rows, "claims")


def circuits_sections(page: Page, an: dict[str, dict]) -> None:
    if not an:
        return
    b_rows = []
    for n, a in an.items():
        for s in a["bigram_agreement"]["strongest"][:8]:
            b_rows.append([esc(n), tok(s["prev"]), tok(s["next"]), f"{s['model_prob']:.3f}", f"{s['corpus_prob']:.3f}",
                           f"{s['corpus_count']:,}"])
    page.section("circuits-bigram", "Zero-layer: the bigram table W_E W_U",
                 page.plot("bigram", bigram_figure(an)) +
                 table(["model", "previous token", "next token", "model P", "corpus P", "corpus count"], b_rows[:16]),
                 "Direct path W_E W_U of each model against the corpus's bigram statistics (previous tokens seen ≥ 100 "
                 "times in the training split).")
    page.section("circuits-copying", "One layer: copying heads",
                 page.plot("copying_hist", copying_histogram({n: a for n, a in an.items() if n != "attn0"})),
                 "Eigenvalue statistic Σλ/Σ|λ| of each head's OV circuit W_E W_V W_O W_U: near +1 = copying.")
    if "attn1" in an and an["attn1"].get("skip_trigrams"):
        blocks = []
        for t in an["attn1"]["skip_trigrams"][:4]:
            rows = [[tok(r["source"]), " ".join(tok(d) for d in r["destinations"]), " ".join(tok(o) for o in r["outs"])]
                    for r in t["rows"][:8]]
            blocks.append(f"<h3>head {esc(t['head'])}</h3>" + table(["[source]", "… [destinations]", "→ [outs]"], rows))
        bugs = an["attn1"].get("skip_trigram_bugs", [])
        bug_text = "".join(f"<li>{esc(json.dumps(b, ensure_ascii=False))}</li>" for b in bugs[:6])
        page.section("circuits-skip-trigrams", "One layer: skip-trigrams [source] … [destination] → [out]",
                     '<div class="grid">' + "".join(f"<div>{b}</div>" for b in blocks) + "</div>" +
                     (f"<h3>Skip-trigram bugs found in the corpus</h3><ul>{bug_text}</ul>" if bugs else ""),
                     "Read from the weights: the QK circuit on tokens picks destinations for a source; the OV circuit "
                     "picks the outs it raises (top 5 each, centred circuits).")
    two = next((an[n] for n in ("attn2", "attn3", "attn8") if n in an and "composition" in an[n]), None)
    if two:
        page.section("circuits-composition", "Two layers: composition and induction heads",
                     '<div class="grid3">' + "".join(page.plot(f"comp_{i}", f) for i, f in
                                                     enumerate(composition_figures(two))) + "</div>",
                     "Composition score ‖W_A W_B‖ / (‖W_A‖ ‖W_B‖) of each layer-0 head's OV circuit into each layer-1 "
                     "head's Q, K or V input.")
    rows = []
    for n, a in an.items():
        for h in a.get("heads", []):
            rows.append([esc(n), esc(h["head"]), f"{h['ov_copying']:.2f}", f"{h['previous_token']:.2f}",
                         f"{h['induction']:.2f}", f"{h['prefix_matching']:.2f}", esc(h.get("attention_driver") or ""),
                         esc(", ".join(h["roles"]) or "–")])
    if rows:
        page.section("circuits-heads", "Head roles", table(
            ["model", "head", "OV copying", "previous-token", "induction", "prefix-matching", "attention driven by",
             "roles"], rows))
    page.section("circuits-terms", "Term importance", page.plot("terms", term_importance_figure(an)),
                 "Loss improvement from each order of the path expansion with attention patterns frozen: order 0 = "
                 "direct path, 1 = individual heads, 2 = virtual heads.")


def viewer_section(page: Page, prompts: list[dict], start_head: str | None = None) -> None:
    """start_head: 'layer.head' shown first (the best induction head), else the last layer's head 0."""
    n_layers, n_heads = len(prompts[0]["patterns"]), len(prompts[0]["patterns"][0])
    layer, head = map(int, (start_head or f"{n_layers - 1}.0").split("."))
    data = [{"title": esc(p["title"]), "tokens": [esc(t) for t in p["tokens"]], "patterns": p["patterns"],
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


def induction_sections(page: Page, r: dict) -> None:
    f = induction_figures(r)
    differs = "".join(f"<li>{esc(d)}</li>" for d in r["differs_from_paper"])
    models = r["models"]
    wrows = [[esc(n), esc(", ".join(m["induction_heads"]) or "none"), f"{m['curve'][-1]['icl']:.3f}",
              f"{(m['curve'][-1].get('best_induction') or 0):.3f}",
              esc(window_text(m["windows"]["induction"])), esc(window_text(m["windows"]["icl"]))] for n, m in models.items()]
    page.section("induction-phase", "The in-context-learning phase change",
                 f"<p>Preset <b>{esc(r['preset'])}</b>; differs from the paper:</p><ul>{differs}</ul>" +
                 table(["model", "induction heads", "final ICL", "final best induction", "induction window",
                        "ICL window"], wrows) +
                 '<div class="grid">' + page.plot("icl", f["icl"]) + page.plot("induction_score", f["induction_score"]) +
                 page.plot("loss", f["loss"]) + page.plot("prefix", f["prefix"]) + "</div>",
                 esc(r["icl_positions"]["note"]) + ". Window: where the smoothed series makes 20%→80% of its change. "
                 "Loss bump (green): where L_2L − L_1L falls fastest.")
    page.section("induction-controls", "Controls: one layer, smeared keys",
                 page.plot("repeat", f["repeat"]),
                 "1L (no induction heads possible without composition), 1L and 2L with smeared keys "
                 "(k_j ← σ(α) k_j + (1 − σ(α)) k_{j−1}): curves overlaid in the plots above.")
    page.section("induction-position", "Loss by token position", page.plot("by_position", f["by_position"]))
    page.section("induction-pca", "Per-token-loss PCA", page.plot("pca", f["pca"]))
    page.section("induction-ablation", "Ablations", page.plot("ablation", f.get("ablation")) +
                 page.plot("ablation_share", f.get("ablation_share")),
                 "Each head's output zeroed with every attention pattern frozen (pattern-preserving), on held-out "
                 "windows.")
    b = r["behaviours"]
    parts = [page.plot("copying", f.get("copying"))]
    for key in ("translation", "pattern"):
        if key in b:
            parts.append(page.plot(key, f.get(key)))
    page.section("induction-behaviours", "Behaviours: copying, translation, pattern matching", "".join(parts))


def grokking_sections(page: Page, g: dict) -> None:
    f = grokking_figures(g)
    ph = g.get("phases", {})
    intro = (f"Modular addition mod {g['config']['p']}, preset {esc(g['preset'])}; phases (epochs): "
             + esc(", ".join(f"{k} {v}" for k, v in ph.items())))
    page.section("grokking-curves", "Grokking: loss and accuracy",
                 '<div class="grid">' + page.plot("g_loss", f["loss"]) + page.plot("g_acc", f["accuracy"]) + "</div>",
                 intro)
    page.section("grokking-measures", "Progress measures",
                 '<div class="grid">' + page.plot("g_restricted", f["restricted"]) + page.plot("g_gini", f["gini"]) +
                 page.plot("g_norm", f["norm"]) + "</div>")
    page.section("grokking-fourier", "The Fourier algorithm",
                 '<div class="grid">' + page.plot("g_fourier", f["fourier"]) + page.plot("g_neurons", f["neurons"]) +
                 "</div>")
    ab = g["ablation"]
    page.section("grokking-ablation", "Frequency ablations", table(
        ["test loss", "nats"],
        [["full model", f"{ab['full_loss']:.3g}"], ["key frequencies removed", f"{ab['without_key_frequencies']:.3g}"],
         ["only key frequencies kept", f"{ab['only_key_frequencies']:.3g}"], ["uniform", f"{ab['uniform_loss']:.3g}"]]))


def build_report(out_dir: Path | str, path: Path | str | None = None) -> Path:
    """Write the report (default DIR/report.html) and return its path."""
    from circuitlab.experiments.circuits import circuits_claims

    out = Path(out_dir)
    res = load_results(out)
    claims = [{"experiment": "circuits", **c.to_json()} for c in circuits_claims(res["circuits"])]
    for k in ("induction", "grokking"):
        if res[k]:
            claims += [{"experiment": k, **c} for c in res[k]["claims"]]
    page = Page()
    page.section("claims", "Claims", claims_table(claims),
                 "Every headline claim checked against a measurement; the section link shows the plot behind it.")
    circuits_sections(page, res["circuits"])
    if res["induction"]:
        heads = res["induction"]["models"].get("2L", {}).get("induction_heads") or [None]
        viewer_section(page, res["induction"]["attention_viewer"], heads[0])
        induction_sections(page, res["induction"])
    if res["grokking"]:
        grokking_sections(page, res["grokking"])
    html_text = _page(page)
    path = Path(path) if path else out / "report.html"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(html_text, encoding="utf-8")
    tmp.replace(path)
    return path


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1250px;padding:0 20px;color:#222}
h1{margin-top:24px} section{border-top:1px solid #ddd;padding-top:8px;margin-top:24px}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top}
th{background:#f4f4f4} code{background:#f6f6f6;padding:0 2px;white-space:pre}
.verdict{padding:1px 6px;border-radius:3px;white-space:nowrap} .reproduced{background:#d9f2d9}
.not-reproduced{background:#f8d7d7} .differs{background:#fff1c2}
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


def _page(page: Page) -> str:
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'unsafe-inline' "
        "'unsafe-eval'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:\">"
        f"<title>circuitlab report</title><style>{CSS}</style></head><body>"
        "<h1>circuitlab: reproduced claims</h1>"
        "<p>Elhage et al. 2021 (circuits), Olsson et al. 2022 (induction heads), Nanda et al. 2023 (grokking), "
        "measured on models trained by <code>circuitlab reproduce</code>.</p>"
        + "".join(page.parts)
        + f'<script id="figures" type="application/json">{script_json(page.figures)}</script>'
        + f"<script>{_plotly_js()}</script><script>{JS}</script></body></html>"
    )
