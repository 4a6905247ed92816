"""The induction experiment's pieces: synthetic tasks, per-checkpoint measurement with resume, behaviours, and the
whole pipeline end to end on a tiny preset (results JSON, claims, reuse of finished runs)."""


import numpy as np
import pytest
import torch

from circuitlab.data import sample_windows
from circuitlab.data.synthetic import pattern_task, translation_task
from circuitlab.experiments.induction import InductionResults, induction_preset, run_induction_experiment
from circuitlab.heads import Head
from circuitlab.series import running_median as smooth
from circuitlab.induction.behaviours import translation_behaviour
from circuitlab.induction.measure import Probe, measure_checkpoint, measure_run
from circuitlab.model import ModelConfig
from circuitlab.training import Run, TrainConfig, train
from tests.planted import induction_model


def test_translation_task_halves_are_translations_at_random_offsets():
    task = translation_task(n_words=16, length=8, n_fillers=4, max_gap=4)
    tokens, mask, starts = task.sample(64, torch.Generator().manual_seed(0), return_positions=True)
    assert tokens.shape == (64, task.n_ctx) and (tokens[:, 0] == 0).all() and tokens.max() < task.d_vocab
    for b in range(64):
        s1, s2 = starts[b].tolist()
        star, plain = tokens[b, s1 : s1 + 8], tokens[b, s2 : s2 + 8]
        assert ((star - 16) == plain).all()  # w* = w + n_words
        assert not set(plain.tolist()) & set(tokens[b, :s2].tolist())  # no second-half token appears earlier
        assert mask[b].nonzero().flatten().tolist() == list(range(s2, s2 + 7))
    assert len({tuple(s) for s in starts.tolist()}) > 5  # the halves move: positions alone cannot solve it


def test_pattern_task_labels_follow_one_mapping_per_sequence():
    task = pattern_task(n_examples=10)
    tokens, mask, pairs = task.sample(32, torch.Generator().manual_seed(0), return_pairs=True)
    assert tokens.shape == (32, task.n_ctx)
    months, colours = set(task.first[0]), set(task.first[1])
    mappings = set()
    for b in range(32):
        seen = {}
        for k in range(task.n_examples):
            w1, w2, colon, label, nl = tokens[b, list(task.example_span(k))].tolist()
            assert colon == task.colon and nl == task.newline and label in task.labels
            assert (w1 in months) == (pairs[b, k] // 2 == 0) and (w1 in colours) == (pairs[b, k] // 2 == 1)
            assert seen.setdefault(int(pairs[b, k]), label) == label  # same pair -> same label in a sequence
        mappings.add(tuple(sorted(seen.items())))
    assert len(mappings) > 5  # the mapping changes between sequences: the label must be read from context
    assert mask[0].nonzero().flatten().tolist() == task.colon_positions()


def test_pattern_task_draws_the_words_one_draw_each_would():
    """The words are picked in one vectorised draw; the sequences are the ones a draw per word made (the data of
    runs trained before the change), and the generator is left where that left it."""
    task = pattern_task()

    def one_by_one(cats, c, g):
        return torch.stack([torch.tensor(cats[int(k)])[torch.randint(0, len(cats[int(k)]), (1,), generator=g)][0]
                            for k in c.flatten()]).view(c.shape)

    for seed, batch in ((0, 1), (3, 32), (11, 100)):
        g, h = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        c = torch.randint(0, 2, (batch, task.n_examples), generator=torch.Generator().manual_seed(seed + 1))
        for cats in (task.first, task.second):
            assert torch.equal(task._pick(cats, c, g), one_by_one(cats, c, h))
        assert torch.equal(torch.randint(0, 10**6, (4,), generator=g), torch.randint(0, 10**6, (4,), generator=h))


def test_translation_behaviour_scores_the_fuzzy_target():
    """A model whose every layer-1 head attends exactly from A to the token after A* scores 1; checked by planting
    the pattern through a hook on a random model."""
    task = translation_task(n_words=16, length=8, n_fillers=4, max_gap=4)
    model = induction_model(V=task.d_vocab, n_ctx=task.n_ctx)
    # oracle: replace layer 1's patterns with one-hot attention on the fuzzy target, from the data itself
    tokens, _, starts = task.sample(16, torch.Generator().manual_seed(1), return_positions=True)

    def oracle(pattern, hook):
        p = torch.zeros_like(pattern)
        p[..., 0] = 1.0
        for b in range(pattern.shape[0]):
            s1, s2 = starts[b].tolist()
            for i in range(task.length - 1):
                p[b, :, s2 + i] = 0
                p[b, :, s2 + i, s1 + i + 1] = 1.0
        return p

    model.add_hook("blocks.1.attn.hook_pattern", oracle)
    r = translation_behaviour(model, task, n=16, seed=1)
    model.reset_hooks()
    assert r.best_head.layer == 1
    assert r.best_score == pytest.approx(1.0)
    assert all(s < 0.5 for s in r.fuzzy_induction[0])
    assert r.chance < 0.2


def test_measure_checkpoint_on_a_planted_induction_head():
    model = induction_model()
    windows = torch.randint(1, 200, (8, 48))
    windows[:, 0] = 0
    row = measure_checkpoint(model, Probe.make(windows))
    assert row.best_induction > 0.5
    assert row.repeat_second_half_loss < row.repeat_first_half_loss
    assert len(row.pca_losses) == 8 and len(row.loss_by_position) == 47


def test_measure_run_measures_each_checkpoint_once(tiny_data, tiny_cfg, tmp_path):
    tcfg = TrainConfig(batch_size=4, max_steps=20, eval_every=10, checkpoint_every=10, log_checkpoints=3)
    run = train(tiny_cfg, tcfg, tiny_data, tmp_path / "run", progress=False)
    probe = Probe.make(sample_windows(tiny_data.val, 6, tiny_cfg.n_ctx, np.random.default_rng(0), True))
    calls = []
    rows = measure_run(run, probe, tmp_path / "m.jsonl", progress=lambda: calls.append(1))
    assert [r.step for r in rows] == run.checkpoints and len(calls) == len(run.checkpoints)
    # an interruption that cut the last line: only that checkpoint is measured again
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    (tmp_path / "m.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20] + "\n")
    calls.clear()
    again = measure_run(run, probe, tmp_path / "m.jsonl", progress=lambda: calls.append(1))
    assert len(calls) == 1 and [r.step for r in again] == run.checkpoints
    assert again[-1].icl == pytest.approx(rows[-1].icl)


def test_smooth_is_a_running_median():
    assert smooth([0, 0, 10, 0, 0, 5, 5, 5], k=3) == [0, 0, 0, 0, 0, 5, 5, 5]


TINY = induction_preset(
    "tiny", dict(d_model=32, n_heads=2, d_head=16, n_ctx=32, d_vocab=320, positional_embedding_type="shortformer"),
    dict(batch_size=8, lr=1e-2, warmup_steps=10, schedule="constant", eval_every=40, checkpoint_every=40,
         log_checkpoints=4),
    {"2L": dict(n_layers=2, max_tokens=40_000), "1L": dict(n_layers=1, max_tokens=40_000),
     "1L-smeared": dict(n_layers=1, smeared_keys=True, max_tokens=20_000),
     "2L-smeared": dict(n_layers=2, smeared_keys=True, max_tokens=20_000)},
    ["tiny test preset"], probe_windows=16, ablation_points=2, task_steps=20,
)


@pytest.fixture(scope="module")
def tiny_experiment(small_corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("induction") / "exp"
    return out, run_induction_experiment(TINY, out, workers=2, progress=False, corpus={"text": str(small_corpus_dir)})


def test_induction_experiment_end_to_end_and_reuse(small_corpus_dir, tiny_experiment):
    out, r = tiny_experiment
    corpus = {"text": str(small_corpus_dir)}
    saved = InductionResults.load(out / "results.json")
    assert saved.claims == r.claims and saved.to_json() == r.to_json()  # typed results survive the JSON round trip
    sections = {c.section for c in r.claims}
    assert {"induction-phase", "induction-controls", "induction-pca", "induction-behaviours"} <= sections
    assert all(c.verdict in ("reproduced", "not reproduced", "differs") for c in r.claims)
    assert set(r.models) == set(TINY.models)
    two = r.models["2L"]
    assert len(two.curve) == len(list((out / "runs" / "2L" / "checkpoints").glob("*.safetensors")))
    assert (r.icl_positions.early, r.icl_positions.late, r.icl_positions.n_ctx) == (3, 31, 32)
    assert len(r.pca.trajectory) == len(two.curve)
    assert r.attention_viewer[0].tokens[0] == "<bos>"
    layers = r.attention_viewer[0].patterns
    assert len(layers) == 2 and len(layers[0]) == 2  # [layer][head][q][k]
    assert r.behaviours.translation_training.steps == 20
    assert Run.open(r.behaviours.translation_training.run).task["kind"] == "sequences"  # the one run format
    # where the time went: measuring per model, each part of the analysis
    parts = r.seconds["analysis_parts"]
    assert set(parts) == {"curves_windows_bump_pca", "ablations_over_checkpoints", "behaviours", "attention_viewer",
                          "claims"}
    assert sum(parts.values()) <= r.seconds["analysis"] + 0.01
    assert set(r.seconds["per_model_measuring"]) == set(TINY.models)
    # the behaviours' task models trained in the worker pool beside the language models; the analysis reused them
    assert set(r.seconds["per_model_done_at"]) == set(TINY.models) | {"translation task", "pattern task"}
    assert all(t <= r.seconds["train_and_measure"] for t in r.seconds["per_model_done_at"].values())
    assert all(0 < v <= r.seconds["train_and_measure"] for v in r.seconds["per_model_measuring"].values())
    # a second run reuses everything: no checkpoint rewritten, no checkpoint measured again
    ckpt = out / "runs" / "2L" / "checkpoints"
    mtimes = {p.name: p.stat().st_mtime_ns for p in ckpt.iterdir()}
    measured = (out / "runs" / "2L" / "measurements.jsonl").read_text()
    task_ckpts = {p: p.stat().st_mtime_ns for p in (out / "tasks").rglob("*.safetensors")}
    r2 = run_induction_experiment(TINY, out, workers=1, progress=False, corpus=corpus)
    assert {p.name: p.stat().st_mtime_ns for p in ckpt.iterdir()} == mtimes
    assert (out / "runs" / "2L" / "measurements.jsonl").read_text() == measured
    assert {p: p.stat().st_mtime_ns for p in (out / "tasks").rglob("*.safetensors")} == task_ckpts
    assert [c.measured for c in r2.claims] == [c.measured for c in r.claims]


def _curves(tokens, induction, icl, final_heads=()):
    """ModelCurves of a synthetic run: best induction score and ICL score per checkpoint."""
    from circuitlab.experiments.induction.analysis import phase_windows
    from circuitlab.experiments.induction.results import CurvePoint, FinalScores, ModelCurves

    curve = [CurvePoint(t, i, 3.0, c, b, b, 3.0, 2.0) for i, (t, b, c) in enumerate(zip(tokens, induction, icl))]
    final = FinalScores(None, None, None, None, None, icl[-1], 3.0, tokens[-1])
    return ModelCurves({}, {}, curve, [], final, list(final_heads), phase_windows(tokens, induction, icl))


def _phase_verdicts(induction, icl, bump_size=0.2, pivot=5e6):
    from circuitlab.experiments.induction.claims import phase_change_claims
    from circuitlab.induction.phase import loss_bump
    from tests.test_induction import TOKENS

    two = _curves(TOKENS, induction, icl)
    rng = np.random.default_rng(1)
    one_loss = [5 - 0.1 * np.log(t + 1) + rng.normal(0, 0.002) for t in TOKENS]
    two_loss = [a - bump_size * x / max(induction) for a, x in zip(one_loss, induction)]
    bump = loss_bump(TOKENS, one_loss, TOKENS, two_loss, two.windows.induction)
    return [c.verdict for c in phase_change_claims(two, bump, int(pivot), "synthetic", "ICL")]


def test_phase_change_claims_positive_and_negative_controls():
    """A sharp rise (10%->90% within 0.25 decades) with ICL, the loss bump and the PCA pivot in the same window is
    reproduced on every claim; rises that are linear in tokens, linear in log-tokens, a logistic spread over 1.2
    decades, or flat are not reproduced on any of them -- whatever the ICL does."""
    from tests.test_induction import NULL_RISES, TOKENS, logistic

    sharp = [0.02 + 0.3 * logistic(t, 5e6, 0.25) for t in TOKENS]
    icl_sharp = [-0.1 - 0.3 * logistic(t, 5e6, 0.25) for t in TOKENS]
    assert _phase_verdicts(sharp, icl_sharp) == ["reproduced"] * 5
    # the same sharp rise, but at the end of training: not settled, so its window is not known to be narrow
    late = [0.02 + 0.3 * logistic(t, 1.2e7, 0.25) for t in TOKENS]
    late_icl = [-0.1 - 0.3 * logistic(t, 1.2e7, 0.25) for t in TOKENS]
    assert _phase_verdicts(late, late_icl, pivot=1.2e7) == ["not reproduced"] * 5
    for name, rise in NULL_RISES.items():
        induction = [0.02 + 0.3 * x for x in rise]
        for icl in (icl_sharp, [-0.1 - 0.3 * x for x in rise]):
            assert _phase_verdicts(induction, icl) == ["not reproduced"] * 5, name
    # each coincidence can fail on its own: ICL that changes a decade earlier, no bump, a pivot elsewhere
    icl_early = [-0.1 - 0.3 * logistic(t, 5e5, 0.25) for t in TOKENS]
    assert _phase_verdicts(sharp, icl_early) == ["reproduced", "not reproduced", "reproduced", "not reproduced",
                                                 "reproduced"]
    assert _phase_verdicts(sharp, icl_sharp, bump_size=0.0)[2] == "not reproduced"
    assert _phase_verdicts(sharp, icl_sharp, pivot=2e5)[4] == "not reproduced"


def test_control_ablation_and_behaviour_claims(tiny_experiment):
    """Each remaining induction claim says 'reproduced' on results with its effect and 'not reproduced' without it,
    on the tiny run's results with the measured part replaced."""
    from dataclasses import replace

    from circuitlab.experiments.induction.claims import induction_claims
    from circuitlab.induction.phase import Window

    _, r = tiny_experiment

    def verdict(res, words):
        (c,) = [c for c in induction_claims(res) if words in c.claim]
        return c.verdict

    def with_curve(model, best, icl=None, window=None):
        m = r.models[model]
        curve = [replace(c, best_induction=best, icl=icl if icl is not None else c.icl) for c in m.curve]
        windows = replace(m.windows, induction=window) if window is not None else m.windows
        return replace(r, models={**r.models, model: replace(m, curve=curve, windows=windows)})

    # 1L control: no induction heads and less ICL than 2L
    weaker = r.models["2L"].curve[-1].icl + 0.5  # less in-context learning than the 2L model's
    assert verdict(with_curve("1L", 0.01, icl=weaker), "Control: a one-layer model") == "reproduced"
    assert verdict(with_curve("1L", 0.4, icl=weaker), "Control: a one-layer model") == "not reproduced"
    assert verdict(with_curve("1L", 0.01, icl=weaker - 1.0), "Control: a one-layer model") == "not reproduced"
    # smeared keys: a one-layer model with an abrupt window to a high score, and the 2L-smeared window early
    sharp, late = Window(400_000, 600_000, 0.8), Window(8_000_000, 12_000_000, 0.8)
    assert verdict(with_curve("1L-smeared", 0.5, window=sharp), "Smeared keys let a one-layer") == "reproduced"
    assert verdict(with_curve("1L-smeared", 0.5, window=Window(10_000, 600_000, 0.8)),
                   "Smeared keys let a one-layer") == "not reproduced"
    early = with_curve("2L", 0.3, window=late)
    early = replace(early, models={**early.models, "2L-smeared": replace(
        early.models["2L-smeared"], windows=replace(early.models["2L-smeared"].windows, induction=sharp))})
    assert verdict(early, "Smeared keys make a two-layer") == "reproduced"
    assert verdict(with_curve("2L", 0.3, window=Window(10_000, 8_000_000, 0.8)), "Smeared keys make a two-layer") == \
        "not reproduced"
    # pattern-preserving ablation: the group carries almost all ICL; most other heads raise it
    last = r.ablation.over_training[-1]
    heads = sum(len(x) for x in last.per_head)

    def ablation(share, raising):  # the group is head 1.0
        point = replace(last, group=-share * last.clean_icl, group_share=share, heads_raising_icl=raising)
        return replace(r, ablation=replace(r.ablation, group=[Head(1, 0)],
                                           over_training=[*r.ablation.over_training[:-1], point]))
    others = heads - 1
    assert verdict(ablation(0.9, 0), "carry almost all") == "reproduced"
    assert verdict(ablation(0.6, 0), "carry almost all") == "not reproduced"
    assert verdict(ablation(0.9, others), "most other heads") == "reproduced"
    assert verdict(ablation(0.9, 0), "most other heads") == "not reproduced"
    # behaviours: copying a rare identifier, translation and pattern matching
    b = r.behaviours
    from circuitlab.induction.behaviours import CopyingBehaviour

    def copying(improvement, attention):
        c = CopyingBehaviour(["a"], ["x", "y"], [0, 5], 6.0, 6.0 - improvement, improvement, Head(1, 0), attention,
                             [1.0], [[1.0]])
        return replace(r, behaviours=replace(b, copying=c, copying_skipped=None))
    assert verdict(copying(3.0, 0.5), "Induction heads copy") == "reproduced"
    assert verdict(copying(0.1, 0.5), "Induction heads copy") == "not reproduced"
    assert verdict(copying(3.0, 0.05), "Induction heads copy") == "not reproduced"
    assert verdict(replace(r, behaviours=replace(b, translation=replace(b.translation, best_score=0.9))),
                   "Fuzzy induction") == "reproduced"
    assert verdict(replace(r, behaviours=replace(b, translation=replace(b.translation, best_score=0.1))),
                   "Fuzzy induction") == "not reproduced"
    assert verdict(replace(r, behaviours=replace(b, pattern=replace(b.pattern, best_share=0.7, accuracy=0.9))),
                   "Pattern matching") == "reproduced"
    assert verdict(replace(r, behaviours=replace(b, pattern=replace(b.pattern, best_share=0.7, accuracy=0.25))),
                   "Pattern matching") == "not reproduced"


def test_online_measuring_and_a_follower_stops_where_its_leader_stopped(tiny_data, tiny_cfg, tmp_path):
    from circuitlab.errors import CircuitlabError
    from circuitlab.experiments.induction.online import FAILED_NAME, MeasureAsTraining
    from circuitlab.induction.measure import read_measurements

    probe = Probe.make(sample_windows(tiny_data.val, 4, 32, np.random.default_rng(0), True))
    c = TrainConfig(batch_size=4, lr=3e-3, warmup_steps=5, max_steps=48, eval_every=8, eval_windows=4,
                    checkpoint_every=8, log_checkpoints=4)
    lead_dir = tmp_path / "lead"
    leader = MeasureAsTraining(probe, lead_dir / "measurements.jsonl")

    def lead(ctx):
        leader(ctx)
        if ctx.step == 24:
            ctx.stop = "planted stop"

    lead_run = train(tiny_cfg, c, tiny_data, lead_dir, progress=False, callbacks=[lead])
    measured = read_measurements(lead_dir / "measurements.jsonl")
    assert sorted(measured) == lead_run.checkpoints  # every checkpoint measured as training reached it
    assert measured[24].step == 24 and measured[24].tokens == 24 * 4 * 32
    # the follower (1L) trains as far as its leader, not to its own budget
    one = ModelConfig(**(tiny_cfg.to_dict() | {"n_layers": 1}))
    follower = MeasureAsTraining(probe, tmp_path / "f" / "measurements.jsonl", follow=lead_dir, poll_seconds=0.01)
    run = train(one, c, tiny_data, tmp_path / "f", progress=False, callbacks=[follower])
    assert run.checkpoints[-1] == 24 and run.finished and "planted stop" in run.stopped["reason"]
    # a leader that failed: the follower says so instead of waiting for it
    (lead_dir / "stopped.json").unlink()
    (lead_dir / FAILED_NAME).write_text("failed\n")
    waiting = MeasureAsTraining(probe, tmp_path / "g" / "measurements.jsonl", follow=lead_dir, poll_seconds=0.01)
    with pytest.raises(CircuitlabError, match="failed"):
        train(one, c, tiny_data, tmp_path / "g", progress=False, callbacks=[waiting])
    # a leader that measures nothing new: the follower gives up after its wait
    (lead_dir / FAILED_NAME).unlink()
    stuck = MeasureAsTraining(probe, tmp_path / "h" / "measurements.jsonl", follow=lead_dir, poll_seconds=0.01,
                              wait_seconds=0.05)
    with pytest.raises(CircuitlabError, match="measured nothing new"):
        train(one, c, tiny_data, tmp_path / "h", progress=False, callbacks=[stuck])


def test_training_rules_follow_only_a_model_that_is_there(tmp_path):
    from circuitlab.errors import CircuitlabError
    from circuitlab.experiments.induction.run import training_rules

    rules = training_rules(TINY, tmp_path)
    assert rules["1L"] == {"settle": False, "follow": str(tmp_path / "runs" / "2L")}
    assert rules["2L"] == {"settle": True, "follow": None} and rules["2L-smeared"]["settle"]
    alone = TINY.but(models={"1L": TINY.models["1L"]})  # no 2L to follow: the 1L trains by its own rule
    assert training_rules(alone, tmp_path)["1L"] == {"settle": True, "follow": None}
    with pytest.raises(CircuitlabError, match="follows another model"):
        training_rules(TINY.but(settings={"follow": {"1L": "2L", "2L": "2L-smeared"}}), tmp_path)
    other = TINY.but(models={**TINY.models, "1L": TINY.models["1L"].but(train={"eval_every": 7})})
    with pytest.raises(CircuitlabError, match="other token counts"):
        training_rules(other, tmp_path)


def test_models_spread_over_the_visible_gpus_one_per_device():
    from circuitlab.errors import CircuitlabError
    from circuitlab.experiments.induction.run import device_plan

    names = ["2L", "1L", "2L-smeared", "1L-smeared"]
    assert device_plan("cuda", names, n_cuda=2) == {"2L": "cuda:0", "1L": "cuda:1", "2L-smeared": "cuda:0",
                                                    "1L-smeared": "cuda:1"}
    assert set(device_plan("cuda", names, n_cuda=8).values()) == {"cuda:0", "cuda:1", "cuda:2", "cuda:3"}
    assert device_plan("cuda:3", names) == dict.fromkeys(names, "cuda:3")
    assert device_plan("cpu", names) == dict.fromkeys(names, "cpu")
    with pytest.raises(CircuitlabError, match="no CUDA device"):
        device_plan("cuda", names, n_cuda=0)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_induction_on_a_missing_gpu_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from circuitlab.cli import app

    r = CliRunner().invoke(app, ["experiment", "induction", "--device", "cuda", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "no CUDA device here" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x" / "runs").exists()


def test_measuring_a_run_another_process_holds_is_refused(small_corpus_dir, tiny_experiment):
    from circuitlab.errors import CircuitlabError
    from circuitlab.training.lock import run_lock

    out, _ = tiny_experiment
    path = out / "runs" / "2L" / "measurements.jsonl"
    before = path.read_text()
    with run_lock(out / "runs" / "2L"):
        with pytest.raises(CircuitlabError, match="in use"):
            run_induction_experiment(TINY, out, workers=1, progress=False, corpus={"text": str(small_corpus_dir)})
    assert path.read_text() == before
    from circuitlab.experiments.induction.online import FAILED_NAME

    (out / "runs" / "2L" / FAILED_NAME).unlink(missing_ok=True)  # the fixture is shared
