"""Activation patching of every head's output on a GPT-2-small-shaped model (12 layers x 12 heads, d_model 768,
vocabulary 50,257; random weights, built locally, nothing downloaded) over 100 prompts: circuitlab's batched
`patch_heads` vs TransformerLens's own one-head-at-a-time loop (`transformer_lens.patching
.generic_activation_patch`, what `get_act_patch_attn_head_out_all_pos` runs), measured in the same run on the same
model, prompts and metric -- on a Hugging Face GPT-2 behind a TransformerBridge (`--kind bridge`) and on
circuitlab's own Transformer of the same shape (`--kind circuitlab`: there the layers before the patched one also
run once instead of once per head).

The loop is timed on --baseline-layers layers (its cost per head does not depend on the layer) and scaled to all
144 heads; the two results are checked to agree on those layers. Writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/patching.py [--prompts 100] [--length 16] [--baseline-layers 2] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def _tiny_tokenizer(folder: str) -> None:
    """A small byte-level BPE tokenizer, so the folder boots like any saved model (the prompts are random ids)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(["When Mary and John went to the store, John gave a drink to Mary."] * 20, vocab_size=300,
                            min_frequency=1, special_tokens=["<|endoftext|>"])
    tok.save(f"{folder}/tokenizer.json")
    GPT2TokenizerFast(tokenizer_file=f"{folder}/tokenizer.json", bos_token="<|endoftext|>",
                      eos_token="<|endoftext|>", unk_token="<|endoftext|>").save_pretrained(folder)


class _WithDevice:
    """circuitlab's model as TransformerLens's patching loop expects it: its config also says the device."""

    def __init__(self, model):
        import types

        self._model = model
        self.cfg = types.SimpleNamespace(**model.cfg.to_dict(), device=str(model.device), n_key_value_heads=None)

    def __getattr__(self, name):
        return getattr(self._model, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--length", type=int, default=16, help="tokens per prompt (IOI prompts are about 15)")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--baseline-layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--kind", choices=["bridge", "circuitlab"], default="bridge")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ["HF_HUB_OFFLINE"] = "1"
    import pandas as pd
    from transformer_lens.patching import generic_activation_patch, layer_head_vector_patch_setter
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuitlab import load_model
    from circuitlab.patching import LogitDiff, patch_heads

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=args.layers)  # GPT-2 small's shape
    if args.kind == "bridge":
        with tempfile.TemporaryDirectory() as d:
            GPT2LMHeadModel(cfg).save_pretrained(d)
            _tiny_tokenizer(d)
            model = load_model(d)
    else:
        from circuitlab.model import ModelConfig, Transformer

        model = Transformer(ModelConfig(n_layers=args.layers, d_model=cfg.n_embd, n_heads=cfg.n_head,
                                        d_head=cfg.n_embd // cfg.n_head, n_ctx=cfg.n_positions, d_vocab=cfg.vocab_size,
                                        d_mlp=4 * cfg.n_embd, layer_norm=True, attn_bias=True,
                                        positional_embedding_type="standard")).eval()
    L, H, V = model.cfg.n_layers, model.cfg.n_heads, cfg.vocab_size
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, V, (args.prompts, args.length), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = torch.randint(0, V, (args.prompts,), generator=g)  # one name changed, as in IOI's ABC prompts
    metric = LogitDiff(torch.randint(0, V, (args.prompts,), generator=g), torch.randint(0, V, (args.prompts,),
                                                                                        generator=g))

    t0 = time.perf_counter()
    ours = patch_heads(model, clean, corrupt, metric)
    t_ours = time.perf_counter() - t0

    base_layers = min(args.baseline_layers, L)
    _, cache = model.run_with_cache(clean)
    index = pd.DataFrame([(layer, h) for layer in range(base_layers) for h in range(H)], columns=["layer", "head"])
    tl_model = model if args.kind == "bridge" else _WithDevice(model)
    t0 = time.perf_counter()
    base = generic_activation_patch(tl_model, corrupt, cache, lambda logits: metric(logits).mean(),
                                    layer_head_vector_patch_setter, "z", index_df=index)
    t_base = time.perf_counter() - t0
    diff = float((torch.as_tensor(base).flatten() - ours.tensor()[:base_layers].flatten()).abs().max())
    per_head = t_base / len(index)
    result = {
        "model": f"GPT-2 small shape ({L} layers x {H} heads, d_model {cfg.n_embd}, vocabulary {V}), random weights",
        "kind": args.kind,
        "prompts": args.prompts, "tokens_per_prompt": args.length, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "machine": platform.machine(),
        "circuitlab_patch_heads_seconds": round(t_ours, 2),
        "transformer_lens_loop_seconds_measured": round(t_base, 2), "loop_heads_measured": len(index),
        "transformer_lens_loop_seconds_for_all_heads": round(per_head * L * H, 2),
        "speedup": round(per_head * L * H / t_ours, 2),
        "max_abs_difference_on_measured_heads": diff,
    }
    print(json.dumps(result, indent=1))
    out = Path(args.out or Path(__file__).parent / "results" / f"patching-{args.kind}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
