"""Convert a circuitlab model into TransformerLens's own native model (`TransformerBridge.boot_native`).

Used to check that our model computes what TransformerLens computes, to run analyses on a TL model, and as the
baseline of the training-throughput benchmark. The native model can express standard positions only (no
shortformer, no smeared keys) and needs at least one layer.
"""

from __future__ import annotations

import torch
import transformer_lens.model_bridge.sources  # noqa: F401  (attaches TransformerBridge.boot_native)
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

from circuitlab.errors import CircuitlabError
from circuitlab.model.config import ModelConfig
from circuitlab.model.model import Transformer


def bridge_config(cfg: ModelConfig) -> TransformerBridgeConfig:
    if cfg.positional_embedding_type != "standard" or cfg.smeared_keys or cfg.n_layers == 0:
        raise CircuitlabError(
            "TransformerLens's native model needs standard positions, no smeared keys and n_layers >= 1; "
            "this config has "
            f"positional_embedding_type={cfg.positional_embedding_type!r}, smeared_keys={cfg.smeared_keys}, "
            f"n_layers={cfg.n_layers}"
        )
    if cfg.final_norm:
        raise CircuitlabError("TransformerLens's native model has no final-only LayerNormPre (its LNPre models "
                              "normalise before every layer): this config has final_norm=True")
    return TransformerBridgeConfig(
        d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_head=cfg.d_head, n_ctx=cfg.n_ctx,
        d_vocab=cfg.d_vocab, attn_only=cfg.attn_only, d_mlp=cfg.d_mlp or None, act_fn="relu",
        normalization_type=cfg.normalization_type, eps=cfg.eps, seed=cfg.seed,
    )


def bridge_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our TL-layout weights in the native model's nn.Linear layout ([out, in])."""
    cfg = model.cfg
    H, D, E = cfg.n_heads, cfg.d_model, cfg.d_head
    sd: dict[str, torch.Tensor] = {
        "embed.weight": model.W_E,
        "pos_embed.weight": model.W_pos,
        "unembed.weight": model.W_U.T,
        "unembed.bias": model.W_U.new_zeros(cfg.d_vocab),
    }
    for l, block in enumerate(model.blocks):
        a, p = block.attn, f"blocks.{l}."
        for name, W in (("q", a.W_Q), ("k", a.W_K), ("v", a.W_V)):
            sd[p + f"attn.{name}.weight"] = W.permute(0, 2, 1).reshape(H * E, D)  # [H, D, E] -> [H*E, D]
            b = getattr(a, f"b_{name.upper()}", None)
            sd[p + f"attn.{name}.bias"] = b.reshape(H * E) if b is not None else W.new_zeros(H * E)
        sd[p + "attn.o.weight"] = a.W_O.reshape(H * E, D).T
        sd[p + "attn.o.bias"] = a.b_O if cfg.attn_bias else a.W_O.new_zeros(D)
        if cfg.layer_norm:
            sd[p + "ln1.weight"], sd[p + "ln1.bias"] = block.ln1.w, block.ln1.b
        if not cfg.attn_only:
            if cfg.layer_norm:
                sd[p + "ln2.weight"], sd[p + "ln2.bias"] = block.ln2.w, block.ln2.b
            sd[p + "mlp.in.weight"], sd[p + "mlp.in.bias"] = block.mlp.W_in.T, block.mlp.b_in
            sd[p + "mlp.out.weight"], sd[p + "mlp.out.bias"] = block.mlp.W_out.T, block.mlp.b_out
    if cfg.layer_norm:
        sd["ln_final.weight"], sd["ln_final.bias"] = model.ln_final.w, model.ln_final.b
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def to_transformer_bridge(model: Transformer) -> TransformerBridge:
    """A `TransformerBridge.boot_native` model holding the same weights as `model` (same logits)."""
    bridge = TransformerBridge.boot_native(bridge_config(model.cfg), device=model.device)
    missing, unexpected = bridge.load_state_dict(bridge_state_dict(model), strict=False)
    missing = [k for k in missing if not k.endswith("unembed.bias")]
    if missing or unexpected:
        raise RuntimeError(f"weight conversion to TransformerBridge incomplete: missing={missing} unexpected={unexpected}")
    return bridge
