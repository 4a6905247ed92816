"""Every weight-and-pattern analysis of one model (Elhage et al. 2021, with Olsson et al. 2022's head scores), as
`circuitlab analyze` shows it: `analyze_model` returns a typed `ModelAnalysis`; `analyze_run` writes it to
RUN/analysis.json."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from transformer_lens import FactoredMatrix

from circuitlab.circuits.attribution import induction_mechanism, positional_content_split
from circuitlab.circuits.bigram import bigram_agreement
from circuitlab.circuits.circuits import copying_statistic, ov_circuit, qk_circuit, top1_diagonal_accuracy
from circuitlab.circuits.competition import competition_from_table, competition_model, softmax_competition
from circuitlab.circuits.composition import composition_scores
from circuitlab.circuits.heads import head_scores
from circuitlab.circuits.paths import is_linear_attention_only
from circuitlab.circuits.skip_trigrams import skip_trigram_bugs, skip_trigram_table
from circuitlab.circuits.term_importance import term_importance
from circuitlab.data.windows import common_token_pool, text_windows, token_pool
from circuitlab.errors import CircuitlabError
from circuitlab.experiments.framework.results import (
    CompositionSummary, CopyingHeads, HeadRow, Histogram, MechanismReport, ModelAnalysis, SoftmaxCompetitions,
)
from circuitlab.heads import (
    COPYING, INDUCTION, PREVIOUS_TOKEN, Head, all_heads, best_head, head_roles, induction_heads,
)


def _combined(fm: FactoredMatrix, heads: list[Head]) -> FactoredMatrix:
    """The sum of several heads' circuits, still factored: sum_h A_h B_h = [A_1 .. A_n] [B_1; ..; B_n]."""
    return FactoredMatrix(torch.cat([fm.A[l, h] for l, h in heads], -1), torch.cat([fm.B[l, h] for l, h in heads], -2))


def analyze_model(model, train_tokens: np.ndarray, heldout_tokens: np.ndarray, decode=None, n_text: int = 32,
                  trigram_corpus_tokens: int = 2_000_000, run: str = "", step: int = 0, tokens: int = 0) -> ModelAnalysis:
    """Every analysis of the Framework paper that applies to this model (see `circuitlab analyze`)."""
    cfg = model.cfg
    timings: dict[str, float] = {}

    def timed(name, fn, *a, **k):
        t0 = time.perf_counter()
        r = fn(*a, **k)
        timings[name] = round(time.perf_counter() - t0, 3)
        return r

    summary = {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_vocab": cfg.d_vocab, "d_model": cfg.d_model,
               "positional_embedding_type": cfg.positional_embedding_type,
               "smeared_keys": getattr(cfg, "smeared_keys", False)}
    out = ModelAnalysis(run=run, step=step, tokens=tokens, model=summary, seconds=timings,
                        bigram_agreement=timed("bigram_agreement", bigram_agreement, model, train_tokens, decode=decode))
    if cfg.n_layers == 0:
        return out
    ovc, qkc = ov_circuit(model), qk_circuit(model)
    ov = timed("copying_statistic", copying_statistic, ovc)
    qk = copying_statistic(qkc)
    pool = token_pool(train_tokens, cfg.d_vocab)
    if len(pool) < 10:  # a tiny corpus: every token it has
        pool = token_pool(train_tokens, cfg.d_vocab, min_count=1)
    text = text_windows(heldout_tokens, cfg.n_ctx, n=n_text)
    common = common_token_pool(train_tokens, cfg.d_vocab)
    scores = timed("head_scores", head_scores, model, text[:10], bos=0, allowed=common)
    # The score split, term importance and the induction mechanism are exact path expansions: they need the
    # paper's setting.
    linear = is_linear_attention_only(cfg)
    split = timed("positional_content_split", positional_content_split, model, text[:10], scores.previous_token,
                  PREVIOUS_TOKEN) if linear else None
    diag = timed("ov_top1_diagonal", top1_diagonal_accuracy, ovc, pool)
    group = induction_heads(scores.induction)
    for hd in all_heads(cfg.n_layers, cfg.n_heads):
        out.heads.append(HeadRow(
            head=hd, ov_copying=float(ov[hd]), qk_copying=float(qk[hd]),
            previous_token=float(scores.previous_token[hd]), induction=float(scores.induction[hd]),
            prefix_matching=float(scores.prefix_matching[hd]), copying_score=float(scores.copying[hd]),
            duplicate_token=float(scores.duplicate_token[hd]),
            positional_share=float(split.positional[hd]) if split else None,
            content_share=float(split.content[hd]) if split else None,
            attention_driver=split.roles[hd.layer][hd.head] if split else None,
            ov_top1_diagonal=float(diag[hd]),
            roles=head_roles(hd, float(scores.previous_token[hd]), float(ov[hd]), group)))
    out.head_score_settings = {**scores.settings, "ov_top1_diagonal_tokens": int(len(pool))}
    out.copying_heads = CopyingHeads(count=sum("copying" in h.roles for h in out.heads), of=len(out.heads),
                                     threshold=COPYING, ov_histogram=Histogram.of(ov.flatten().tolist()),
                                     qk_histogram=Histogram.of(qk.flatten().tolist()))

    # Skip-trigrams of layer-0 heads (exact token circuits in a one-layer model), their bugs, and the softmax caveat.
    t0 = time.perf_counter()
    # Tables read better without tokens that decode to partial UTF-8 sequences ('\ufffd'), rare byte pieces whose
    # large embedding norms would otherwise top every table.
    text_pool = torch.as_tensor([int(t) for t in pool if "\ufffd" not in decode(int(t))]) if decode else pool
    out.skip_trigrams = [skip_trigram_table(model, 0, h, text_pool if len(text_pool) >= 10 else pool, decode)
                         for h in range(cfg.n_heads)]
    corpus = np.asarray(train_tokens[:trigram_corpus_tokens])
    out.skip_trigram_bugs = [b for t in out.skip_trigrams for b in skip_trigram_bugs(t, corpus, cfg.n_ctx, decode, n=2)]
    timings["skip_trigrams"] = round(time.perf_counter() - t0, 3)
    out.softmax_competition = SoftmaxCompetitions(
        hand_built=softmax_competition(competition_model(), 0, 0, source=1, dest=3, thief=2, out=4,
                                       decode=lambda t: "BOS A B D X Y".split()[t]),
        trained=competition_from_table(model, out.skip_trigrams, pool, decode=decode)
        if cfg.n_layers == 1 and linear else None)

    if cfg.n_layers >= 2:
        comp = timed("composition_scores", composition_scores, model)
        out.composition = CompositionSummary(random_baseline=comp.random_baseline, k_matrix=comp.k, q_matrix=comp.q,
                                             v_matrix=comp.v, q=comp.top("q", 8), k=comp.top("k", 8),
                                             v=comp.top("v", 8))
        # The key decomposition is of heads after layer 0 (their keys can read earlier heads). With none of them in
        # the induction group, still decompose the best candidate (flagged) when it passes the absolute threshold.
        best = best_head(scores.induction, min_layer=1)
        examined = [h for h in group if h.layer >= 1] or ([best] if scores.induction[best] >= INDUCTION else [])
        t0 = time.perf_counter()
        for hd in examined if linear else []:
            mech = induction_mechanism(model, hd.layer, hd.head, allowed=common)
            k = torch.nan_to_num(comp.k[:, :, hd.layer, hd.head], nan=-float("inf"))
            src = Head.of_index(int(k.argmax()), cfg.n_heads)
            out.induction_mechanism.append(MechanismReport(
                **{f: getattr(mech, f) for f in mech.__dataclass_fields__}, above_threshold=hd in group,
                induction_score=float(scores.induction[hd]), top_k_composition_head=src,
                k_composition=float(k[src]), k_composition_with_share_head=float(k[mech.k_composes_with])))
        timings["induction_mechanism"] = round(time.perf_counter() - t0, 3)
        if group:
            out.induction_heads_ov_top1_diagonal = float(top1_diagonal_accuracy(_combined(ovc, group), pool))
    if linear:
        out.term_importance = timed("term_importance", term_importance, model, text)
    return out


def analysis_path(run_dir: Path | str, step: int | None, last: int | None) -> Path:
    """RUN/analysis.json for the last checkpoint, RUN/analysis-stepN.json for another."""
    return Path(run_dir) / ("analysis.json" if step is None or step == last else f"analysis-step{step}.json")


def analyze_run(run_dir: Path | str, out: Path | str | None = None, step: int | None = None,
                reuse: bool = True) -> ModelAnalysis:
    """Analyse a run's checkpoint at `step` (default: the last) and write the result to `out` (default
    RUN/analysis.json); with `reuse`, an analysis already there for that run and checkpoint is returned as it is."""
    from circuitlab.training import Run

    run = Run.open(run_dir)
    model = run.model(step)  # checks that the step exists
    step = step if step is not None else run.checkpoints[-1]
    out = Path(out) if out else analysis_path(run_dir, step, run.checkpoints[-1])
    if reuse and out.exists():
        try:
            old = ModelAnalysis.load(out)
            if old.step == step and old.run == str(run_dir):
                return old
        except CircuitlabError:
            pass  # an analysis from an older version: analyse again
    data = run.tokens()
    decode = lambda t: data.tokenizer.decode([t])  # noqa: E731
    result = analyze_model(model, data.train, data.val, decode=decode, run=str(run_dir), step=step,
                           tokens=step * run.train_config.batch_size * run.config.n_ctx)
    result.save(out)
    return result
