"""Is a set of heads the circuit? Faithfulness, completeness and minimality (Wang et al. 2022, section 4).

F(X) is the mean metric of the model with every head outside X knocked out (ablated: by default replaced by its mean
over a reference distribution, per template, as the paper does with p_ABC; `ablation.replacement`), M the model
(every head), C the circuit:

- faithfulness:   |F(M) - F(C)|  (small: the circuit alone does the task as well as the model);
- completeness:   incompleteness(K) = |F(C \\ K) - F(M \\ K)| for K a subset of C (small for every K: the circuit
  misses nothing the model needs once part of the circuit is gone); K random (each head with probability 1/2), a
  whole class of the circuit, or chosen greedily to make it large;
- minimality:     |F(C \\ (K + {v})) - F(C \\ K)| for each v in C and some K (large: v matters).

`Knockout` evaluates many sets at once (one batched pass, `common.run_patches`), each set once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from torch import Tensor

from circuitlab.heads import Head
from circuitlab.patching.ablation import replacement
from circuitlab.patching.common import Metric, cache_sites, dims, hook_name, run_patches
from circuitlab.results import Result


class Knockout:
    """F(X) for sets of kept heads X, with the ablated values computed once. kind and keywords as
    `ablation.replacement` (reference prompts, groups, ...)."""

    def __init__(self, model, tokens: Tensor, metric: Metric, kind: str = "mean", **kw):
        self.model, self.tokens, self.metric, self.kind = model, tokens, metric, kind
        L, self.H = dims(model)
        self.all = frozenset(Head(layer, h) for layer in range(L) for h in range(self.H))
        names = [hook_name("z", layer) for layer in range(L)]
        z = {} if kind == "zero" else cache_sites(model, kw.get("reference", tokens), names)  # one pass, every layer
        self.sources = {n: replacement(model, tokens, layer, kind, z=z.get(n), **kw) for layer, n in enumerate(names)}
        self.calls = 0  # sets evaluated (each once: values are remembered)
        self._known: dict[frozenset, float] = {}

    def __call__(self, kept: list) -> Tensor:
        """[len(kept)]: the mean metric with every head outside each set knocked out."""
        kept = [frozenset(Head(*h) for h in x) for x in kept]
        new = list(dict.fromkeys(x for x in kept if x not in self._known))
        if new:
            self._known.update(zip(new, self._evaluate(new).tolist()))
        return torch.tensor([self._known[x] for x in kept])

    def _evaluate(self, kept: list[frozenset]) -> Tensor:
        patches = {}
        for name, src in self.sources.items():
            layer = int(name.split(".")[1])
            masks = torch.ones(len(kept), *src.shape[1:], dtype=torch.bool)
            for i, x in enumerate(kept):
                for h in x:
                    if h.layer == layer:
                        masks[i, :, h.head] = False
            if masks.any():
                patches[name] = (src, masks)
        self.calls += len(kept)
        if not patches:
            with torch.no_grad():
                return self.metric(self.model(self.tokens)).mean().float().expand(len(kept)).clone()
        return run_patches(self.model, self.tokens, self.metric, patches)


@dataclass
class Incompleteness(Result):
    """|F(C \\ K) - F(M \\ K)| for one K (its heads, and how it was chosen)."""

    K: list[Head]
    how: str
    F_C_without_K: float
    F_M_without_K: float

    @property
    def score(self) -> float:
        return abs(self.F_C_without_K - self.F_M_without_K)


@dataclass
class CircuitEvaluation(Result):
    """F(M), F(C) under each ablation kind; the same for a control circuit (random heads, as many as C); the
    incompleteness for each K tried; each head's minimality score (the largest over the K tried) and its K."""

    kinds: list[str]
    F_M: float
    F_C: dict[str, float]
    F_random: dict[str, float]
    random_heads: list[Head]
    incompleteness: list[Incompleteness] = field(default_factory=list)
    minimality: dict[str, float] = field(default_factory=dict)
    minimality_K: dict[str, list[Head]] = field(default_factory=dict)

    def faithfulness(self, kind: str = "mean") -> float:
        return abs(self.F_M - self.F_C[kind])

    def greedy(self) -> Incompleteness | None:
        found = [x for x in self.incompleteness if x.how.startswith("greedy")]
        return max(found, key=lambda x: x.score) if found else None


def evaluate_circuit(knockouts: dict[str, Knockout], circuit: list[Head], classes: dict[str, list[Head]],
                     n_random: int = 4, greedy_steps: int = 3, greedy_candidates: int = 8,
                     seed: int = 0) -> CircuitEvaluation:
    """Faithfulness under every ablation kind in `knockouts` (the first is the main one: completeness and
    minimality use it); completeness for `n_random` random K, each class, and a greedy K (up to `greedy_steps`
    heads, each step trying the `greedy_candidates` heads whose single removal moved incompleteness most);
    minimality of each head of the circuit over K = nothing, the rest of its class, and the greedy K."""
    C = frozenset(Head(*h) for h in circuit)
    main = next(iter(knockouts.values()))
    M = main.all
    rng = random.Random(seed)
    others = sorted(M - C)
    control = rng.sample(others, min(len(C), len(others)))
    F = {kind: k([M, C, control]).tolist() for kind, k in knockouts.items()}
    result = CircuitEvaluation(list(knockouts), F[next(iter(F))][0], {k: v[1] for k, v in F.items()},
                               {k: v[2] for k, v in F.items()}, sorted(control))
    if not C:
        return result

    def incompleteness(Ks: list[frozenset], how: list[str]) -> list[Incompleteness]:
        vals = main([x for K in Ks for x in (C - K, M - K)]).tolist()
        return [Incompleteness(sorted(K), h, vals[2 * i], vals[2 * i + 1]) for i, (K, h) in enumerate(zip(Ks, how))]

    tried = []
    randoms = [frozenset(h for h in sorted(C) if rng.random() < 0.5) for _ in range(n_random)]
    names = [c for c, heads in classes.items() if heads]
    tried += incompleteness(randoms + [frozenset(classes[c]) for c in names],
                            [f"random {i + 1}" for i in range(n_random)] + [f"class: {c}" for c in names])
    # greedy: grow K one head at a time, keeping the head that makes incompleteness largest
    K: frozenset = frozenset()
    singles = incompleteness([frozenset([v]) for v in sorted(C)], ["single"] * len(C))
    order = [Head(*x.K[0]) for x in sorted(singles, key=lambda x: -x.score)][:greedy_candidates]
    best = None
    for step in range(min(greedy_steps, len(C))):
        options = [K | {v} for v in order if v not in K]
        if not options:
            break
        got = incompleteness(options, [f"greedy, {step + 1} head{'s' * bool(step)}"] * len(options))
        best = max(got, key=lambda x: x.score)
        K = frozenset(Head(*h) for h in best.K)
        tried.append(best)
    result.incompleteness = tried
    # minimality: for each v, K in {nothing, the rest of v's class, the greedy K without v}
    class_of = {h: c for c, heads in classes.items() for h in heads}
    sets, meta = [], []
    for v in sorted(C):
        for Kv in (frozenset(), frozenset(classes.get(class_of.get(v, ""), [])) - {v}, K - {v}):
            sets += [C - Kv - {v}, C - Kv]
            meta.append((v, Kv))
    vals = main(sets).tolist()
    for i, (v, Kv) in enumerate(meta):
        score = abs(vals[2 * i] - vals[2 * i + 1])
        if score >= result.minimality.get(str(v), -1.0):
            result.minimality[str(v)] = score
            result.minimality_K[str(v)] = sorted(Kv)
    return result
