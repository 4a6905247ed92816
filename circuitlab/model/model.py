"""The circuitlab transformer: attention-only (optionally with a ReLU MLP), in TransformerLens layout and hook names.

Two paths compute the same function:
- the fused fast path (one QKV matmul, `attention.causal_attention`: our C kernel for heads of 16 on the CPU, else
  `scaled_dot_product_attention`), taken when no hook is attached — training;
- the hooked path (explicit scores and patterns through every `HookPoint`), taken by `run_with_cache` /
  `run_with_hooks` — analysis.
tests/test_model.py checks that they give the same logits.

Weights use TransformerLens's row-vector layout: W_E [d_vocab, d_model], W_pos [n_ctx, d_model],
W_Q/W_K/W_V [n_heads, d_model, d_head], W_O [n_heads, d_head, d_model], W_U [d_model, d_vocab], so products read
left to right: W_E W_V W_O W_U is the OV circuit on tokens (Elhage et al. 2021).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import ActivationCache, FactoredMatrix, HookedRootModule
from transformer_lens.hook_points import HookPoint

from circuitlab.model.config import ModelConfig
from circuitlab.model.attention import causal_attention
from circuitlab.model.loss import fused_lm_cross_entropy, lm_cross_entropy
from circuitlab.model.matmul import linear

ReturnType = Literal["logits", "loss", "both"]


class LayerNorm(nn.Module):
    """TransformerLens's LayerNorm: (x - mean) / sqrt(var + eps) * w + b, with hook_scale and hook_normalized.
    weights=False: TransformerLens's LayerNormPre, no w or b (the final norm of a `final_norm` model)."""

    def __init__(self, cfg: ModelConfig, weights: bool = True):
        super().__init__()
        self.eps = cfg.eps
        if weights:
            self.w = nn.Parameter(torch.ones(cfg.d_model))
            self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        normalized = self.hook_normalized(x / scale)
        return normalized * self.w + self.b if hasattr(self, "w") else normalized


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        H, D, E = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(H, D, E))
        self.W_K = nn.Parameter(torch.empty(H, D, E))
        self.W_V = nn.Parameter(torch.empty(H, D, E))
        self.W_O = nn.Parameter(torch.empty(H, E, D))
        if cfg.attn_bias:
            self.b_Q = nn.Parameter(torch.zeros(H, E))
            self.b_K = nn.Parameter(torch.zeros(H, E))
            self.b_V = nn.Parameter(torch.zeros(H, E))
            self.b_O = nn.Parameter(torch.zeros(D))
        if cfg.smeared_keys:
            # sigmoid(0) = 0.5: each key starts as the mean of its own and the previous position's key.
            self.smear_alpha = nn.Parameter(torch.zeros(H))
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # keys after smearing: the keys the scores use
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos], masked with -inf
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model]: each head's output

    # --- circuits, as in TransformerLens ---
    @property
    def OV(self) -> FactoredMatrix:
        """W_OV = W_V W_O per head: [n_heads, d_model, d_model] (Elhage et al. 2021, 'OV circuit')."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """W_QK = W_Q W_K^T per head: [n_heads, d_model, d_model] (Elhage et al. 2021, 'QK circuit')."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    def smear(self, k: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos head d_head"]:
        """Olsson et al. (2022), smeared keys: k_j <- s k_j + (1 - s) k_{j-1}, s = sigmoid(alpha_h); k_0 unchanged."""
        s = torch.sigmoid(self.smear_alpha)[:, None]  # [head, 1]
        return torch.cat([k[:, :1], s * k[:, 1:] + (1 - s) * k[:, :-1]], dim=1)

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        pos: Float[Tensor, "pos d_model"] | None,
        fast: bool,
    ) -> Float[Tensor, "batch pos d_model"]:
        """x feeds Q, K and V; `pos` (shortformer only) is added to the inputs of Q and K, never V."""
        return self._fast(x, pos) if fast else self._hooked(x, pos)

    def _fast(self, x: Tensor, pos: Tensor | None) -> Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        H, E = cfg.n_heads, cfg.d_head
        # One matmul for Q, K and V: [d_model, 3 * H * E].
        W_qkv = torch.cat([self.W_Q, self.W_K, self.W_V], dim=0).permute(1, 0, 2).reshape(cfg.d_model, 3 * H * E)
        qkv = linear(x, W_qkv).view(B, T, 3, H, E)  # (B, T, 3, H, E)
        q, k, v = qkv.unbind(2)  # each (B, T, H, E)
        if pos is not None:
            # (x + p) W = x W + p W: the positional part is computed once for the whole batch.
            pq_pk = linear(pos[:T], W_qkv[:, : 2 * H * E]).view(T, 2, H, E)
            q = q + pq_pk[:, 0]
            k = k + pq_pk[:, 1]
        if cfg.attn_bias:
            q, k, v = q + self.b_Q, k + self.b_K, v + self.b_V
        if cfg.smeared_keys:
            k = self.smear(k)
        z = causal_attention(q, k, v)  # (B, T, H, E)
        out = linear(z.reshape(B, T, H * E), self.W_O.reshape(H * E, cfg.d_model))
        return out + self.b_O if cfg.attn_bias else out

    def _hooked(self, x: Tensor, pos: Tensor | None) -> Tensor:
        cfg = self.cfg
        T = x.shape[1]
        qk_in = x if pos is None else x + pos[:T]
        q = self.hook_q(torch.einsum("bpd,hde->bphe", qk_in, self.W_Q) + (self.b_Q if cfg.attn_bias else 0))
        k = torch.einsum("bpd,hde->bphe", qk_in, self.W_K) + (self.b_K if cfg.attn_bias else 0)
        if cfg.smeared_keys:
            k = self.smear(k)
        k = self.hook_k(k)
        v = self.hook_v(torch.einsum("bpd,hde->bphe", x, self.W_V) + (self.b_V if cfg.attn_bias else 0))
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(cfg.d_head)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        scores = self.hook_attn_scores(scores.masked_fill(causal, float("-inf")))
        pattern = self.hook_pattern(scores.softmax(-1))
        z = self.hook_z(torch.einsum("bkhe,bhqk->bqhe", v, pattern))
        result = self.hook_result(torch.einsum("bqhe,hed->bqhd", z, self.W_O))
        out = result.sum(2)
        return out + self.b_O if cfg.attn_bias else out


class MLP(nn.Module):
    """ReLU MLP (Nanda et al. 2023 use one, with biases): relu(x W_in + b_in) W_out + b_out."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        post = self.hook_post(F.relu(self.hook_pre(x @ self.W_in + self.b_in)))
        return post @ self.W_out + self.b_out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.ln1 = LayerNorm(cfg) if cfg.layer_norm else nn.Identity()
        self.attn = Attention(cfg)
        if not cfg.attn_only:
            self.ln2 = LayerNorm(cfg) if cfg.layer_norm else nn.Identity()
            self.mlp = MLP(cfg)
            self.hook_resid_mid = HookPoint()
            self.hook_mlp_out = HookPoint()
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Tensor, pos: Tensor | None, fast: bool) -> Tensor:
        resid = self.hook_resid_pre(resid)
        resid = resid + self.hook_attn_out(self.attn(self.ln1(resid), pos, fast))
        if self.cfg.attn_only:
            return self.hook_resid_post(resid)
        resid = self.hook_resid_mid(resid)
        resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)


class Transformer(HookedRootModule):
    """A small transformer in TransformerLens layout, built on `HookedRootModule`.

    forward(tokens) -> logits [batch, pos, d_vocab]; with return_type="loss" the mean next-token cross-entropy
    (position i predicts token i+1), or per token with loss_per_token=True.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = LayerNorm(cfg) if cfg.layer_norm else LayerNorm(cfg, weights=False) if cfg.final_norm else nn.Identity()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.setup()
        self._hook_points = list(self.hook_dict.values())
        self.init_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self) -> None:
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed)
        noise = torch.Generator().manual_seed(cfg.init_noise)
        for name, p in self.named_parameters():
            if name.endswith(("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", ".b", "smear_alpha")):
                p.zero_()
            elif name.endswith(".w"):
                p.fill_(1.0)
            else:
                if cfg.init == "gpt2":
                    p.copy_(torch.randn(p.shape, generator=g) * (0.8 / math.sqrt(cfg.d_model)))
                else:  # "nanda": Nanda et al. (2023), progress-measures-paper's init
                    scale = math.sqrt(cfg.d_vocab) if name == "W_U" else math.sqrt(cfg.d_model)
                    p.copy_(torch.randn(p.shape, generator=g) / scale)
                if cfg.init_noise:  # one ulp up or down per weight, from its own generator: the init draws unchanged
                    up = torch.rand(p.shape, generator=noise) < 0.5
                    p.copy_(torch.where(up, torch.nextafter(p, p.new_tensor(math.inf)),
                                        torch.nextafter(p, p.new_tensor(-math.inf))))

    # ------------------------------------------------------------------ forward
    def has_active_hooks(self) -> bool:
        return any(hp.fwd_hooks or hp.bwd_hooks for hp in self._hook_points)

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        return_type: ReturnType = "logits",
        loss_per_token: bool = False,
    ):
        cfg = self.cfg
        T = tokens.shape[-1]
        if T > cfg.n_ctx:
            raise ValueError(f"input has {T} positions but the model's n_ctx is {cfg.n_ctx}")
        fast = not self.has_active_hooks()
        resid = self.hook_embed(self.W_E[tokens])
        pos_embed = self.hook_pos_embed(self.W_pos[:T])
        if cfg.positional_embedding_type == "standard":
            resid = resid + pos_embed
            qk_pos = None
        else:
            qk_pos = pos_embed
        for block in self.blocks:
            resid = block(resid, qk_pos, fast)
        resid = self.ln_final(resid)
        if fast and return_type == "loss" and not loss_per_token and not torch.is_autocast_enabled(resid.device.type):
            return fused_lm_cross_entropy(resid, self.W_U, tokens)  # training: no full logits tensor
        logits = resid @ self.W_U
        if return_type == "logits":
            return logits
        loss = lm_cross_entropy(logits, tokens, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def run_with_cache(self, *args, **kwargs) -> tuple[Tensor, ActivationCache]:
        """As TransformerLens's: returns (output, ActivationCache). TL 4's HookedRootModule returns a plain dict."""
        out, cache_dict = super().run_with_cache(*args, **kwargs)
        return out, ActivationCache(cache_dict, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))

    # ------------------------------------------------------------------ weights, stacked per layer (TL layout)
    def _stack(self, name: str, shape: tuple[int, ...]) -> Tensor:
        if not self.blocks:
            return self.W_E.new_zeros((0, *shape))
        return torch.stack([getattr(b.attn, name) for b in self.blocks])

    @property
    def W_Q(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("W_Q", (self.cfg.n_heads, self.cfg.d_model, self.cfg.d_head))

    @property
    def W_K(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("W_K", (self.cfg.n_heads, self.cfg.d_model, self.cfg.d_head))

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("W_V", (self.cfg.n_heads, self.cfg.d_model, self.cfg.d_head))

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]:
        return self._stack("W_O", (self.cfg.n_heads, self.cfg.d_head, self.cfg.d_model))

    @property
    def b_O(self) -> Float[Tensor, "n_layers d_model"] | None:
        """Every layer's attention output bias, stacked (None without attention biases)."""
        if not self.cfg.attn_bias or not self.blocks:
            return None
        return torch.stack([b.attn.b_O for b in self.blocks])

    @property
    def OV(self) -> FactoredMatrix:
        """W_V W_O for every head: [n_layers, n_heads, d_model, d_model] as a FactoredMatrix."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """W_Q W_K^T for every head: [n_layers, n_heads, d_model, d_model] as a FactoredMatrix."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def device(self) -> torch.device:
        return self.W_E.device

