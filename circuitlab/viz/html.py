"""The explorer's HTML: one self-contained element (a few KB of plain JavaScript, no library, no network) that renders
the data of `circuitlab.viz.explore` or `circuitlab.viz.attention`, as a page of its own (`circuitlab view`) or inline
in a Jupyter / VS Code notebook.

Safety: the data travels as JSON inside <script type="application/json"> (written by `script_json`, so no
'</script>' can close it); every string from a text or a tokenizer reaches the page through `textContent`, never as
HTML."""

from __future__ import annotations

import uuid

from circuitlab.report.figures import esc
from circuitlab.report.page import CSP, script_json
from circuitlab.results import atomic_write_text

CSS = """
.cl-view{font-family:system-ui,sans-serif;font-size:13px;color:#222;line-height:1.45}
.cl-view h3{margin:4px 0;font-size:15px} .cl-view .cl-notes{color:#8a5300}
.cl-view .cl-bar{display:flex;flex-wrap:wrap;gap:14px;align-items:center;margin:6px 0}
.cl-view input[type=range]{width:260px} .cl-view button{margin:1px;padding:1px 7px;cursor:pointer;font-size:12px}
.cl-view button.cl-on{background:#333;color:#fff}
.cl-view .cl-cols{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.cl-view .cl-heads td{padding:0} .cl-view .cl-heads button{width:58px;border:1px solid #ccc}
.cl-view .cl-many button{width:40px;font-size:10px;padding:0}
.cl-view .cl-heads button.cl-on{outline:2px solid #d62728;background:inherit;color:inherit}
.cl-view .cl-tokens{max-width:620px;max-height:560px;overflow:auto;border:1px solid #ddd;padding:6px;
  font-family:ui-monospace,monospace;font-size:12px}
.cl-view .cl-tok{white-space:pre;cursor:pointer;border-radius:2px;padding:0 1px}
.cl-view .cl-tok.cl-q{outline:2px solid #d62728} .cl-view .cl-tok.cl-bos{color:#999}
.cl-view .cl-info{min-width:260px;max-width:340px;font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap}
.cl-view canvas{border:1px solid #ddd;image-rendering:pixelated;cursor:crosshair}
.cl-view svg text{font-size:10px}
"""

JS = r"""
window.circuitlabView = window.circuitlabView || (function(){
function el(tag, attrs, text){ const e = document.createElement(tag);
  for (const k in (attrs || {})) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; return e; }
function bytes(b64){ const s = atob(b64), u = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i); return u; }
async function gunzip(u){ return await new Response(new Blob([u]).stream().pipeThrough(new DecompressionStream('gzip'))).arrayBuffer(); }
function unpack(D, buf, ck){
  const H = D.n_layers * D.n_heads, T = D.T, K = D.top_logits, Id = D.id_bytes === 4 ? Uint32Array : Uint16Array;
  let off = 0;
  function take(C, n){ const nb = n * C.BYTES_PER_ELEMENT; const a = new C(buf.slice(off, off + nb)); off += nb + ((4 - nb % 4) % 4); return a; }
  const counts = take(Uint8Array, H * T); let N = 0; for (let i = 0; i < counts.length; i++) N += counts[i];
  const v = {counts: counts, keys: take(Uint16Array, N), w: take(Uint8Array, N)};
  v.dlaIds = take(Id, H * T * K); v.dlaVals = take(Int8Array, H * T * K); v.dlaNext = take(Int8Array, H * T);
  v.predIds = take(Id, T * K); v.predP = take(Uint8Array, T * K); v.loss = take(Float32Array, T); v.scale = ck.scale;
  v.start = new Uint32Array(H * T + 1); for (let i = 0; i < H * T; i++) v.start[i + 1] = v.start[i] + counts[i];
  return v;
}
function show(t){ return t.replace(/\n/g, '⏎\n').replace(/\t/g, '⇥'); }  // the break stays inside the token
function fmt(x, d){ return (x === null || x === undefined || Number.isNaN(x)) ? '–' : x.toFixed(d === undefined ? 2 : d); }

return function(root){
  const D = JSON.parse(root.querySelector('script.cl-data').textContent);
  const H = D.n_layers * D.n_heads, T = D.T, C = D.checkpoints.length, K = D.top_logits;
  const cache = new Map();
  const S = {ck: C - 1, ck2: 0, l: D.start[0], h: D.start[1], q: D.query == null ? null : D.query, pinned: D.query != null, mode: 'attention',
             score: D.scores ? 'induction' : null, draws: 0};
  const vocab = function(i){ const s = D.vocab[i]; return s === undefined ? '#' + i : s; };
  async function view(i){ if (!cache.has(i)) cache.set(i, gunzip(bytes(D.checkpoints[i].blob)).then(function(b){ return unpack(D, b, D.checkpoints[i]); })); return cache.get(i); }
  // ---- skeleton (static strings only; data goes in through textContent)
  root.appendChild(el('h3', {}, D.title));
  (D.notes || []).forEach(function(n){ root.appendChild(el('div', {class: 'cl-notes'}, n)); });
  const bar = root.appendChild(el('div', {class: 'cl-bar'}));
  const ckBox = bar.appendChild(el('label', {}, 'checkpoint ')); const ck = ckBox.appendChild(el('input', {type: 'range', min: 0, max: C - 1, value: C - 1, class: 'cl-ck'}));
  const ckLabel = bar.appendChild(el('span', {class: 'cl-ck-label'}));
  const modes = bar.appendChild(el('span', {}, 'colour tokens by: '));
  const modeNames = {attention: 'attention of the head', loss: 'loss', change: 'loss change'};
  for (const m in modeNames) { if (m === 'change' && C < 2) continue;
    const b = modes.appendChild(el('button', {'data-mode': m, class: 'cl-mode'}, modeNames[m])); b.onclick = function(){ S.mode = m; draw(); }; }
  const cmp = bar.appendChild(el('label', {class: 'cl-cmp'}, 'change from checkpoint '));
  const ck2 = cmp.appendChild(el('input', {type: 'range', min: 0, max: C - 1, value: 0, class: 'cl-ck2'}));
  const ck2Label = cmp.appendChild(el('span', {}));
  const cols = root.appendChild(el('div', {class: 'cl-cols'}));
  const left = cols.appendChild(el('div', {}));
  let scoreBar = null;
  if (D.scores) { scoreBar = left.appendChild(el('div', {}, 'head colour: '));
    for (const s in D.scores) { const b = scoreBar.appendChild(el('button', {'data-score': s, class: 'cl-score'}, s.replace('_', ' ')));
      b.onclick = function(){ S.score = s; draw(); }; } }
  const grid = left.appendChild(el('table', {class: 'cl-heads' + (H > 64 ? ' cl-many' : '')}));
  const headButtons = [];
  for (let l = 0; l < D.n_layers; l++) { const tr = grid.appendChild(el('tr'));
    for (let h = 0; h < D.n_heads; h++) { const b = tr.appendChild(el('td')).appendChild(el('button', {'data-layer': l, 'data-head': h, class: 'cl-head'}));
      b.onclick = function(){ S.l = l; S.h = h; draw(); }; headButtons.push(b); } }
  const canvas = left.appendChild(el('canvas', {class: 'cl-pattern', width: 320, height: 320}));
  const curve = left.appendChild(document.createElementNS('http://www.w3.org/2000/svg', 'svg'));
  curve.setAttribute('class', 'cl-curve'); curve.setAttribute('width', 320); curve.setAttribute('height', C > 1 ? 300 : 0);
  const mid = cols.appendChild(el('div', {class: 'cl-tokens'}));
  const info = cols.appendChild(el('div', {class: 'cl-info'}));
  const spans = D.tokens.map(function(t, i){ const s = mid.appendChild(el('span', {class: 'cl-tok' + (D.bos_at.indexOf(i) >= 0 ? ' cl-bos' : ''), 'data-i': i}, show(t)));
    s.onmouseenter = function(){ if (!S.pinned) { S.q = i; draw(); } };
    s.onclick = function(){ S.pinned = !(S.pinned && S.q === i); S.q = i; draw(); };
    return s; });
  canvas.onclick = function(ev){ const r = canvas.getBoundingClientRect(); S.q = Math.min(T - 1, Math.floor((ev.clientY - r.top) / r.height * T)); S.pinned = true; draw(); };
  ck.oninput = function(){ S.ck = +ck.value; draw(); }; ck2.oninput = function(){ S.ck2 = +ck2.value; draw(); };
  if (C < 2) { ckBox.style.display = 'none'; cmp.style.display = 'none'; }

  function label(i){ const c = D.checkpoints[i]; return c.label || ('step ' + c.step + ' · ' + c.tokens.toLocaleString() + ' tokens'); }
  function headScore(i, hi){ return D.scores && S.score ? D.scores[S.score][i][hi] : null; }
  function drawPattern(v, hi){
    const ctx = canvas.getContext('2d'), img = ctx.createImageData(T, T);
    for (let q = 0; q < T; q++) { const r = hi * T + q;
      for (let j = v.start[r]; j < v.start[r + 1]; j++) { const k = v.keys[j], a = v.w[j], p = 4 * (q * T + k);
        img.data[p] = 8; img.data[p + 1] = 48; img.data[p + 2] = 107; img.data[p + 3] = a; } }
    const off = document.createElement('canvas'); off.width = T; off.height = T; off.getContext('2d').putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false; ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
    if (S.q !== null) { ctx.strokeStyle = '#d62728'; const y = (S.q + 0.5) * canvas.height / T; ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(canvas.width, y); ctx.stroke(); }
  }
  function drawCurve(hi){
    while (curve.firstChild) curve.removeChild(curve.firstChild);
    if (C < 2) return;
    const NS = 'http://www.w3.org/2000/svg', W = 320, x0 = 34, x1 = W - 8;
    function svg(tag, a, text){ const e = document.createElementNS(NS, tag); for (const k in a) e.setAttribute(k, a[k]); if (text !== undefined) e.textContent = text; curve.appendChild(e); return e; }
    const X = function(i){ return x0 + (x1 - x0) * i / (C - 1); };
    function panel(top, h, series, lo, hi_, title){
      svg('text', {x: x0, y: top - 4}, title);
      svg('rect', {x: x0, y: top, width: x1 - x0, height: h, fill: 'none', stroke: '#ccc'});
      svg('text', {x: 2, y: top + 8}, fmt(hi_)); svg('text', {x: 2, y: top + h}, fmt(lo));
      const Y = function(y){ return top + h - h * (y - lo) / ((hi_ - lo) || 1); };
      series.forEach(function(s, n){ const pts = s.y.map(function(y, i){ return (y === null || Number.isNaN(y)) ? null : X(i) + ',' + Y(y); }).filter(Boolean);
        if (pts.length) svg('polyline', {points: pts.join(' '), fill: 'none', stroke: s.color, 'stroke-width': 1.5});
        svg('text', {x: x0 + 4 + 92 * n, y: top + h + 12, fill: s.color}, s.name); });
      svg('line', {x1: X(S.ck), x2: X(S.ck), y1: top, y2: top + h, stroke: '#d62728', 'stroke-dasharray': '3,2'});
    }
    const colors = {induction: '#1f77b4', prefix_matching: '#ff7f0e', previous_token: '#2ca02c'};
    if (D.scores) panel(18, 100, Object.keys(D.scores).map(function(s){ return {name: s.replace('_', ' '), color: colors[s] || '#555', y: D.scores[s].map(function(r){ return r[hi]; })}; }),
                        0, 1, 'head ' + S.l + '.' + S.h + ' over checkpoints');
    const losses = D.checkpoints.map(function(c){ return c.loss_mean; }).filter(function(x){ return x !== null; });
    if (losses.length) panel(D.scores ? 170 : 18, 90, [{name: 'mean loss on this text', color: '#9467bd', y: D.checkpoints.map(function(c){ return c.loss_mean; })}],
                             Math.min.apply(null, losses), Math.max.apply(null, losses), 'loss on the text (nats)');
    svg('text', {x: x0, y: 296}, 'first: ' + label(0)); svg('text', {x: x0 + 150, y: 296}, '→ ' + label(C - 1));
  }
  function tokenColours(v, v2, hi){
    spans.forEach(function(s){ s.style.background = ''; s.style.color = ''; s.classList.remove('cl-q'); s.title = ''; });
    if (S.mode === 'attention') {
      if (S.q === null) return; const r = hi * T + S.q;
      for (let j = v.start[r]; j < v.start[r + 1]; j++) { const a = v.w[j] / 255, s = spans[v.keys[j]];
        s.style.background = 'rgba(8,48,107,' + a.toFixed(3) + ')'; if (a > 0.5) s.style.color = '#fff'; s.title = 'attention ' + a.toFixed(3); }
      spans[S.q].classList.add('cl-q'); return;
    }
    const val = new Float32Array(T).fill(NaN); let m = 0;
    for (let q = 0; q < T; q++) { const x = S.mode === 'loss' ? v.loss[q] : v.loss[q] - v2.loss[q];
      if (!Number.isNaN(x)) { val[q] = x; m = Math.max(m, Math.abs(x)); } }
    for (let q = 0; q < T; q++) { const x = val[q], s = spans[q + D.loss_shift]; if (Number.isNaN(x) || !s) continue;
      const a = m > 0 ? Math.abs(x) / m : 0;
      s.style.background = (S.mode === 'loss' || x > 0 ? 'rgba(214,39,40,' : 'rgba(44,160,44,') + a.toFixed(3) + ')';
      s.title = (S.mode === 'loss' ? 'loss ' : 'loss change ') + x.toFixed(3) + ' nats'; }
    if (S.q !== null) spans[S.q].classList.add('cl-q');
  }
  function describe(v, v2, hi){
    const lines = ['head ' + S.l + '.' + S.h + ' · ' + label(S.ck)];
    if (D.scores) for (const s in D.scores) lines.push('  ' + s.replace('_', ' ') + ' score ' + fmt(D.scores[s][S.ck][hi]));
    if (S.q === null) { lines.push('', 'hover or click a token (or a row of the pattern)'); info.textContent = lines.join('\n'); return; }
    const q = S.q, r = hi * T + q;
    lines.push('', 'query ' + q + ' ' + JSON.stringify(D.tokens[q]) + (S.pinned ? ' (pinned: click again to free)' : ''), 'attends to:');
    for (let j = v.start[r]; j < v.start[r + 1]; j++) lines.push('  ' + fmt(v.w[j] / 255, 3) + '  ' + v.keys[j] + ' ' + JSON.stringify(D.tokens[v.keys[j]]));
    lines.push('writes to the logits (direct logit attribution):');
    for (let k = 0; k < K; k++) lines.push('  ' + (v.dlaVals[r * K + k] / 127 * v.scale >= 0 ? '+' : '') + fmt(v.dlaVals[r * K + k] / 127 * v.scale) + '  ' + JSON.stringify(vocab(v.dlaIds[r * K + k])));
    if (D.targets[q] >= 0) lines.push('  on the right next token ' + JSON.stringify(vocab(D.targets[q])) + ': ' + fmt(v.dlaNext[r] / 127 * v.scale));
    lines.push('the model predicts:');
    for (let k = 0; k < K; k++) lines.push('  ' + fmt(v.predP[q * K + k] / 255, 2) + '  ' + JSON.stringify(vocab(v.predIds[q * K + k])));
    if (D.targets[q] >= 0) { lines.push('loss of ' + JSON.stringify(vocab(D.targets[q])) + ': ' + fmt(v.loss[q], 3) + ' nats');
      if (S.mode === 'change') lines.push('change from ' + label(S.ck2) + ': ' + fmt(v.loss[q] - v2.loss[q], 3)); }
    info.textContent = lines.join('\n');
  }
  async function draw(){
    const hi = S.l * D.n_heads + S.h, v = await view(S.ck), v2 = S.mode === 'change' ? await view(S.ck2) : null;
    ckLabel.textContent = label(S.ck) + (D.checkpoints[S.ck].loss_mean !== null ? ' · loss on the text ' + fmt(D.checkpoints[S.ck].loss_mean, 3) : '');
    ck2Label.textContent = label(S.ck2); cmp.style.visibility = S.mode === 'change' ? 'visible' : 'hidden';
    root.querySelectorAll('button.cl-mode').forEach(function(b){ b.classList.toggle('cl-on', b.dataset.mode === S.mode); });
    root.querySelectorAll('button.cl-score').forEach(function(b){ b.classList.toggle('cl-on', b.dataset.score === S.score); });
    headButtons.forEach(function(b, i){ const x = headScore(S.ck, i);
      b.textContent = b.dataset.layer + '.' + b.dataset.head + (x === null ? '' : ' ' + fmt(x));
      b.style.background = x === null ? '' : 'rgba(255,127,14,' + Math.max(0, Math.min(1, x)).toFixed(3) + ')';
      b.classList.toggle('cl-on', i === hi); });
    drawPattern(v, hi); drawCurve(hi); tokenColours(v, v2, hi); describe(v, v2, hi);
    S.draws += 1;
    root.dataset.checkpoint = S.ck; root.dataset.head = S.l + '.' + S.h; root.dataset.query = S.q === null ? '' : S.q;
    root.dataset.mode = S.mode; root.dataset.draws = S.draws;
  }
  draw().catch(function(e){ root.appendChild(el('pre', {class: 'cl-error'}, 'the view could not be drawn: ' + e)); root.dataset.error = String(e); });
};
})();
"""


def element(data: dict) -> str:
    """The view as one HTML fragment: a root <div>, its data, and the script that draws it (a notebook output)."""
    uid = "cl-" + uuid.uuid4().hex[:12]
    return (f'<div class="cl-view" id="{uid}"><style>{CSS}</style>'
            f'<script class="cl-data" type="application/json">{script_json(data)}</script></div>'
            f'<script>{JS}\nwindow.circuitlabView(document.getElementById("{uid}"));</script>')


def page(data: dict, title: str) -> str:
    """The view as a whole offline page, under the report's Content-Security-Policy."""
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}"><title>{esc(title)}</title></head>'
            f'<body style="margin:0 auto;max-width:1500px;padding:0 16px">{element(data)}</body></html>')


def write_page(data: dict, path, title: str):
    atomic_write_text(path, page(data, title))
    return path
