"""Direct logit attribution and the logit lens (Elhage et al. 2021, 'the residual stream'; nostalgebraist 2020;
Wang et al. 2022, section 3.1), LayerNorm-aware.

The logits are LN_final(x) W_U with x = sum of the components written to the residual stream (embeddings, each
head's output z W_O, each MLP's output, biases). LayerNorm is linear once its scale is fixed: with the scale s
taken from the cache of the run, LN(x) = (x - mean(x)) / s * w + b, so a component c contributes
(c - mean(c)) / s * w . W_U[:, t] to the logit of t (RMSNorm does not centre). Along a logit-difference direction
d = W_U[:, answer] - W_U[:, wrong] the contributions add up to the logit difference, less the LayerNorm bias's
share b . d and b_U's, which `bias` holds with the attention output biases (so `explained` = `total`).

The logit lens reads the residual stream before each layer (and after the last) through the final LayerNorm (its
scale recomputed from that residual, as the lens is defined) and the unembedding (with its bias): after the last
layer it gives the model's own logit difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuitlab.patching.common import cache_sites, dims, final_ln as _final_ln, has_site, hook_name
from circuitlab.results import Result


def _directions(model, answer: Tensor, wrong: Tensor) -> Tensor:
    """[batch, d_model] logit-difference directions W_U[:, answer] - W_U[:, wrong] (the final LayerNorm's weight
    folded in where it is separate)."""
    W_U = model.W_U.detach()
    d = (W_U[:, answer] - W_U[:, wrong]).T
    w, _, _ = _final_ln(model)
    return d * w.detach() if w is not None else d


@dataclass
class LogitAttribution(Result):
    """Each component's direct contribution to logit(answer) - logit(wrong) at `position`, mean over prompts:
    heads [layer][head], mlps [layer] (empty for attention-only models), embed (token + positional), bias
    (attention output biases, the final LayerNorm's bias and the unembedding bias); heads_by_source
    [layer][head][source position] where asked for; explained = the sum of all of them; total = the model's logit
    difference (equal to explained up to float error: a check that nothing was missed)."""

    position: int
    heads: list[list[float]]
    mlps: list[float]
    embed: float
    bias: float
    explained: float
    total: float
    heads_by_source: list | None = None


@torch.no_grad()
def direct_logit_attribution(model, tokens: Tensor, answer: Tensor, wrong: Tensor, position: int = -1,
                             by_source: bool = False) -> LogitAttribution:
    L, H = dims(model)
    pos = position % tokens.shape[1]
    names = [hook_name("z", layer) for layer in range(L)] + [n for n in ("hook_embed", "hook_pos_embed")
                                                             if n in model.hook_dict]  # rotary models: no pos embed
    mlp = has_site(model, "mlp_out")
    names += [hook_name("mlp_out", layer) for layer in range(L)] if mlp else []
    has_scale = "ln_final.hook_scale" in model.hook_dict and model.cfg.normalization_type is not None
    names += ["ln_final.hook_scale"] if has_scale else []
    if by_source:
        names += [hook_name("pattern", layer) for layer in range(L)] + [hook_name("v", layer) for layer in range(L)]
    cache = cache_sites(model, tokens, names)
    scale = cache["ln_final.hook_scale"][:, pos] if has_scale else torch.ones(tokens.shape[0], 1)  # [batch, 1]
    _, _, centre = _final_ln(model)
    d = _directions(model, answer, wrong)  # [batch, d_model]

    def along(x: Tensor) -> Tensor:  # [batch, ..., d_model] at the position -> [batch, ...]
        if centre:
            x = x - x.mean(-1, keepdim=True)
        shape = (x.shape[0],) + (1,) * (x.ndim - 2)
        return (x / scale.reshape(*shape, 1) * d.reshape(d.shape[0], *(1,) * (x.ndim - 2), -1)).sum(-1)

    W_O = model.W_O.detach()
    heads = torch.stack([along(torch.einsum("bhe,hed->bhd", cache[hook_name("z", layer)][:, pos], W_O[layer]))
                         for layer in range(L)], 1)  # [batch, layer, head]
    mlps = torch.stack([along(cache[hook_name("mlp_out", layer)][:, pos]) for layer in range(L)], 1) if mlp else None
    embed = cache["hook_embed"][:, pos]
    if "hook_pos_embed" in cache and getattr(model.cfg, "positional_embedding_type", "standard") == "standard":
        pos_embed = cache["hook_pos_embed"]
        embed = embed + (pos_embed[:, pos] if pos_embed.ndim == 3 else pos_embed[pos])
    embed_c = along(embed)
    biases = torch.zeros(tokens.shape[0])
    b_O = getattr(model, "b_O", None)
    if b_O is not None:
        biases = biases + along(b_O.detach().sum(0).expand(tokens.shape[0], -1))
    _, ln_b, _ = _final_ln(model)
    W_U = model.W_U.detach()
    if ln_b is not None:
        biases = biases + ln_b.detach() @ (W_U[:, answer] - W_U[:, wrong])
    b_U = getattr(model, "b_U", None)
    if b_U is not None:
        biases = biases + (b_U.detach()[answer] - b_U.detach()[wrong])
    explained = heads.sum((1, 2)) + embed_c + biases + (mlps.sum(1) if mlps is not None else 0.0)
    logits = model(tokens)[:, pos]
    total = logits.gather(1, answer[:, None])[:, 0] - logits.gather(1, wrong[:, None])[:, 0]
    by = None
    if by_source:
        by = []
        for layer in range(L):
            pat, v = cache[hook_name("pattern", layer)][:, :, pos], cache[hook_name("v", layer)]  # [b,h,k], [b,k,h,e]
            out = torch.einsum("bhk,bkhe,hed->bhkd", pat, v, W_O[layer])
            by.append(along(out).mean(0).tolist())
    return LogitAttribution(position, heads.mean(0).tolist(), mlps.mean(0).tolist() if mlps is not None else [],
                            float(embed_c.mean()), float(biases.mean()), float(explained.mean()), float(total.mean()),
                            by)


@dataclass
class LogitLens(Result):
    """logit(answer) - logit(wrong) read from the residual stream before each layer and after the last
    (`sites`), mean over prompts."""

    sites: list[str]
    logit_diff: list[float]


@torch.no_grad()
def logit_lens(model, tokens: Tensor, answer: Tensor, wrong: Tensor, position: int = -1) -> LogitLens:
    L, _ = dims(model)
    pos = position % tokens.shape[1]
    names = [hook_name("resid_pre", layer) for layer in range(L)] + [hook_name("resid_post", L - 1)]
    cache = cache_sites(model, tokens, names)
    w, b, centre = _final_ln(model)
    d = (model.W_U.detach()[:, answer] - model.W_U.detach()[:, wrong]).T  # [batch, d_model]
    kind = getattr(model.cfg, "normalization_type", None)
    eps = getattr(model.cfg, "eps", 1e-5)
    b_U = getattr(model, "b_U", None)
    offset = (b_U.detach()[answer] - b_U.detach()[wrong]) if b_U is not None else torch.zeros(len(answer))
    out = []
    for n in names:
        x = cache[n][:, pos]
        if kind is not None:
            if centre:
                x = x - x.mean(-1, keepdim=True)
            x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
            if w is not None:
                x = x * w.detach()
            if b is not None:
                x = x + b.detach()
        out.append(float(((x * d).sum(-1) + offset).mean()))
    return LogitLens(names, out)
