"""Presets of the induction-heads experiment (Olsson et al. 2022): the 1L, 2L (3L in full) and smeared-key models,
and the experiment's measuring settings."""

from __future__ import annotations

from circuitlab.training.presets import ExperimentPreset, Preset

# probe_windows: held-out windows every checkpoint is measured on (the ICL score of single tokens needs many: its
# standard error is ~2.5/sqrt(n)); ablation_points: checkpoints the ablations run at; task_steps: training steps
# of the synthetic behaviour tasks; settle: models stop once their phase change has settled (`online`), their
# max_tokens the cap; follow: models that stop where another stopped instead (the 1L control trains as long as the
# 2L, so their training losses can be compared).
SETTINGS = {"probe_windows": 1024, "ablation_points": 6, "task_steps": 1500, "settle": True, "follow": {"1L": "2L"}}


def induction_preset(name: str, shared_model: dict, shared_train: dict, models: dict[str, dict],
                     differs: list[str], **settings) -> ExperimentPreset:
    """models: name -> overrides of the shared settings (n_layers, smeared_keys, max_tokens)."""
    presets = {}
    for n, o in models.items():
        model = {**shared_model, **{k: v for k, v in o.items() if k != "max_tokens"}}
        presets[n] = Preset(n, model, {**shared_train, "max_tokens": int(o["max_tokens"])})
    return ExperimentPreset(name, presets, SETTINGS | settings, tuple(differs))


# final_norm: a LayerNormPre before the unembedding only. With it the plain 2L model's induction heads form near 2.5M
# tokens, abruptly (README, 'Induction calibration'); without it they rose gradually over 8-30M tokens.
_SMALL = dict(d_model=64, n_heads=4, d_head=16, n_ctx=128, d_vocab=512, positional_embedding_type="shortformer",
              final_norm=True)
_TRAIN = dict(batch_size=8, lr=1e-2, warmup_steps=200, schedule="cosine", eval_every=250, checkpoint_every=250,
              log_checkpoints=24)

PRESETS: dict[str, ExperimentPreset] = {
    # Calibrated on a 2-core CPU (README, 'Induction calibration'): the plain 2L model's induction heads form
    # between ~2.3M and ~4M tokens with these settings; smeared keys bring them earlier. The budgets are caps: each
    # model stops once its phase change has settled.
    "quick": induction_preset(
        "quick", _SMALL, _TRAIN,
        {"2L": dict(n_layers=2, max_tokens=16_000_000), "1L": dict(n_layers=1, max_tokens=16_000_000),
         "1L-smeared": dict(n_layers=1, smeared_keys=True, max_tokens=4_000_000),
         "2L-smeared": dict(n_layers=2, smeared_keys=True, max_tokens=4_000_000)},
        differs=["context 128 tokens (paper: 8192); the ICL score uses tokens 12 and 125 (paper: 50 and 500 of 512)",
                 "d_model 64, 4 heads of 16, BPE vocabulary 512, Python standard library source (paper: d_model 768+,"
                 " 12 heads, vocabulary 2^16, web text)",
                 "each model trains until its induction phase change has settled, at most 16M tokens for 2L (the 1L "
                 "as long as the 2L) and 4M for the smeared-key models (paper: 10B for every model)",
                 "learning rate 1e-2 after 200 warm-up steps, cosine to 1e-3 over each model's cap (paper: cosine over "
                 "10B tokens), batch 8 x 128 tokens (paper: 2^19 tokens)",
                 "one LayerNorm without weights (LNPre), before the unembedding only, so the blocks stay linear for "
                 "the circuits (paper: a LayerNorm before every layer)"],
    ),
    # The papers' context and our default model width; not calibrated on a CPU (expect hours).
    "full": induction_preset(
        "full", dict(_SMALL, d_model=128, n_heads=8, n_ctx=512, d_vocab=2048),
        dict(_TRAIN, batch_size=8, checkpoint_every=500),
        {"2L": dict(n_layers=2, max_tokens=100_000_000), "1L": dict(n_layers=1, max_tokens=100_000_000),
         "3L": dict(n_layers=3, max_tokens=100_000_000),
         "1L-smeared": dict(n_layers=1, smeared_keys=True, max_tokens=20_000_000),
         "2L-smeared": dict(n_layers=2, smeared_keys=True, max_tokens=20_000_000)},
        differs=["context 512 tokens (the ICL score's own 50 and 500; paper's models: 8192)",
                 "d_model 128, 8 heads of 16, BPE vocabulary 2048, Python standard library source",
                 "until the phase change has settled, at most 100M tokens (20M smeared) (paper: 10B)",
                 "learning rate 1e-2 after 200 warm-up steps, cosine to 1e-3 over each model's cap (paper: cosine over "
                 "10B tokens)",
                 "one LayerNorm without weights (LNPre), before the unembedding only (paper: before every layer)"],
    ),
}


def shared_model_settings(preset: ExperimentPreset) -> dict:
    """The model settings every model of the preset shares (width, context, vocabulary, positions)."""
    first = next(iter(preset.models.values())).model
    return {k: v for k, v in first.items() if k not in ("n_layers", "smeared_keys")}


def with_cap(preset: ExperimentPreset, max_tokens: int) -> ExperimentPreset:
    """The preset with the plain (not smeared-key) models' token cap set to `max_tokens` (`--max-tokens`). The cosine
    schedule runs over the cap, so a new cap changes the schedule too."""
    if max_tokens <= 0:
        from circuitlab.errors import CircuitlabError

        raise CircuitlabError(f"--max-tokens must be a positive number of tokens, not {max_tokens}")
    models = {n: p.but(train={"max_tokens": int(max_tokens)}) if not p.model.get("smeared_keys") else p
              for n, p in preset.models.items()}
    return preset.but(models=models, differs=[*preset.differs, f"plain models capped at {max_tokens:,} tokens"])
