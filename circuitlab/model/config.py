"""Model configuration, in TransformerLens's field names so `ActivationCache` and analyses read it as a TL cfg."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from circuitlab.errors import CircuitlabError
from circuitlab.results import strict_config

PositionalType = Literal["standard", "shortformer"]
InitMode = Literal["gpt2", "nanda"]


@dataclass
class ModelConfig:
    """One config for the attention-only models of Elhage et al. (2021), the smeared-key variant of Olsson et al.
    (2022) and the 1-layer ReLU-MLP model of Nanda et al. (2023).

    positional_embedding_type:
        "standard": W_pos is added to the residual stream.
        "shortformer": W_pos is added only to the inputs of W_Q and W_K (Press et al. 2021), as in the Framework
        paper's models, so the residual stream and the OV path carry tokens only.
    smeared_keys: k_j <- sigmoid(alpha) k_j + (1 - sigmoid(alpha)) k_{j-1}, one trainable alpha per head
        (Olsson et al. 2022, argument 2).
    final_norm: LayerNormPre on the final residual stream, before W_U: x -> (x - mean(x)) / sqrt(var(x) + eps), no
        weights (TransformerLens's "LNPre"). The blocks stay linear in the residual stream, so the circuits read from
        the weights are those of Elhage et al. (2021) with the unembedding centred and one per-position scale left
        out. (layer_norm: a LayerNorm with weights before every attention layer, MLP and the unembedding.)
    d_mlp: 0 means attention-only.
    init: "gpt2" = N(0, 0.8/sqrt(d_model)) for every matrix (TransformerLens's default);
        "nanda" = the grokking paper's init (W_E ~ N(0,1)/sqrt(d_model), W_U /sqrt(d_vocab), the rest /sqrt(d_model)).
    init_noise: 0 = none. k > 0 moves every randomly initialised weight one unit in the last place, up or down (the
        signs drawn from seed k), after the init above: float noise the size of one rounding, which training
        amplifies as a change of summation order would (the float-noise check, `experiments/noise.py`).
    """

    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 8
    d_head: int = 16
    n_ctx: int = 128
    d_vocab: int = 2048
    positional_embedding_type: PositionalType = "shortformer"
    smeared_keys: bool = False
    layer_norm: bool = False
    final_norm: bool = False
    attn_bias: bool = False
    d_mlp: int = 0
    init: InitMode = "gpt2"
    seed: int = 0
    eps: float = 1e-5
    init_noise: int = 0

    # --- TransformerLens-compatible read-only views (ActivationCache and TL-style analyses look for these) ---
    @property
    def attn_only(self) -> bool:
        return self.d_mlp == 0

    @property
    def normalization_type(self) -> str | None:
        return "LN" if self.layer_norm else ("LNPre" if self.final_norm else None)

    @property
    def act_fn(self) -> str:
        return "relu"

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        problems = []
        for name in ("d_model", "n_heads", "d_head", "n_ctx", "d_vocab"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.n_layers < 0:
            problems.append(f"n_layers must be >= 0 (got {self.n_layers})")
        if self.d_mlp < 0:
            problems.append(f"d_mlp must be >= 0 (got {self.d_mlp}); use 0 for attention-only")
        if self.positional_embedding_type not in ("standard", "shortformer"):
            problems.append(
                f"positional_embedding_type must be 'standard' or 'shortformer' (got {self.positional_embedding_type!r})"
            )
        if self.layer_norm and self.final_norm:
            problems.append("final_norm is part of layer_norm (its final LayerNorm has weights): set one of them")
        if self.init_noise < 0:
            problems.append(f"init_noise must be >= 0 (got {self.init_noise}); 0 means none")
        if self.init not in ("gpt2", "nanda"):
            problems.append(f"init must be 'gpt2' or 'nanda' (got {self.init!r})")
        if problems:
            raise CircuitlabError("invalid model config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return strict_config(cls, d, "model")
