"""Grokking: task data, the fast last-position step, the Fourier analyses on planted weights, the experiment."""

import json
import math

import pytest
import torch

from circuitlab.data.modular import modular_addition
from circuitlab.errors import CircuitlabError
from circuitlab.experiments.grokking import GrokkingResults, grokking_model
from circuitlab.grokking.fourier import (
    embedding_fourier_norms, fourier_basis, frequency_norms, key_frequencies_from_neurons, logit_fit,
    neuron_activations, neuron_frequency_fractions, sum_of_cosines_basis,
)
from circuitlab.grokking.measures import (
    cross_entropy, detect_phases, excluded_logits, frequency_ablation, gini, restricted_logits,
)
from circuitlab.model import ModelConfig, Transformer
from circuitlab.model.last_position import last_position_logits
from circuitlab.model.loss import modular_loss
from circuitlab.training import ModularAdditionTask, Run, train


def small_model(**kw) -> ModelConfig:
    return grokking_model(**kw).configs()[0]


def train_grokking(out, resume=False, **kw) -> Run:
    m, t = grokking_model(**kw).configs()
    return train(m, t, ModularAdditionTask(**grokking_model(**kw).task), out, resume=resume, progress=False)


def test_task_split_is_seeded_and_matches_the_paper():
    d = modular_addition(113, 0.3, seed=0)
    assert len(d.train) == 3830 and len(d.test) == 8939
    assert torch.equal(d.train, modular_addition(113, 0.3, seed=0).train)
    assert not torch.equal(d.train, modular_addition(113, 0.3, seed=1).train)
    assert set(d.train.tolist()).isdisjoint(d.test.tolist())
    a, b, eq = d.tokens[500]
    assert eq == 113 and d.labels[500] == (a + b) % 113
    with pytest.raises(CircuitlabError, match="prime"):
        modular_addition(100)


def test_fourier_basis_is_orthonormal():
    for p in (7, 113):
        F = fourier_basis(p)
        torch.testing.assert_close(F @ F.T, torch.eye(p), atol=1e-5, rtol=0)


def test_last_position_logits_equal_the_full_model_and_its_gradients():
    m = Transformer(small_model(p=13, d_model=16, n_heads=2, d_head=8, d_mlp=32))
    d = modular_addition(13, 0.5)
    x = d.tokens[d.train]
    torch.testing.assert_close(last_position_logits(m, x), m(x)[:, -1], rtol=1e-5, atol=1e-5)
    last_position_logits(m, x).square().sum().backward()
    fast = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m(x)[:, -1].square().sum().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)


def planted_fourier_model(p: int = 13, ks=(2, 5)) -> Transformer:
    """Embedding = cos/sin(w_k x) for the chosen k; uniform attention; each neuron linear in one feature (bias 10
    keeps the ReLU on), so every neuron is explained by exactly one planted frequency."""
    D = 2 * len(ks)
    m = Transformer(small_model(p=p, d_model=D, n_heads=1, d_head=D, d_mlp=D))
    x = torch.arange(p).double()
    with torch.no_grad():
        m.W_E.zero_(), m.W_pos.zero_()
        for i, k in enumerate(ks):
            m.W_E[:p, 2 * i] = torch.cos(2 * math.pi * k * x / p).float()
            m.W_E[:p, 2 * i + 1] = torch.sin(2 * math.pi * k * x / p).float()
        a = m.blocks[0].attn
        a.W_Q.zero_(), a.W_K.zero_()
        a.W_V[0] = torch.eye(D)
        a.W_O[0] = torch.eye(D)
        mlp = m.blocks[0].mlp
        mlp.W_in.copy_(torch.eye(D)), mlp.b_in.fill_(10.0)
    return m


def test_planted_frequencies_are_found():
    p, ks = 13, [2, 5]
    m = planted_fourier_model(p, ks)
    freq_norms = frequency_norms(embedding_fourier_norms(m, p))
    assert set((freq_norms > 1e-3).nonzero()[:, 0].add(1).tolist()) == set(ks)
    fractions = neuron_frequency_fractions(neuron_activations(m, p), p)
    assert key_frequencies_from_neurons(fractions) == ks
    counts = {k: int((fractions.argmax(1) == k - 1).sum()) for k in ks}  # neurons explained by each
    fewest = min(counts.values())
    assert key_frequencies_from_neurons(fractions, min_neurons=fewest) == ks  # "at least", not "more than"
    assert key_frequencies_from_neurons(fractions, min_neurons=fewest + 1) == [k for k in ks if counts[k] > fewest]
    assert torch.allclose(fractions.max(1).values, torch.ones(fractions.shape[0]), atol=1e-4)
    assert gini(freq_norms) > 0.6 and gini(torch.ones(6)) == pytest.approx(0.0)


def test_restricted_loss_of_a_sum_of_cosines_equals_the_full_loss():
    p, ks = 13, [3, 4]
    logits = sum(2.0 * sum_of_cosines_basis(p, k) for k in ks) + torch.randn(1, p)  # plus a per-c constant
    full = cross_entropy(logits, p)
    assert cross_entropy(restricted_logits(logits, p, ks), p) == pytest.approx(full, rel=1e-4)
    assert cross_entropy(excluded_logits(logits, p, ks), p) > full + 0.5  # removing them leaves only the constant
    alphas, fve = logit_fit(logits, p, ks)
    assert fve == pytest.approx(1.0, abs=1e-5) and alphas[3] == pytest.approx(2.0, rel=1e-4)
    _, fve_wrong = logit_fit(logits, p, [1])
    assert fve_wrong < 0.01


def test_frequency_ablation_on_the_planted_model():
    p, ks = 13, [2, 5]
    m = planted_fourier_model(p, ks)
    a = frequency_ablation(m, p, ks)
    assert a.only_key_frequencies == pytest.approx(a.full_loss, rel=1e-4)  # nothing else there to remove
    other = frequency_ablation(m, p, [1])  # removing an unused frequency changes nothing
    assert other.without_key_frequencies == pytest.approx(other.full_loss, rel=1e-4)


def test_detect_phases():
    def test_loss(e):  # rises while memorising, plateaus, falls from 600, generalised at 900
        return 5 + e / 20 if e <= 200 else 15.0 if e < 600 else max(0.01, 15 - (e - 600) / 20)
    rows = [{"epoch": e, "train_acc": min(1, e / 100), "test_acc": 0.0 if e < 900 else 1.0,
             "test_loss": test_loss(e) + (3.0 if e == 400 else 0.0)} for e in range(0, 1001, 10)]  # one spike
    ph = detect_phases(rows)
    assert (ph.train_fit, ph.grokked) == (100, 900)
    assert 200 <= ph.memorised <= 250 and 580 <= ph.cleanup <= 640


def test_grokking_training_resumes_exactly(tmp_path):
    """Full-batch modular addition through the one training loop: interrupted at epoch 20 and resumed, it ends
    bitwise equal to the uninterrupted run, with the same metrics rows."""
    cfg = dict(p=13, frac=0.5, d_model=16, n_heads=2, d_head=8, d_mlp=32, epochs=40, checkpoint_every=20,
               log_every=10)
    a = train_grokking(tmp_path / "a", **cfg)
    train_grokking(tmp_path / "b", **{**cfg, "epochs": 20})
    b = train_grokking(tmp_path / "b", resume=True, **cfg)
    assert b.checkpoints == a.checkpoints == [0, 20, 40]
    for (n, x), (_, y) in zip(a.model().state_dict().items(), b.model().state_dict().items()):
        assert torch.equal(x, y), n
    assert [r["epoch"] for r in b.metrics] == [0, 10, 20, 30, 40]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in rows]  # noqa: E731
    assert strip(a.metrics) == strip(b.metrics)
    assert b.task == {"kind": "modular_addition", "p": 13, "frac": 0.5, "seed": 0}
    with pytest.raises(CircuitlabError, match="already holds"):
        train_grokking(tmp_path / "a", **cfg)
    with pytest.raises(CircuitlabError, match="different settings.*--lr was 0.001, now 0.01"):
        train_grokking(tmp_path / "a", resume=True, **{**cfg, "lr": 0.01})


def test_grokking_experiment_cli(tmp_path):
    from typer.testing import CliRunner

    from circuitlab.cli import app

    out = tmp_path / "g"
    args = ["experiment", "grokking", "--out", str(out), "--p", "17", "--frac", "0.5", "--epochs", "300",
            "--d-model", "32", "--n-heads", "2", "--d-head", "16", "--d-mlp", "64", "--checkpoint-every", "50",
            "--lr", "0.01"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["p"] == 17 and res["settings"]["task"]["p"] == 17 and res["final_epoch"] == 300
    assert len(res["progress_measures"]) == 7 and {"restricted_loss", "gini_W_E"} <= set(res["progress_measures"][0])
    assert {c["verdict"] for c in res["claims"]} <= {"reproduced", "not reproduced", "differs"}
    assert len(res["fourier_norms"]["W_E"]) == 17 and "Claims" in r.output
    assert GrokkingResults.load(out / "results.json").to_json() == res  # reads back into the typed result
    assert CliRunner().invoke(app, args).exit_code == 0  # a finished run is reused, not retrained
    r = CliRunner().invoke(app, ["experiment", "grokking", "--out", str(tmp_path / "h"), "--p", "15"])
    assert r.exit_code == 2 and "prime" in r.output


def _rows(test_loss, fit_epoch=100, grok_epoch=900, last=1000):
    return [{"epoch": e, "train_acc": 1.0 if e >= fit_epoch else 0.5, "test_acc": 1.0 if e >= grok_epoch else 0.0,
             "test_loss": test_loss(e)} for e in range(10, last + 1, 10)]


def test_phases_need_a_plateau_then_a_collapse():
    plateau = detect_phases(_rows(lambda e: 5 + e / 100 if e <= 200 else 7.0 if e < 700 else max(0.01, 7 - (e - 700) / 30)))
    assert plateau.found and plateau.formation_fall < 0.1 and plateau.cleanup_fall > 0.9
    steady = detect_phases(_rows(lambda e: max(0.01, 7 - e / 130)))  # falls steadily from the start
    assert steady.found and 0.4 < steady.formation_fall < 0.6  # ordered boundaries, but no plateau


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """20 epochs of the paper's optimiser on p = 13: a model that has learned nothing."""
    from circuitlab.experiments.grokking import grokking_preset, run_grokking_experiment

    return run_grokking_experiment(grokking_preset("paper", p=13, frac=0.5, d_model=16, n_heads=2, d_head=8, d_mlp=32,
                                                   epochs=20, checkpoint_every=10),
                                   tmp_path_factory.mktemp("untrained") / "g", progress=False)


def test_untrained_model_reproduces_no_grokking_claim(untrained):
    """Negative control: every claim must say 'not reproduced' (the ablation claims included: there are no key
    frequencies to ablate)."""
    r = untrained
    assert r.phases.grokked is None
    assert {c.claim: c.verdict for c in r.claims} == {c.claim: "not reproduced" for c in r.claims}
    assert len(r.claims) == 12  # every claim is stated, whatever the run did


def test_three_phase_claim_fails_on_a_steadily_falling_test_loss(untrained):
    """The same results with a plateau-then-collapse test loss, or a steadily falling one: only the first gives
    'reproduced' for the three phases."""
    from dataclasses import replace

    from circuitlab.experiments.grokking import grokking_claims

    r = untrained
    plateau = detect_phases(_rows(lambda e: 5 + e / 100 if e <= 200 else 7.0 if e < 700 else max(0.01, 7 - (e - 700) / 30)))
    steady = detect_phases(_rows(lambda e: max(0.01, 7 - e / 130)))
    three = lambda ph: next(c.verdict for c in grokking_claims(replace(r, phases=ph)) if "Three phases" in c.claim)  # noqa: E731
    assert three(plateau) == "reproduced" and three(steady) == "not reproduced"


def test_every_grokking_claim_reproduced_on_results_with_the_effects(untrained):
    """Positive control for the claim logic: results that have every effect of the paper (a model fitted at 300
    epochs that groks at 9,000 after a plateau, five key frequencies explaining the neurons and logits, progress
    measures moving as in the paper, ablations that destroy and keep performance) give 'reproduced' everywhere; the
    same results with the ablations reversed and the excluded loss falling do not."""
    from dataclasses import replace

    from circuitlab.experiments.grokking import grokking_claims
    from circuitlab.experiments.grokking.claims import PAPER_KEY_FREQUENCIES
    from circuitlab.experiments.grokking.results import LogitFit
    from circuitlab.grokking import FrequencyAblation, ProgressMeasures

    base = untrained
    rows = _rows(lambda e: 5 + e / 100 if e <= 1000 else 15.0 if e < 7000 else max(0.01, 15 - (e - 7000) / 130),
                 fit_epoch=300, grok_epoch=9000, last=12000)
    phases = detect_phases(rows)

    def measure(e):  # restricted loss falls first, excluded loss rises, weight norm falls, Gini rises
        s = min(1.0, max(0.0, (e - 1000) / 8000))
        return ProgressMeasures(epoch=e, train_loss=1e-6, test_loss=rows[min(len(rows) - 1, e // 10)]["test_loss"],
                                restricted_loss=5 - 4.9 * s, excluded_loss=0.1 + 5 * s, gini_W_E=0.2 + 0.6 * s,
                                gini_W_L=0.2 + 0.5 * s, weight_norm=3000 - 2000 * s)
    good = replace(base, phases=phases, key_frequencies=list(PAPER_KEY_FREQUENCIES),
                   neuron_clusters={k: 50 for k in PAPER_KEY_FREQUENCIES}, share_of_neurons_explained_by_one_frequency=0.85,
                   logit_fit=LogitFit({k: 1.0 for k in PAPER_KEY_FREQUENCIES}, 0.95),
                   progress_measures=[measure(e) for e in range(0, 12001, 500)],
                   ablation=FrequencyAblation(PAPER_KEY_FREQUENCIES, 1e-3, 5.3, 5e-4, 4.73))
    good = replace(good, curves=replace(good.curves, test_acc=[r["test_acc"] for r in rows]))
    assert [c.verdict for c in grokking_claims(good)] == ["reproduced"] * 12
    reversed_ = replace(good, ablation=FrequencyAblation(PAPER_KEY_FREQUENCIES, 1e-3, 0.5, 2.0, 4.73),
                        progress_measures=[replace(m, excluded_loss=5 - m.excluded_loss) for m in good.progress_measures])
    verdicts = {c.claim: c.verdict for c in grokking_claims(reversed_)}
    assert verdicts["Removing the key frequencies from the neurons destroys performance"] == "not reproduced"
    assert verdicts["Keeping only the key frequencies keeps (or improves) performance"] == "not reproduced"
    assert verdicts["Excluded loss rises during circuit formation"] == "not reproduced"


def test_the_paper_preset_trains_the_same_twice(tmp_path):
    """Two runs of the same grokking training in one process give bitwise equal weights. (Without deterministic
    kernels the multi-threaded backward of the step's gathers drifted: three 40-epoch runs gave three different
    models on a 2-core machine.)"""
    g = grokking_model(epochs=30, checkpoint_every=30, log_every=30)
    m, t = g.configs()
    a, b = (train(m, t, ModularAdditionTask(**g.task), tmp_path / n, progress=False).model() for n in "ab")
    for (n, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), n
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is restored


def test_an_evaluation_lends_its_training_forward_to_the_next_step_and_changes_no_number(tmp_path, monkeypatch):
    """`ModularAdditionTask.evaluate` keeps its training-set loss, graph and all, for the next step's `loss`: the
    run's weights and metrics are the same to the bit as when every step computes its own forward, with one forward
    fewer per evaluation. A parameter changed in place after the evaluation (its version counter) means the loss
    is computed again, from the changed weights."""
    import circuitlab.training.tasks as tasks

    g = grokking_model(p=13, d_model=16, d_mlp=32, n_heads=2, d_head=8, epochs=30, checkpoint_every=30, log_every=5)
    m, t = g.configs()
    calls = []
    real_forward = tasks.last_position_logits
    monkeypatch.setattr(tasks, "last_position_logits", lambda model, x: calls.append(len(x)) or real_forward(model, x))
    kept = train(m, t, ModularAdditionTask(**g.task), tmp_path / "kept", progress=False)
    n_kept = len(calls)
    real_loss = ModularAdditionTask.loss

    def own_forward(self, model, batch):
        self._kept = None
        return real_loss(self, model, batch)

    monkeypatch.setattr(ModularAdditionTask, "loss", own_forward)
    calls.clear()
    own = train(m, t, ModularAdditionTask(**g.task), tmp_path / "own", progress=False)
    # 30 steps and 7 evaluations (epochs 0, 5, ..., 30) of two forwards each; 6 of the steps take an evaluation's
    assert (len(calls), n_kept) == (30 + 2 * 7, 30 - 6 + 2 * 7)
    untimed = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # noqa: E731
    assert untimed(kept.metrics) == untimed(own.metrics)
    for (name, x), y in zip(kept.model().state_dict().items(), own.model().state_dict().values()):
        assert torch.equal(x, y), name

    monkeypatch.setattr(ModularAdditionTask, "loss", real_loss)
    task, net = ModularAdditionTask(**g.task), own.model()
    task.prepare(m, t, torch.device("cpu"))
    task.evaluate(net, 0)
    with torch.no_grad():
        net.W_U.mul_(2.0)
    changed = task.loss(net, task.batch(0))
    expected = modular_loss(last_position_logits(net, task.x_train), task.y_train, 13)
    assert torch.equal(changed, expected) and changed.requires_grad
    task.evaluate(net, 0)
    lent = task._kept[3]
    assert task.loss(net, task.batch(0)) is lent and task._kept is None  # taken once, then let go
    assert task.loss(net, task.batch(0)) is not lent
    task.evaluate(net, 0)
    lent = task._kept[3]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a step under autocast computes its own, in bf16
        assert task.loss(net, task.batch(0)) is not lent
    assert task._kept is None


def test_the_thread_count_check_tells_whether_a_switch_mid_run_changes_the_results(tmp_path):
    """`reproduce` trains the grokking model on one thread beside the other stages, then on every core, switching
    whenever they finish (`ThreadsFromFile`), but only where `thread_invariant` says this machine's kernels round
    alike on 1 and 2 threads. The paper's preset trained on 1 thread, on 2, and switched from 1 to 2 at epoch 20: the
    same weights and metrics, to the bit, exactly when the check says so (on this machine either way)."""
    from circuitlab.experiments.grokking import grokking_preset
    from circuitlab.experiments.grokking.run import thread_invariant
    from circuitlab.training.threads import ThreadsFromFile

    if torch.get_num_threads() < 2:
        pytest.skip("needs two torch threads")
    g = grokking_model(epochs=40, checkpoint_every=40, log_every=10)
    m, t = g.configs()
    saved = torch.get_num_threads()
    runs = {}
    try:
        for name, start, switch in (("one", 1, None), ("two", 2, None), ("switched", 1, 2)):
            f = tmp_path / f"{name}.threads"
            f.write_text(f"{start}\n")

            def cb(ctx, follow=ThreadsFromFile(f), f=f, switch=switch):
                follow(ctx)
                if switch and ctx.step == 20:
                    f.write_text(f"{switch}\n")  # read at the next evaluation: epochs 31-40 on 2 threads
                return {"threads": torch.get_num_threads()}

            torch.set_num_threads(start)
            runs[name] = train(m, t, ModularAdditionTask(**g.task), tmp_path / name, progress=False, callbacks=[cb])
    finally:
        torch.set_num_threads(saved)
    assert [r["threads"] for r in runs["switched"].metrics] == [1, 1, 1, 2, 2]
    assert (tmp_path / "switched.threads.started").exists()
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu", "threads")}  # noqa: E731
                          for r in rows]
    same = all(torch.equal(x, y) and strip(runs[o].metrics) == strip(runs["one"].metrics)
               for o in ("two", "switched")
               for x, y in zip(runs["one"].model().state_dict().values(), runs[o].model().state_dict().values()))
    assert thread_invariant(grokking_preset("paper"), 2) == same
    assert torch.get_num_threads() == saved


def test_the_thread_count_check_fails_where_the_step_depends_on_the_count(monkeypatch):
    """Negative control of `thread_invariant`: a step whose loss depends on the thread count is caught."""
    from circuitlab.experiments.grokking import grokking_preset
    from circuitlab.experiments.grokking.run import thread_invariant

    tiny = grokking_preset("tiny", p=13, d_model=16, d_mlp=32, n_heads=2, d_head=8)
    assert thread_invariant(tiny, 2)
    real = ModularAdditionTask.loss
    monkeypatch.setattr(ModularAdditionTask, "loss",
                        lambda self, model, batch: real(self, model, batch) * (1 + 1e-3 * torch.get_num_threads()))
    assert not thread_invariant(tiny, 2)


def test_the_analysis_runs_on_the_thread_count_the_file_says_once_training_ends(tmp_path, monkeypatch):
    """The process of its own starts on one thread and is given every core mid-run through its threads file; `train`
    gives back the count it was called with when it returns, so the analysis reads the file again (`before_analysis`):
    it runs on 2 threads, and on 1 without the hook. A file caught half written keeps the count and is read again."""
    import circuitlab.experiments.grokking.run as grok_run
    from circuitlab.experiments.grokking import grokking_preset
    from circuitlab.training.threads import ThreadsFromFile

    seen = []
    real = grok_run.analyze_grokking
    monkeypatch.setattr(grok_run, "analyze_grokking", lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1])
    tiny = dict(p=13, epochs=30, checkpoint_every=10, log_every=10, d_model=16, d_mlp=32, n_heads=2, d_head=8)
    saved = torch.get_num_threads()
    try:
        for hook in (True, False):
            f = tmp_path / f"threads-{hook}"
            f.write_text("1\n")
            follow = ThreadsFromFile(f)

            def cb(ctx, f=f, follow=follow):
                if ctx.step == 10:
                    f.write_text("2\n")  # the other stages are done
                return follow(ctx)

            torch.set_num_threads(1)
            grok_run.run_grokking_experiment(grokking_preset("tiny", **tiny), tmp_path / f"g-{hook}", progress=False,
                                             callbacks=(cb,), before_analysis=follow.apply if hook else None)
        assert seen == [2, 1]
        f = tmp_path / "half"
        follow = ThreadsFromFile(f)
        assert not follow.apply()  # no file yet
        f.write_text("")  # caught half written
        torch.set_num_threads(1)
        follow(type("Ctx", (), {"step": 0})())
        assert torch.get_num_threads() == 1 and follow.seen is None
        f.write_text("2\n")
        follow(type("Ctx", (), {"step": 10})())
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


def test_grokking_in_its_own_process_fails_in_one_line(tmp_path):
    """The background grokking stage of `reproduce`: a run that cannot start (here OUT/run is a file) ends its process
    with the error, and waiting for it raises that error as one line, naming the process's output."""
    from circuitlab.experiments.background import BackgroundGrokking
    from circuitlab.experiments.grokking import grokking_preset

    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "run").write_text("not a folder")
    bg = BackgroundGrokking(grokking_preset("tiny", p=13, epochs=20, checkpoint_every=10, log_every=10, d_model=16,
                                            d_mlp=32, n_heads=2, d_head=8), tmp_path / "g")
    bg.wait_started()
    with pytest.raises(CircuitlabError, match=r"failed in its own process \(exit status 2\): --out .*run is a file") as e:
        bg.wait(progress=False)
    assert "\n" not in str(e.value) and "background.log" in str(e.value)
    assert (tmp_path / "g" / "run").read_text() == "not a folder"  # nothing lost


def _tiny_grokking_cli(out, *flags: str) -> list[str]:
    """`circuitlab experiment grokking` on a p-13 model of 20 epochs with `flags`, run to success; its arguments."""
    from typer.testing import CliRunner

    from circuitlab.cli import app

    args = ["experiment", "grokking", "--out", str(out), "--p", "13", "--frac", "0.5", "--epochs", "20",
            "--d-model", "16", "--n-heads", "2", "--d-head", "8", "--d-mlp", "32", "--checkpoint-every", "10", *flags]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    return args


def test_grokking_over_two_seeds_reports_k_of_n(tmp_path):
    from typer.testing import CliRunner

    from circuitlab.cli import app
    from circuitlab.experiments.seeds import SeedResults

    out = tmp_path / "g"
    args = _tiny_grokking_cli(out, "--seeds", "2")
    s = SeedResults.load(out / "seeds.json")
    assert s.seeds == [0, 1] and (out / "results.json").exists() and (out / "seeds" / "1" / "results.json").exists()
    one = json.loads((out / "seeds" / "1" / "run" / "run.json").read_text())
    assert one["task"]["seed"] == 1 and one["model"]["seed"] == 1 and one["train"]["seed"] == 1
    assert len(s.claims) == 12 and all(c.seeds == 2 and len(c.verdicts) == 2 for c in s.claims)
    assert CliRunner().invoke(app, [*args[:-1], "0"]).exit_code == 2


def test_grokking_float_noise_check_trains_a_perturbed_run_and_reports_each_verdict_over_both(tmp_path):
    """`--float-noise 1`: run 1 trains from the initial weights moved one ulp (its run.json says so) and ends on
    other weights; each claim carries both runs' verdicts, 'unstable' where they differ."""
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from circuitlab.cli import app
    from circuitlab.experiments.noise import NoiseResults

    out = tmp_path / "g"
    args = _tiny_grokking_cli(out, "--float-noise", "1")
    s = NoiseResults.load(out / "float-noise.json")
    assert s.runs == [0, 1] and len(s.claims) == 12 and all(len(c.verdicts) == 2 for c in s.claims)
    assert all(c.verdict == c.verdicts[0] if len(set(c.verdicts)) == 1 else c.verdict.startswith("unstable")
               for c in s.claims)
    runs = [out / "run", out / "float-noise" / "1" / "run"]
    assert [json.loads((d / "run.json").read_text())["model"]["init_noise"] for d in runs] == [0, 1]
    ends = [load_file(d / "checkpoints" / "step-000000020.safetensors") for d in runs]
    assert ends[0].keys() == ends[1].keys() and not all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])
    assert CliRunner().invoke(app, [*args[:-1], "-1"]).exit_code == 2


def test_modular_loss_gradient_reaches_float32_logits_without_subnormals(monkeypatch):
    """Rows memorised with a margin of ~92 nats give the wrong answers probabilities below float32's smallest normal
    number: the float64 loss's gradient, cast to float32, is then subnormal there (slow on Intel CPUs). modular_loss
    sends those entries back as zeros and every other entry exactly as the plain cast does."""
    import torch.nn.functional as F

    from circuitlab.model import loss as loss_module

    tiny = torch.finfo(torch.float32).tiny
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 8, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    logits[:3] = -92.0
    logits[torch.arange(3), labels[:3]] = 0.0  # three memorised rows
    subnormal = lambda t: (t != 0) & (t.abs() < tiny)  # noqa: E731

    x = logits.clone().requires_grad_()
    plain = F.cross_entropy(x[:, :7].double(), labels)
    plain.backward()
    reference = x.grad
    assert subnormal(reference).any()  # the case exists: the plain float32 gradient holds subnormal entries

    y = logits.clone().requires_grad_()
    ours = modular_loss(y, labels, 7)
    ours.backward()
    assert ours.item() == plain.item()
    assert not subnormal(y.grad).any()
    assert torch.equal(y.grad[subnormal(reference)], torch.zeros(int(subnormal(reference).sum())))
    assert torch.equal(y.grad[~subnormal(reference)], reference[~subnormal(reference)])  # the rest to the bit

    monkeypatch.setattr(loss_module, "FLUSH_SUBNORMAL_GRAD", False)  # the benchmark's switch: the plain cast
    z = logits.clone().requires_grad_()
    modular_loss(z, labels, 7).backward()
    assert torch.equal(z.grad, reference)
