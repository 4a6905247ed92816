"""The IOI circuit of a model (Wang et al. 2022), found by path patching backwards from the logits (appendix B),
classified by attention and copy scores, and evaluated for faithfulness, completeness and minimality (section 4).

The steps (x_orig = p_IOI, x_new = p_ABC; each screens every head with `path_attribution`, then confirms the
`top` heads with exact `path_patch` on `n_exact` prompts):
1. senders -> logits: heads with |effect| >= SELECT. Name movers lower the logit difference when patched and
   attend END -> IO more than END -> S1 + S2; negative name movers raise it with the same attention.
2. senders -> the name movers' queries at END: S-inhibition heads (attend END -> S2 more than END -> IO).
3. senders -> the S-inhibition heads' values at S2: induction heads (attend S2 -> S1+1 more than S2 -> S1) and
   duplicate-token heads (S2 -> S1).
4. senders -> the induction heads' keys at S1+1: previous-token heads (S1+1 -> S1).
Backup name movers (section 3.4): with the name movers knocked out (mean over p_ABC per template), the heads whose
direct logit attribution at END rises by at least SELECT of the clean logit difference and that then attend END -> IO
more than END -> S1 + S2.
Heads a step selects that fit none of these classes are kept as "other": they are part of the circuit the steps
found (its faithfulness counts them) without a name from the paper (e.g. a head that attends END -> S2 and writes
against S straight into the logits). A class's attention target must also get ATTENDS times the attention a uniform head would give it. Heads are
classified by these steps and scores, never by a list of head numbers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from circuitlab.data.ioi import IOIDataset, ioi_dataset, vocabulary
from circuitlab.errors import CircuitlabError
from circuitlab.experiments.ioi.results import Behaviour, IOIResults, PathStep
from circuitlab.heads import Head
from circuitlab.patching.ablation import replacement
from circuitlab.patching.circuit import Knockout, evaluate_circuit
from circuitlab.patching.common import LogitDiff, PatchingResult, dims, final_ln, hook_name, reusing_clean_runs
from circuitlab.patching.path import path_attribution, path_patch

# A head joins a step's set when patching its path moves the logit difference by at least 5% of the clean value
# (the paper's heat maps: name movers -20..-60%, S-inhibition heads -10..-30%, the rest within a few percent).
SELECT = 0.05
# ... and its class's attention target gets at least 3x what uniform attention over the earlier tokens gives it.
ATTENDS = 3.0
# Copy score: the fraction of prompts on which the head's OV output at IO, unembedded, ranks IO in the top 5
# (the paper: > 95% for name movers; negative name movers: the same for -OV).
COPY_TOP = 5
CLASSES = ("name mover", "negative name mover", "backup name mover", "S-inhibition", "induction", "duplicate-token",
           "previous-token", "other")
ATTENTION = ("END->IO", "END->S1", "END->S2", "S2->S1", "S2->S1+1", "S1+1->S1")
KINDS = ("mean", "resample", "zero")


def encoder(tokenizer) -> Callable[[str], list[int]]:
    """text -> token ids without special tokens, for a Hugging Face tokenizer or a `tokenizers.Tokenizer`."""
    def encode(text: str) -> list[int]:
        out = tokenizer.encode(text, add_special_tokens=False)
        return list(out.ids) if hasattr(out, "ids") else list(out)
    return encode


def n_tokens(tokenizer) -> Callable[[str], int]:
    """How many tokens a text takes; an unknown-token id counts as not one token."""
    encode, unk = encoder(tokenizer), getattr(tokenizer, "unk_token_id", None)

    def count(text: str) -> int:
        ids = encode(text)
        return len(ids) + (unk is not None and unk in ids)
    return count


def _positions(data: IOIDataset) -> dict[str, tuple]:
    return {"END->IO": (data.end_pos, data.io_pos), "END->S1": (data.end_pos, data.s1_pos),
            "END->S2": (data.end_pos, data.s2_pos), "S2->S1": (data.s2_pos, data.s1_pos),
            "S2->S1+1": (data.s2_pos, data.s1_pos + 1), "S1+1->S1": (data.s1_pos + 1, data.s1_pos)}


@torch.no_grad()
def attention_scores(model, data: IOIDataset) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Mean attention of every head [L, H] for each query -> key pair of ATTENTION; and what uniform attention over
    the query's earlier tokens gives (1 / (query position + 1), averaged)."""
    L, H = dims(model)
    _, cache = model.run_with_cache(data.tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    i = torch.arange(len(data))
    out = {k: torch.zeros(L, H) for k in ATTENTION}
    for layer in range(L):
        pat = cache[f"blocks.{layer}.attn.hook_pattern"].float()  # [batch, head, query, key]
        for k, (q, key) in _positions(data).items():
            out[k][layer] = pat[i, :, q, key].mean(0)
    uniform = {k: float((1.0 / (q + 1).float()).mean()) for k, (q, _) in _positions(data).items()}
    return out, uniform


@torch.no_grad()
def copy_scores(model, data: IOIDataset, signs: dict[Head, float], top: int = COPY_TOP) -> dict[str, float]:
    """Each head's share of prompts where sign * (its value at IO @ W_O) @ W_U ranks IO in the top `top` (the
    paper's copy score, on the residual stream the head reads at IO in context; the final LayerNorm's positive
    scale does not change the ranking). One pass caches the values of every layer asked for."""
    names = {f"blocks.{h.layer}.attn.hook_v" for h in signs}
    if not names:
        return {}
    _, cache = model.run_with_cache(data.tokens, names_filter=lambda n: n in names)
    out = {}
    for head, sign in signs.items():
        v = cache[f"blocks.{head.layer}.attn.hook_v"]  # [batch, pos, kv heads, d_head]
        groups = int(model.cfg.n_heads) // v.shape[2]
        x = v[torch.arange(len(data)), data.io_pos, head.head // groups]
        logits = sign * (x @ model.W_O[head.layer, head.head].to(x.dtype)) @ model.W_U.to(x.dtype)
        out[str(head)] = float((logits.topk(top, dim=-1).indices == data.io[:, None]).any(1).float().mean())
    return out


@torch.no_grad()
def behaviour(model, data: IOIDataset) -> Behaviour:
    ld = LogitDiff(data.io, data.s, data.end_pos)
    per, probs = [], []
    for i in range(0, len(data), 32):  # in chunks: the logits at every position are [chunk, pos, vocabulary]
        rows = slice(i, i + 32)
        logits = model(data.tokens[rows])
        last = logits[torch.arange(logits.shape[0]), data.end_pos[rows]].float()
        per.append(last.gather(1, data.io[rows, None])[:, 0] - last.gather(1, data.s[rows, None])[:, 0])
        probs.append(last.softmax(-1).gather(1, data.io[rows, None])[:, 0])
    per_t, prob = torch.cat(per), torch.cat(probs)
    corrupted = float(ld(model(data.abc_tokens)).mean())
    return Behaviour(len(data), float(per_t.mean()), float(per_t.std()) if len(per_t) > 1 else 0.0,
                     float((per_t > 0).float().mean()), float(prob.mean()), corrupted, per_t.tolist())


@torch.no_grad()
def direct_effects(model, data: IOIDataset, knocked: list[Head] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's direct logit attribution to logit(IO) - logit(S) at END ([L, H], mean over prompts: its output
    z W_O along W_U[:, IO] - W_U[:, S] through the final LayerNorm's scale), and its attention END -> IO minus END ->
    (S1 + S2) ([L, H]), with the `knocked` heads' outputs replaced by their mean over p_ABC per template."""
    L, H = dims(model)
    i = torch.arange(len(data))
    hooks, zs, pats, scale = [], {}, {}, {}
    for layer in sorted({h.layer for h in knocked}):
        rep = replacement(model, data.tokens, layer, "mean", reference=data.abc_tokens, groups=data.groups)
        heads = [h.head for h in knocked if h.layer == layer]

        def knock(z, hook, rep=rep, heads=heads):
            z = z.clone()
            z[:, :, heads] = rep[:, :, heads].to(z.dtype)
            return z
        hooks.append((hook_name("z", layer), knock))
    keep = lambda store: lambda x, hook: store.__setitem__(hook.name, x.detach()) or x  # noqa: E731
    hooks += [(hook_name("z", layer), keep(zs)) for layer in range(L)]
    hooks += [(hook_name("pattern", layer), keep(pats)) for layer in range(L)]
    w, _, centre = final_ln(model)
    if model.cfg.normalization_type is not None and "ln_final.hook_scale" in model.hook_dict:
        hooks.append(("ln_final.hook_scale", keep(scale)))
    model.run_with_hooks(data.tokens, fwd_hooks=hooks)
    s = scale["ln_final.hook_scale"][i, data.end_pos] if scale else torch.ones(len(data), 1)
    W_U = model.W_U.detach()
    d = (W_U[:, data.io] - W_U[:, data.s]).T  # [batch, d_model]
    d = d * w.detach() if w is not None else d
    W_O = model.W_O.detach()
    effect, attention = torch.zeros(L, H), torch.zeros(L, H)
    for layer in range(L):
        out = torch.einsum("bhe,hed->bhd", zs[hook_name("z", layer)][i, data.end_pos], W_O[layer])
        if centre:
            out = out - out.mean(-1, keepdim=True)
        effect[layer] = (out / s.reshape(-1, 1, 1) * d[:, None]).sum(-1).mean(0)
        pat = pats[hook_name("pattern", layer)].float()
        attention[layer] = (pat[i, :, data.end_pos, data.io_pos] - pat[i, :, data.end_pos, data.s1_pos]
                            - pat[i, :, data.end_pos, data.s2_pos]).mean(0)
    return effect, attention


def backup_name_movers(model, data: IOIDataset, movers: list[Head], clean: float) -> tuple[list[Head], dict]:
    """Heads that take over when the name movers are knocked out (module docstring), and each head's rise in direct
    effect {head: rise / clean logit difference} for the report."""
    if not movers:
        return [], {}
    before, _ = direct_effects(model, data)
    after, attends = direct_effects(model, data, movers)
    rise = (after - before) / (abs(clean) or 1.0)
    L, H = dims(model)
    found = [Head(layer, h) for layer in range(L) for h in range(H)
             if Head(layer, h) not in movers and rise[layer, h] >= SELECT and attends[layer, h] > 0]
    return sorted(found), {str(Head(layer, h)): float(rise[layer, h]) for layer in range(L) for h in range(H)
                           if abs(rise[layer, h]) >= SELECT / 2}


def _step(model, data: IOIDataset, exact_data: IOIDataset, name: str, receivers, site: str, position: str,
          top: int) -> PathStep:
    """One path-patching step: screen every head, confirm the `top` candidates exactly, select by SELECT."""
    pos_of = {"END": "end_pos", "S2": "s2_pos", "S1+1": "s1_pos"}
    shift = 1 if position == "S1+1" else 0
    positions = None if receivers == "logits" else getattr(data, pos_of[position]) + shift
    exact_pos = None if receivers == "logits" else getattr(exact_data, pos_of[position]) + shift
    metric = LogitDiff(data.io, data.s, data.end_pos)
    screen = path_attribution(model, data.tokens, data.abc_tokens, metric, receivers, (site,), positions)
    L, H = dims(model)
    last = L if receivers == "logits" else max(r.layer for r in receivers)
    est = screen.tensor() - screen.clean
    candidates = [Head(layer, h) for layer in range(last) for h in range(H)
                  if receivers == "logits" or Head(layer, h) not in receivers]
    candidates = sorted(candidates, key=lambda x: -abs(float(est[x])))[:top]
    exact_metric = LogitDiff(exact_data.io, exact_data.s, exact_data.end_pos)
    exact = path_patch(model, exact_data.tokens, exact_data.abc_tokens, exact_metric, receivers, (site,),
                       senders=candidates, receiver_positions=exact_pos)
    t = exact.tensor()
    scale = abs(exact.clean) if abs(exact.clean) > 1e-9 else 1.0
    effect = {str(h): float((t[h] - exact.clean) / scale) for h in candidates}
    selected = [h for h in candidates if abs(effect[str(h)]) >= SELECT]
    agreement = None
    if len(candidates) >= 3:
        a = torch.tensor([float(est[h]) / (abs(screen.clean) or 1.0) for h in candidates], dtype=torch.float64)
        b = torch.tensor([effect[str(h)] for h in candidates], dtype=torch.float64)
        if a.std() > 0 and b.std() > 0:
            agreement = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    return PathStep(name, [] if receivers == "logits" else list(receivers), site, position, screen, exact, effect,
                    selected, agreement)


def path_steps(model, data: IOIDataset, exact: IOIDataset, attention: dict, uniform: dict, top: int,
               lap: Callable[[str], None] = lambda part: None, reuse: bool = True) -> tuple[list[PathStep], dict]:
    """The four path-patching steps backwards from the logits (module docstring), each classifying the heads found
    so far to pick the next step's receivers; (steps, classes). reuse: the steps share their clean and corrupted
    runs (`patching.reusing_clean_runs`: each runs once, the same numbers; `benchmarks/ioi_reuse.py` times both)."""
    L, H = dims(model)
    with reusing_clean_runs() if reuse else contextlib.nullcontext():
        steps = [_step(model, data, exact, "logits", "logits", "z", "END", top)]
        lap("path patching: logits")
        found = classify(steps, attention, uniform)
        chain = [("name mover queries", "name mover", "q", "END"), ("S-inhibition values", "S-inhibition", "v", "S2"),
                 ("induction keys", "induction", "k", "S1+1")]
        for name, receivers_class, site, position in chain:
            receivers = found[receivers_class]
            if receivers and min(r.layer for r in receivers) > 0:
                steps.append(_step(model, data, exact, name, receivers, site, position, top))
            else:
                steps.append(_empty_step(name, site, position, L, H, f"no {receivers_class} heads to receive"
                                         if not receivers else f"the {receivers_class} heads are in layer 0"))
            found = classify(steps, attention, uniform)
            lap(f"path patching: {name}")
    return steps, found


def _empty_step(name: str, site: str, position: str, L: int, H: int, why: str) -> PathStep:
    blank = PatchingResult("z", f"not run: {why}", ["layer", "head"], [L, H], [0.0] * (L * H), 0.0, 0.0)
    return PathStep(name, [], site, position, blank, blank, {}, [])


def classify(steps: list[PathStep], attention: dict[str, torch.Tensor], uniform: dict[str, float]) -> dict:
    """Head classes from the steps' selected heads, their sign and the attention scores (module docstring)."""
    at = lambda k, h: float(attention[k][h])  # noqa: E731
    strong = lambda k, h: at(k, h) >= ATTENDS * uniform[k]  # noqa: E731
    classes: dict[str, list[Head]] = {c: [] for c in CLASSES}
    by = {s.name: s for s in steps}
    for h in by["logits"].selected:
        if at("END->IO", h) > at("END->S1", h) + at("END->S2", h) and strong("END->IO", h):
            classes["name mover" if by["logits"].effect[str(h)] < 0 else "negative name mover"].append(h)
    for h in by.get("name mover queries", _none).selected:
        if by["name mover queries"].effect[str(h)] < 0 and at("END->S2", h) > at("END->IO", h) and \
                strong("END->S2", h):
            classes["S-inhibition"].append(h)
    for h in by.get("S-inhibition values", _none).selected:
        if by["S-inhibition values"].effect[str(h)] >= 0:
            continue
        if at("S2->S1+1", h) > at("S2->S1", h) and strong("S2->S1+1", h):
            classes["induction"].append(h)
        elif at("S2->S1", h) >= at("S2->S1+1", h) and strong("S2->S1", h):
            classes["duplicate-token"].append(h)
    for h in by.get("induction keys", _none).selected:
        if by["induction keys"].effect[str(h)] < 0 and strong("S1+1->S1", h):
            classes["previous-token"].append(h)
    named = {h for v in classes.values() for h in v}
    classes["other"] = sorted({h for s in steps for h in s.selected} - named)
    return {c: sorted(v) for c, v in classes.items()}


class _NoStep:
    selected: list = []
    effect: dict = {}


_none = _NoStep()


def analyze_ioi(model, tokenizer, label: str, about: list[str], settings: dict, preset: str = "quick",
                gpt2_small: bool = False, bos: int | None = None, pad: int | None = None,
                log: Callable[[str], None] = lambda s: None) -> IOIResults:
    """Everything the experiment measures. settings: n_prompts (screens and the metric), n_exact (exact path
    patching), n_eval (circuit evaluation), top (heads confirmed per step), seed."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(part: str):
        nonlocal t0
        seconds[part] = round(time.perf_counter() - t0, 2)
        log(f"  {part}: {seconds[part]:.1f} s")
        t0 = time.perf_counter()

    vocab = vocabulary(n_tokens(tokenizer))
    pad = pad if pad is not None else (getattr(tokenizer, "pad_token_id", None) or
                                       getattr(tokenizer, "eos_token_id", None) or 0)
    data = ioi_dataset(encoder(tokenizer), vocab, settings["n_prompts"], settings.get("seed", 0), bos, pad)
    if data.tokens.shape[1] > int(model.cfg.n_ctx):
        raise CircuitlabError(f"the IOI prompts take up to {data.tokens.shape[1]} tokens and this model's context is "
                              f"{model.cfg.n_ctx}: use a model with a longer context")
    exact = data.first(min(settings["n_exact"], len(data)))
    b = behaviour(model, data)
    lap("behaviour")
    attention, uniform = attention_scores(model, exact)
    lap("attention scores")
    steps, found = path_steps(model, data, exact, attention, uniform, settings["top"], lap)
    backups, backup_rise = backup_name_movers(model, exact, found["name mover"], b.logit_diff)
    found["backup name mover"] = [h for h in backups if not any(h in v for c, v in found.items()
                                                                if c not in ("backup name mover", "other"))]
    found["other"] = [h for h in found["other"] if h not in found["backup name mover"]]
    lap("backup name movers")
    log("  classes: " + "; ".join(f"{c} {', '.join(map(str, v)) or '-'}" for c, v in found.items()))
    copy = copy_scores(model, exact, {h: 1.0 for h in found["name mover"]} |
                       {h: -1.0 for h in found["negative name mover"]})
    lap("copy scores")
    ev = data.first(min(settings["n_eval"], len(data)))
    ref = dict(reference=data.abc_tokens, groups=ev.groups, reference_groups=data.groups)
    metric = LogitDiff(ev.io, ev.s, ev.end_pos)
    knockouts = {kind: Knockout(model, ev.tokens, metric, kind, **(ref if kind != "zero" else {}),
                                **({"seed": settings.get("seed", 0)} if kind == "resample" else {}))
                 for kind in KINDS}
    circuit = sorted({h for heads in found.values() for h in heads})
    evaluation = evaluate_circuit(knockouts, circuit, {c: v for c, v in found.items() if v},
                                  seed=settings.get("seed", 0))
    lap("faithfulness, completeness, minimality")
    cfg = model.cfg
    config = {k: getattr(cfg, k, None) for k in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx",
                                                 "n_key_value_heads", "normalization_type")}
    return IOIResults(
        experiment="ioi", preset=preset, model=label, about=list(about), gpt2_small=gpt2_small,
        settings=dict(settings), config={k: (int(v) if isinstance(v, bool | int) and not isinstance(v, bool) else
                                             v if v is None or isinstance(v, int | str) else str(v))
                                         for k, v in config.items()},
        vocabulary={"names": len(vocab.names), "places": len(vocab.places), "objects": len(vocab.objects),
                    "dropped": vocab.dropped, "example": data.prompts[0].text, "bos": bos is not None},
        behaviour=b, steps=steps, classes=found,
        attention={k: v.tolist() for k, v in attention.items()}, uniform=uniform, copy=copy,
        backup_rise=backup_rise, evaluation=evaluation, seconds=seconds)
