"""Console tables of one model's Framework analysis (`circuitlab analyze`)."""

from __future__ import annotations

from circuitlab.experiments.framework.results import ModelAnalysis
from rich.markup import escape

from circuitlab.report.terminal import console, fmt, new_table


def print_analysis(r: ModelAnalysis) -> None:
    b = r.bigram_agreement
    console.print(f"[bold]Direct path W_E W_U vs corpus bigrams[/] ({b.n_prev_tokens} previous tokens seen >= 100 times): "
                  f"r = {b.correlation:.3f} over {b.n_bigrams_compared:,} bigrams, mean KL {b.mean_kl:.3f} nats, "
                  f"top-1 {b.top1:.1%}, top-5 {b.top5:.1%}", highlight=False)
    t = new_table("Strongest bigrams in the weights", ["prev", "next", "model P", "corpus P", "corpus count"])
    for s in b.strongest[:10]:
        t.add_row(escape(repr(s.prev)), escape(repr(s.next)), f"{s.model_prob:.3f}", f"{s.corpus_prob:.3f}", f"{s.corpus_count:,}")
    console.print(t)
    if not r.heads:
        return
    t = new_table("Heads", ["head", "OV copy", "QK copy", "copying", "prev", "induct", "prefix", "dup", "pos", "by",
                            "OV top1", "roles"])
    for h in r.heads:
        t.add_row(str(h.head), f"{h.ov_copying:+.2f}", f"{h.qk_copying:+.2f}", f"{h.copying_score:+.2f}",
                  *(fmt(x, ".2f") for x in (h.previous_token, h.induction, h.prefix_matching, h.duplicate_token,
                                            h.positional_share)),
                  h.attention_driver or "-", f"{h.ov_top1_diagonal:.0%}", ", ".join(h.roles))
    console.print(t)
    c = r.copying_heads
    console.print(f"copying heads (OV copying statistic > {c.threshold}): {c.count} of {c.of}")
    hist = c.ov_histogram
    console.print("OV copying statistic histogram: " + "  ".join(
        f"[{lo:+.1f},{hi:+.1f}) {n}" for lo, hi, n in zip(hist.edges, hist.edges[1:], hist.counts) if n))
    print_skip_trigrams(r)
    if r.composition is not None:
        comp = r.composition
        for mode in ("k", "q", "v"):
            top = ", ".join(f"{e.sender}->{e.receiver} {e.score:.3f}" for e in getattr(comp, mode)[:5])
            console.print(f"{mode.upper()}-composition, top raw scores (random baseline {comp.random_baseline:.3f}): {top}")
        for m in r.induction_mechanism:
            console.print(
                ("" if m.above_threshold else f"no head above the induction threshold; best candidate (score "
                 f"{m.induction_score:.2f}) ") +
                f"induction head {m.head}: {m.k_composition_share:.0%} of its score margin on the target "
                f"token comes from {m.k_composes_with}'s output (K-composition score {m.k_composition_with_share_head:.3f}); "
                f"embedding {m.shares['embedding']:.0%}, position {m.shares['position']:.0%}", highlight=False)
        if r.induction_heads_ov_top1_diagonal is not None:
            console.print(f"induction heads combined: OV top-1 diagonal {r.induction_heads_ov_top1_diagonal:.1%}")
    if r.term_importance is not None:
        ti = r.term_importance
        names = ["direct path (vs uniform)", "individual heads", "virtual heads"]
        console.print("term importance (frozen patterns, held-out text): " + ", ".join(
            f"{names[k] if k < 3 else f'order {k}'} {v:+.2f}" for k, v in enumerate(ti.improvement))
            + f" nats; order 1 by layer: {', '.join(f'{v:+.2f}' for v in ti.order_1_by_layer)}", highlight=False)
    console.print("analysis took " + ", ".join(f"{k} {v:.1f}s" for k, v in r.seconds.items()), highlight=False)


def print_skip_trigrams(r: ModelAnalysis, heads: int = 4, rows: int = 4) -> None:
    copying = {h.head: h.ov_copying for h in r.heads}
    tables = sorted(r.skip_trigrams, key=lambda t: -copying[t.head])[:heads]
    t = new_table("Skip-trigrams of layer-0 heads: \\[source] ... \\[destination] -> \\[out]",
                  ["head", "source", "destinations (QK)", "outs (OV)"])
    for table in tables:
        for row in table.rows[:rows]:
            t.add_row(str(table.head), escape(repr(row.source)), escape(" ".join(map(repr, row.destinations[:4]))),
                      escape(" ".join(map(repr, row.outs[:4]))))
    console.print(t)
    if r.skip_trigram_bugs:
        t = new_table("Skip-trigram bugs (two trigrams in the corpus imply a third it never has)",
                      ["head", "trigram 1 (count)", "trigram 2 (count)", "bug: also raised (count)"])
        for b in r.skip_trigram_bugs[:6]:
            tri = lambda x: escape(f"{b.source!r} ... {x.dest!r} -> {x.out!r} ({x.count})")  # noqa: E731
            t.add_row(str(b.head), tri(b.intended[0]), tri(b.intended[1]), tri(b.bug))
        console.print(t)
    sc = r.softmax_competition
    for kind, c in (("hand_built", sc.hand_built), ("trained", sc.trained)) if sc else ():
        if c:
            console.print(
                f"softmax competition ({kind.replace('_', '-')}, head {c.head}): {c.source!r} ... {c.destination!r} "
                f"-> {c.out!r} raises it by {c.effect_source_alone:.2f}; adding {c.thief!r} (own effect "
                f"{c.effect_thief_alone:+.2f}) takes attention {c.attention_to_source_alone:.2f} -> "
                f"{c.attention_to_source_with_thief:.2f}: skip-trigram table predicts {c.skip_trigram_prediction:.2f}, "
                f"actual {c.actual_effect_with_both:.2f} (gap {c.gap:.2f} logits)", highlight=False)


def print_pretrained(r) -> None:
    """`circuitlab analyze --model`: a pretrained model's heads, composition, logit attribution and logit lens."""
    c = r.config
    console.print(f"[bold]{escape(r.model)}[/]: {c['n_layers']} layers x {c['n_heads']} heads, d_model {c['d_model']}, "
                  f"vocabulary {c['d_vocab']:,}, context {c['n_ctx']:,}, normalization {c['normalization']}",
                  highlight=False)
    scores = r.head_scores
    keys = [k for k in ("previous_token", "duplicate_token", "induction", "prefix_matching", "copying") if k in scores]
    flat = [(layer, h) for layer in range(c["n_layers"]) for h in range(c["n_heads"])]
    top = sorted(flat, key=lambda lh: -max(scores[k][lh[0]][lh[1]] for k in ("previous_token", "induction")))[:12]
    t = new_table("Heads with the highest previous-token or induction score", ["head", *keys])
    for layer, h in top:
        t.add_row(f"{layer}.{h}", *(f"{scores[k][layer][h]:.2f}" for k in keys))
    console.print(t)
    console.print(f"induction heads: {', '.join(map(str, r.induction_heads)) or 'none'}; previous-token heads: "
                  f"{', '.join(map(str, r.previous_token_heads)) or 'none'}", highlight=False)
    for mode in ("k", "q", "v"):
        top_edges = ", ".join(f"{e.sender}->{e.receiver} {e.score:.3f}" for e in r.composition[mode][:5])
        console.print(f"{mode.upper()}-composition, top raw scores (random baseline {r.composition_baseline:.3f}): "
                      f"{top_edges}", highlight=False)
    d = r.logit_attribution
    if d is not None:
        console.print(f"[bold]Direct logit attribution[/] of logit({escape(repr(r.answer))}) - logit({escape(repr(r.wrong))})"
                      f" on {escape(repr(r.prompt))}: total {d.total:+.3f} (components sum to {d.explained:+.3f})",
                      highlight=False)
        heads = sorted(((d.heads[layer][h], f"{layer}.{h}") for layer, h in flat), key=lambda x: -abs(x[0]))[:8]
        console.print("largest heads: " + ", ".join(f"{name} {v:+.3f}" for v, name in heads)
                      + ("; MLPs: " + ", ".join(f"{i} {v:+.3f}" for i, v in enumerate(d.mlps)) if d.mlps else ""),
                      highlight=False)
        lens = r.logit_lens
        console.print("logit lens (logit difference read before each layer, then after the last): "
                      + " ".join(f"{v:+.2f}" for v in lens.logit_diff), highlight=False)
    for what, why in r.skipped.items():
        console.print(f"skipped {what}: {why}", highlight=False)
