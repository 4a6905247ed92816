"""Presets of the grokking experiment (Nanda et al. 2023): modular addition mod 113, every value as in the paper,
and a quick preset with fewer epochs."""

from __future__ import annotations

from circuitlab.errors import CircuitlabError
from circuitlab.training.presets import ExperimentPreset, Preset


def grokking_model(p: int = 113, frac: float = 0.3, seed: int = 0, d_model: int = 128, n_heads: int = 4,
                   d_head: int = 32, d_mlp: int = 512, lr: float = 1e-3, weight_decay: float = 1.0,
                   epochs: int = 40_000, checkpoint_every: int = 100, log_every: int = 10,
                   device: str = "cpu") -> Preset:
    """The paper's model and training, with any of its values changed. Model: 1 layer, 4 heads of 32, ReLU MLP 512,
    no LayerNorm, learned positions, no attention biases, the paper's init. Optimiser: AdamW lr 1e-3, weight decay
    1.0 on every parameter, betas (0.9, 0.98), torch's per-parameter AdamW, lr warm-up min(step / 10, 1) (the first
    update has lr 0, as in the authors' code), full batch (3,830 of the 12,769 pairs), no gradient clipping."""
    for flag, value in (("epochs", epochs), ("checkpoint-every", checkpoint_every), ("log-every", log_every)):
        if value < 1:  # 0 epochs would fall back to the training loop's token budget: 833,334 epochs
            raise CircuitlabError(f"--{flag} must be at least 1 (got {value})")
    model = dict(n_layers=1, d_model=d_model, n_heads=n_heads, d_head=d_head, n_ctx=3, d_vocab=p + 1,
                 positional_embedding_type="standard", d_mlp=d_mlp, init="nanda", seed=seed)
    train = dict(lr=lr, weight_decay=weight_decay, decay="all", fused_optimizer=False, beta1=0.9, beta2=0.98,
                 warmup_steps=10, warmup_from_zero=True, schedule="constant", grad_clip=0.0, max_steps=epochs,
                 eval_every=log_every, checkpoint_every=checkpoint_every, log_checkpoints=0, seed=seed, device=device)
    return Preset("grokking", model, train, {"p": p, "frac": frac, "seed": seed},
                  about="one-layer ReLU-MLP transformer on (a + b) mod p")


def grokking_preset(name: str, differs: tuple[str, ...] = (), **changes) -> ExperimentPreset:
    """A preset of `grokking_model(**changes)`; settings["grokking_model"] keeps the changes, so flags apply on top."""
    return ExperimentPreset(name, {"grokking": grokking_model(**changes)}, {"grokking_model": changes}, differs)


def changed_preset(base: ExperimentPreset, **given) -> ExperimentPreset:
    """`base` with some of `grokking_model`'s values changed (command-line flags): its name and differs say so, so
    a changed run is never taken for the preset's own."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(grokking_model).parameters.items()}
    changes = base.settings["grokking_model"] | given
    new = {k: v for k, v in given.items() if v != base.settings["grokking_model"].get(k, defaults[k])}
    if not new:
        return base
    differs = tuple(base.differs) + tuple(f"{k} {v} (paper: {defaults[k]})" for k, v in new.items()
                                          if k != "device")
    return grokking_preset(f"{base.name}, changed", differs, **changes)


PRESETS: dict[str, ExperimentPreset] = {
    "paper": grokking_preset("paper"),
    # Same model, data and optimiser; fewer epochs (stops soon after grokking is usually complete for seed 0).
    "quick": grokking_preset("quick", ("16,000 epochs (paper: 40,000)",), epochs=16_000),
}
