import hashlib
import json
from dataclasses import replace
import time

import pytest
import torch

import circuitlab
from circuitlab.data import prepare_tokens, text_corpus
from circuitlab.data.tokens import BOS_ID
from circuitlab.errors import CircuitlabError
from circuitlab.model import ModelConfig
from circuitlab.training import TrainConfig, train
from circuitlab.training.checkpoints import checkpoint_path, load_checkpoint
from circuitlab.training.tasks import batch_at


def tcfg(**kw) -> TrainConfig:
    base = dict(batch_size=4, lr=3e-3, warmup_steps=5, max_steps=24, eval_every=8, eval_windows=8,
                checkpoint_every=8, log_checkpoints=6)
    return TrainConfig(**(base | kw))


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_schedule_warms_up_then_decays():
    c = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, max_steps=110)
    assert c.lr_at(0, 110) == pytest.approx(0.1) and c.lr_at(9, 110) == pytest.approx(1.0)
    assert c.lr_at(10, 110) == pytest.approx(1.0) and c.lr_at(110, 110) == pytest.approx(0.1)
    assert c.lr_at(60, 110) == pytest.approx(0.55)
    assert replace(c, schedule="constant").lr_at(100, 110) == 1.0


def test_checkpoints_are_dense_early():
    steps = TrainConfig(checkpoint_every=1000, log_checkpoints=20).checkpoint_steps(5000)
    assert steps[:4] == [0, 1, 2, 4] and steps[-1] == 5000 and {1000, 2000, 3000, 4000} <= set(steps)
    early = [s for s in steps if s <= 100]
    assert len(early) >= 10, "log spacing puts many checkpoints in the first 2% of training"


def test_batches_are_a_function_of_seed_and_step(tiny_data):
    c = tcfg()
    a, b = batch_at(tiny_data, c, 32, 7), batch_at(tiny_data, c, 32, 7)
    assert torch.equal(a, b) and not torch.equal(a, batch_at(tiny_data, c, 32, 8))
    assert a.shape == (4, 32) and torch.all(a[:, 0] == BOS_ID)


def test_training_learns_and_logs(tiny_data, tiny_cfg, tmp_path):
    seen = []
    run = train(tiny_cfg, tcfg(max_steps=60, lr=1e-2), tiny_data, tmp_path / "run", progress=False,
                callbacks=[lambda ctx: seen.append(ctx.step) or {"my_metric": ctx.step * 2}])
    rows = run.metrics
    assert [r["step"] for r in rows] == [0, 8, 16, 24, 32, 40, 48, 56, 60] == seen
    assert all(r["my_metric"] == 2 * r["step"] for r in rows)
    assert rows[-1]["heldout_loss"] < rows[0]["heldout_loss"] - 0.5, "the model must learn something"
    for key in ("tokens", "train_loss", "lr", "tokens_per_s", "mfu"):
        assert key in rows[-1]
    assert rows[-1]["tokens"] == 60 * 4 * 32
    assert run.checkpoints[0] == 0 and run.checkpoints[-1] == 60
    assert (tmp_path / "run" / "optimizer.safetensors").exists()
    assert (tmp_path / "run" / "tokenizer.json").exists()


def test_resume_reproduces_the_uninterrupted_trajectory_exactly(tiny_data, tiny_cfg, tmp_path):
    cfg = replace(tiny_cfg, smeared_keys=True)  # every parameter kind, smear alpha included
    straight = train(cfg, tcfg(), tiny_data, tmp_path / "straight", progress=False)
    train(cfg, tcfg(), tiny_data, tmp_path / "halves", progress=False, stop_at=12)
    halves = train(cfg, tcfg(), tiny_data, tmp_path / "halves", resume=True, progress=False)
    a, b = straight.model(), halves.model()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), f"{name} differs after resume"
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in rows]  # noqa: E731
    assert strip(straight.metrics) == strip(halves.metrics)


def test_load_run_gives_config_tokenizer_metrics_and_models(tiny_data, tiny_cfg, tmp_path):
    train(tiny_cfg, tcfg(max_steps=10), tiny_data, tmp_path / "r", progress=False)
    run = circuitlab.load_run(tmp_path / "r")
    assert run.config == tiny_cfg
    assert run.tokenizer.get_vocab_size() == 320
    assert run.metrics[-1]["step"] == 10
    m0, latest = run.model(0), run.model()
    assert not torch.equal(m0.W_E, latest.W_E)
    with pytest.raises(CircuitlabError, match="no checkpoint at step 7"):
        run.model(7)
    with pytest.raises(CircuitlabError, match="not a circuitlab run"):
        circuitlab.load_run(tmp_path)


def test_divergence_stops_and_keeps_last_good_checkpoint(tiny_data, tiny_cfg, tmp_path):
    out = tmp_path / "r"
    absurd = tcfg(max_steps=16, lr=1e30, warmup_steps=1)
    train(tiny_cfg, absurd, tiny_data, out, progress=False, stop_at=1)  # one update: still finite
    before = {p.name: digest(p) for p in (out / "checkpoints").iterdir()}
    assert set(before) == {"step-000000000.safetensors", "step-000000001.safetensors"}

    # An absurd learning rate: weights overflow within a few steps and the loss stops being finite.
    diverged = r"training diverged at step \d+: (loss (nan|inf)|the update made the weights non-finite).*last good " \
               r"checkpoint \(step \d+\).*--weight-decay"
    with pytest.raises(CircuitlabError, match=diverged):
        train(tiny_cfg, absurd, tiny_data, out, resume=True, progress=False)
    after = {p.name: digest(p) for p in (out / "checkpoints").iterdir()}
    assert {k: after[k] for k in before} == before, "checkpoints written before the divergence are untouched"
    run = circuitlab.load_run(out)
    for step in run.checkpoints:
        assert all(torch.isfinite(p).all() for p in run.model(step).parameters()), f"non-finite checkpoint {step}"

    # The update itself overflows while the loss before it was finite (an absurd weight decay or learning rate):
    # the first update's checkpoint would have been all inf; now the last good one is the initialisation's.
    for i, cfg in enumerate((tcfg(max_steps=16, lr=1e-3, weight_decay=1e300), tcfg(max_steps=16, lr=1e38))):
        with pytest.raises(CircuitlabError, match=diverged):
            train(tiny_cfg, cfg, tiny_data, tmp_path / f"overflow{i}", progress=False)
        run = circuitlab.load_run(tmp_path / f"overflow{i}")
        for step in run.checkpoints:
            assert all(torch.isfinite(p).all() for p in run.model(step).parameters()), (cfg, step)


def test_existing_run_is_not_overwritten(tiny_data, tiny_cfg, tmp_path):
    out = tmp_path / "r"
    train(tiny_cfg, tcfg(max_steps=4), tiny_data, out, progress=False)
    before = {p.name: digest(p) for p in out.rglob("*") if p.is_file()}
    with pytest.raises(CircuitlabError, match="already holds a run"):
        train(tiny_cfg, tcfg(max_steps=4), tiny_data, out, progress=False)
    with pytest.raises(CircuitlabError, match="different settings.*--d-model was 32, now 64"):
        train(replace(tiny_cfg, d_model=64), tcfg(max_steps=8), tiny_data, out, resume=True, progress=False)
    (tmp_path / "other").mkdir()
    for i in range(3):
        (tmp_path / "other" / f"{i}.txt").write_text(" ".join(f"word{j * i}" for j in range(3000)))
    other = prepare_tokens(text_corpus(str(tmp_path / "other")), 320, cache=tmp_path / "c")
    with pytest.raises(CircuitlabError, match="corpus or tokenizer changed"):
        train(tiny_cfg, tcfg(max_steps=8), other, out, resume=True, progress=False)
    assert {p.name: digest(p) for p in out.rglob("*") if p.is_file()} == before


def test_corrupt_truncated_and_mismatched_checkpoints(tiny_data, tiny_cfg, tmp_path):
    out = tmp_path / "r"
    train(tiny_cfg, tcfg(max_steps=4), tiny_data, out, progress=False)
    path = checkpoint_path(out, 4)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CircuitlabError, match="corrupt or truncated"):
        circuitlab.load_run(out).model(4)
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(CircuitlabError, match="corrupt or truncated"):
        circuitlab.load_run(out).model(4)
    with pytest.raises(CircuitlabError, match=r"does not match the run's model config \(d_model"):
        load_checkpoint(checkpoint_path(out, 0), replace(tiny_cfg, d_model=64))


def test_context_longer_than_data_and_vocab_mismatch(tiny_data, tiny_cfg, tmp_path):
    with pytest.raises(CircuitlabError, match="fewer than the context"):
        train(replace(tiny_cfg, n_ctx=10**7), tcfg(), tiny_data, tmp_path / "a", progress=False)
    with pytest.raises(CircuitlabError, match="d_vocab"):
        train(replace(tiny_cfg, d_vocab=999), tcfg(), tiny_data, tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_run_json_records_everything_needed_to_reload(tiny_data, tiny_cfg, tmp_path):
    train(tiny_cfg, tcfg(max_steps=2), tiny_data, tmp_path / "r", progress=False)
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert ModelConfig.from_dict(meta["model"]) == tiny_cfg
    assert meta["train"]["max_steps"] == 2 and meta["data"]["train_tokens"] == tiny_data.info["train_tokens"]


def test_every_task_resumes_exactly(tmp_path):
    """The one loop resumes the synthetic sequence task and modular addition as exactly as the language model: the
    batches are a pure function of (seed, step), so weights and metrics rows equal an uninterrupted run."""
    from circuitlab.data.synthetic import translation_task
    from circuitlab.training import ModularAdditionTask, SequenceTaskTraining

    seq = translation_task(n_words=8, length=4, n_fillers=2, max_gap=2)
    cases = [
        (ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, n_ctx=seq.n_ctx, d_vocab=seq.d_vocab),
         lambda: SequenceTaskTraining(seq, heldout=16)),
        (ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=3, d_vocab=14, d_mlp=16,
                     positional_embedding_type="standard", init="nanda"),
         lambda: ModularAdditionTask(13, 0.5, 0)),
    ]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in rows]  # noqa: E731
    for i, (m, make_task) in enumerate(cases):
        c = tcfg(max_steps=20, eval_every=5, checkpoint_every=5, log_checkpoints=0)
        straight = train(m, c, make_task(), tmp_path / f"s{i}", progress=False)
        train(m, c, make_task(), tmp_path / f"h{i}", progress=False, stop_at=10)
        halves = train(m, c, make_task(), tmp_path / f"h{i}", resume=True, progress=False)
        for (name, p), q in zip(straight.model().named_parameters(), halves.model().parameters()):
            assert torch.equal(p, q), f"task {i}: {name} differs after resume"
        assert strip(straight.metrics) == strip(halves.metrics) and len(straight.metrics) == 5
        assert halves.task == make_task().spec()
    # another task in the same run directory is refused
    with pytest.raises(CircuitlabError, match="task differs"):
        train(cases[1][0], tcfg(max_steps=20, eval_every=5, checkpoint_every=5, log_checkpoints=0),
              ModularAdditionTask(13, 0.4, 0), tmp_path / "s1", resume=True, progress=False)


def test_damaged_or_missing_optimizer_state_is_refused_before_anything_changes(tiny_data, tiny_cfg, tmp_path):
    """A crafted optimizer.safetensors with tensors of the wrong shape or dtype (which the fused AdamW kernel would
    read and write out of bounds) and a missing one (which used to restart from step 0 and empty metrics.jsonl) are
    one clear error each; every file of the run is left as it was."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "r"
    train(tiny_cfg, tcfg(max_steps=8), tiny_data, out, progress=False)
    opt = out / "optimizer.safetensors"
    good = opt.read_bytes()
    before = {p.name: digest(p) for p in out.rglob("*") if p.is_file() and p != opt}
    state = load_file(str(opt))
    name = next(k for k in state if k.endswith("::exp_avg"))
    step_key = name.replace("::exp_avg", "::step")
    without = {k: v for k, v in state.items() if k != name.replace("::exp_avg", "::exp_avg_sq")}
    crafted = [({**state, name: torch.zeros(1)}, "{}"), ({**state, name: torch.zeros(3, 3)}, "{}"),
               ({**state, name: state[name].double()}, "{}"),
               ({**state, name: torch.full_like(state[name], float("nan"))}, "{}"),
               (without, "{}"),  # a field AdamW needs is missing: it used to fail inside AdamW's step
               ({**state, step_key: torch.tensor(-5.0)}, "{}"),  # a negative step count: NaN weights
               (state, "{not json"), (state, "[1]"), (state, '{"recent_train_losses": ["x"]}')]  # the loop's state
    for bad, extra in crafted:
        save_file(bad, str(opt), metadata={"step": "8", "extra": extra})
        with pytest.raises(CircuitlabError, match="does not fit the model"):
            train(tiny_cfg, tcfg(max_steps=16), tiny_data, out, resume=True, progress=False)
    # flipped bytes under a digest: named as damaged, and the remedy is never to delete the file (resume needs it)
    flipped = bytearray(good)
    flipped[-3] ^= 0xFF
    opt.write_bytes(bytes(flipped))
    with pytest.raises(CircuitlabError, match="damaged") as err:
        train(tiny_cfg, tcfg(max_steps=16), tiny_data, out, resume=True, progress=False)
    assert "delete" not in str(err.value) and "restore it" in str(err.value)
    opt.unlink()
    with pytest.raises(CircuitlabError, match="no optimizer.safetensors"):
        train(tiny_cfg, tcfg(max_steps=16), tiny_data, out, resume=True, progress=False)
    assert {p.name: digest(p) for p in out.rglob("*") if p.is_file()} == before
    opt.write_bytes(good)
    assert train(tiny_cfg, tcfg(max_steps=16), tiny_data, out, resume=True, progress=False).checkpoints[-1] == 16


def test_a_run_directory_has_one_writer_at_a_time(tiny_data, tiny_cfg, tmp_path):
    """While one process holds a run's lock (here: the lock taken directly), training into it is refused with a line
    naming the holder, and nothing in it changes; the lock goes with its holder, so the same command then works."""
    from circuitlab.training.lock import run_lock

    out = tmp_path / "r"
    train(tiny_cfg, tcfg(max_steps=4), tiny_data, out, progress=False)
    before = {p.name: digest(p) for p in out.rglob("*") if p.is_file()}
    with run_lock(out):
        with pytest.raises(CircuitlabError, match=r"in use by another circuitlab process \(pid \d+ on .*since"):
            train(tiny_cfg, tcfg(max_steps=8), tiny_data, out, resume=True, progress=False)
        assert {p.name: digest(p) for p in out.rglob("*") if p.is_file()} == before
    assert train(tiny_cfg, tcfg(max_steps=8), tiny_data, out, resume=True, progress=False).checkpoints[-1] == 8


def test_a_callback_can_stop_a_run_which_then_counts_as_finished(tiny_data, tiny_cfg, tmp_path):
    from circuitlab.training.run import finished_run

    def stop_at_16(ctx):
        if ctx.step == 16:
            ctx.stop = "enough"

    c = tcfg(max_steps=40, checkpoint_every=100, log_checkpoints=0)  # 16 is not a checkpoint step: saved anyway
    run = train(tiny_cfg, c, tiny_data, tmp_path / "r", progress=False, callbacks=[stop_at_16])
    assert run.checkpoints == [0, 16] and run.stopped == {"step": 16, "tokens": 16 * 4 * 32, "reason": "enough"}
    assert run.finished and finished_run(tmp_path / "r", tiny_cfg, c) is not None
    assert [r["step"] for r in run.metrics] == [0, 8, 16]
    from typer.testing import CliRunner

    from circuitlab.cli import app

    shown = CliRunner().invoke(app, ["info", str(tmp_path / "r")])
    assert shown.exit_code == 0 and "stopped early" in shown.output and "enough" in shown.output
    # a resume that is refused (here: a damaged optimizer state) leaves the stop on record
    opt = tmp_path / "r" / "optimizer.safetensors"
    good = opt.read_bytes()
    opt.write_bytes(good[: len(good) // 2])
    with pytest.raises(CircuitlabError, match="corrupt or truncated"):
        train(tiny_cfg, c, tiny_data, tmp_path / "r", resume=True, progress=False)
    assert circuitlab.load_run(tmp_path / "r").stopped["reason"] == "enough"
    opt.write_bytes(good)
    # resuming continues past the stop, to the budget, exactly as a run that never stopped
    straight = train(tiny_cfg, c, tiny_data, tmp_path / "straight", progress=False)
    resumed = train(tiny_cfg, c, tiny_data, tmp_path / "r", resume=True, progress=False)
    assert resumed.stopped is None and resumed.checkpoints[-1] == 40
    assert all(torch.equal(p, q) for p, q in zip(straight.model().parameters(), resumed.model().parameters()))
    (tmp_path / "r" / "stopped.json").write_text("{not json")
    with pytest.raises(CircuitlabError, match="stopped.json is damaged"):
        _ = circuitlab.load_run(tmp_path / "r").stopped


def test_checkpoint_digest_refuses_changed_bytes_and_old_checkpoints_still_load(tiny_data, tiny_cfg, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    from circuitlab.training.checkpoints import tensor_digest

    run = train(tiny_cfg, tcfg(max_steps=8), tiny_data, tmp_path / "r", progress=False)
    path = checkpoint_path(tmp_path / "r", 8)
    tensors = load_file(str(path))
    assert load_checkpoint(path, tiny_cfg)[1]["step"] == 8
    # one flipped value, the file otherwise valid (a plain byte flip in the header would already fail to parse)
    changed = dict(tensors)
    name = sorted(changed)[0]
    changed[name] = changed[name].clone()
    changed[name].view(-1)[0] += 1.0
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as g:
        meta = g.metadata()
    save_file(changed, str(path), metadata=meta)
    with pytest.raises(CircuitlabError, match="do not match the digest"):
        run.model(8)
    # a checkpoint from before digests: loads, with a note
    save_file(tensors, str(path), metadata={k: v for k, v in meta.items() if k != "digest"})
    with caplog.at_level("INFO", logger="circuitlab"):
        assert torch.equal(run.model(8).W_E, tensors["W_E"])
    assert "no digest" in caplog.text
    assert tensor_digest(tensors) == meta["digest"] != tensor_digest(changed)
    save_file(tensors, str(path), metadata={**meta, "model_config": "{not json"})
    with pytest.raises(CircuitlabError, match="damaged metadata"):
        run.model(8)


@pytest.mark.parametrize("device,message", [("junk", "is not a device"), ("cuda:99", "CUDA"), ("ipu", "trains on")])
def test_an_unusable_device_is_one_line_and_writes_nothing(tiny_data, tiny_cfg, tmp_path, device, message):
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    with pytest.raises(CircuitlabError, match=message):
        train(tiny_cfg, tcfg(device=device), tiny_data, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


FAULT_SCRIPT = """
import sys
from circuitlab.data import prepare_tokens, text_corpus
from circuitlab.model import ModelConfig
from circuitlab.training import TrainConfig, train
from pathlib import Path
data = prepare_tokens(text_corpus(sys.argv[1]), 320, cache=Path(sys.argv[2]))
cfg = ModelConfig(**__import__("json").loads(sys.argv[3]))
tc = TrainConfig(**__import__("json").loads(sys.argv[4]))
train(cfg, tc, data, sys.argv[5], resume=len(sys.argv) > 6, progress=False)
"""


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
    """The uninterrupted run the crash tests compare with."""
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=32, d_vocab=320)
    return cfg, tcfg(max_steps=32), train(cfg, tcfg(max_steps=32), tiny_data, tmp_path_factory.mktemp("straight") / "r",
                                           progress=False)


@pytest.mark.parametrize("point", ["checkpoint", "optimizer", "metrics"])
def test_a_run_killed_at_any_write_resumes_to_the_same_weights_optimizer_and_metrics(
        small_corpus_dir, straight_run, tmp_path, tmp_path_factory, point):
    """SIGKILL (a crash) after the checkpoint, after the optimizer state, or after the metrics row of an evaluation
    step; then resume: weights, optimizer state and metrics.jsonl equal the uninterrupted run's."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from circuitlab.training.loop import FAULT_ENV

    tiny_cfg, c, straight = straight_run
    cache = str(tmp_path_factory.getbasetemp() / "fault_cache")
    args = [sys.executable, "-c", FAULT_SCRIPT, str(small_corpus_dir), cache, json.dumps(tiny_cfg.to_dict()),
            json.dumps(c.to_dict()), str(tmp_path / "killed")]
    env = {**os.environ, FAULT_ENV: f"{point}:16"}
    killed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    rows_before = [r["step"] for r in circuitlab.load_run(tmp_path / "killed").metrics]
    assert rows_before[-1] == (16 if point == "metrics" else 8)
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = straight, circuitlab.load_run(tmp_path / "killed")
    for (name, p), q in zip(a.model().named_parameters(), b.model().parameters()):
        assert torch.equal(p, q), f"{name} differs after the crash at {point}"
    oa, ob = (load_file(str(d / "optimizer.safetensors")) for d in (straight.path, tmp_path / "killed"))
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in rows]  # noqa: E731
    assert strip(a.metrics) == strip(b.metrics)


def test_threads_leave_the_cores_other_work_is_using(monkeypatch):
    """A process spinning on one core counts as busy; CIRCUITLAB_THREADS overrides; a bad value is one line."""
    import subprocess
    import sys

    from circuitlab.training.threads import busy_elsewhere, cores, free_cores, threads_for

    monkeypatch.delenv("CIRCUITLAB_THREADS", raising=False)
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"])
    try:
        time.sleep(0.5)
        assert busy_elsewhere(0.5) >= 0.6  # the spinner's core (plus whatever else runs here)
        if cores() >= 2:
            assert free_cores(0.5) <= cores() - 1
    finally:
        spin.kill()
        spin.wait()
    assert 1 <= free_cores(0.2) <= cores()
    assert threads_for(workers=cores() * 4, sample_s=0.1) == 1  # never below one thread
    monkeypatch.setenv("CIRCUITLAB_THREADS", "3")
    assert threads_for() == 3
    monkeypatch.setenv("CIRCUITLAB_THREADS", "two")
    with pytest.raises(CircuitlabError, match="CIRCUITLAB_THREADS"):
        threads_for()


def test_a_run_resumes_with_the_thread_count_it_was_trained_with(tmp_path, monkeypatch):
    """torch's CPU thread count can change float rounding (MKL's default mode on Intel CPUs; session 8's machine), so
    a run must resume on the count it was trained with. Here the loss is planted to depend on the count (plus
    1e-3 x threads x the sum of W_E, a gradient AdamW does not normalise away), so the test runs on every machine, the kernels' rounding aside: the grokking preset's weights
    after 40 epochs differ between 1 and 2 threads (checked first, so the test can fail). run.json records the count,
    and a resume under another count uses the recorded one, so it ends exactly where the uninterrupted run does."""
    from circuitlab.experiments.grokking.presets import grokking_model
    from circuitlab.training import ModularAdditionTask

    real = ModularAdditionTask.loss
    monkeypatch.setattr(ModularAdditionTask, "loss",
                        lambda self, model, batch: real(self, model, batch)
                        + 1e-3 * torch.get_num_threads() * model.W_E.sum())
    preset = grokking_model(epochs=40, log_every=10, checkpoint_every=20)
    m, t = preset.configs()
    before = torch.get_num_threads()
    try:
        weights = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            run = train(m, t, ModularAdditionTask(**preset.task), tmp_path / f"straight{n}", progress=False)
            weights[n] = run.model().state_dict()
            assert json.loads((tmp_path / f"straight{n}" / "run.json").read_text())["threads"] == n
        assert not all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])
        torch.set_num_threads(1)
        train(m, t, ModularAdditionTask(**preset.task), tmp_path / "r", progress=False, stop_at=20)
        torch.set_num_threads(2)
        resumed = train(m, t, ModularAdditionTask(**preset.task), tmp_path / "r", resume=True, progress=False)
        assert torch.get_num_threads() == 2  # the caller's count is restored afterwards
        got = resumed.model().state_dict()
        assert all(torch.equal(got[k], weights[1][k]) for k in got)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not __import__("circuitlab.model.matmul", fromlist=["x"]).onednn_available(),
                    reason="this torch has no oneDNN linear for the CPU")
def test_a_run_resumes_with_the_matmul_backend_it_was_trained_with(tmp_path):
    """oneDNN's and torch's products round differently: the grokking preset's weights after 40 epochs differ between
    them (checked first, so the test can fail). run.json records the backend; a resume under the other one uses the
    recorded one, so it ends exactly where the uninterrupted run does, and the caller's backend is back after."""
    from circuitlab.experiments.grokking.presets import grokking_model
    from circuitlab.model import matmul
    from circuitlab.training import ModularAdditionTask

    preset = grokking_model(epochs=40, log_every=10, checkpoint_every=20)
    m, t = preset.configs()
    weights = {}
    for name in ("onednn", "torch"):
        with matmul.forced(name):
            run = train(m, t, ModularAdditionTask(**preset.task), tmp_path / name, progress=False)
        weights[name] = run.model().state_dict()
        assert json.loads((tmp_path / name / "run.json").read_text())["matmul"] == name
    assert not all(torch.equal(weights["onednn"][k], weights["torch"][k]) for k in weights["torch"])
    with matmul.forced("onednn"):
        train(m, t, ModularAdditionTask(**preset.task), tmp_path / "r", progress=False, stop_at=20)
    with matmul.forced("torch"):
        resumed = train(m, t, ModularAdditionTask(**preset.task), tmp_path / "r", resume=True, progress=False)
        assert matmul.backend() == "torch"
    got = resumed.model().state_dict()
    assert all(torch.equal(got[k], weights["onednn"][k]) for k in got)
    assert json.loads((tmp_path / "r" / "run.json").read_text())["matmul"] == "onednn"


def test_training_skips_the_deterministic_fill_of_new_tensors_and_changes_no_number(tiny_data, tiny_cfg, tmp_path,
                                                                                     monkeypatch):
    """`train` runs deterministic algorithms without torch's NaN fill of every new tensor
    (`loop.deterministic_kernels`), and restores the caller's settings after. The fill only matters to a kernel that
    reads memory it never wrote; a language model and the grokking model train to the same weights and metrics to
    the bit with it as without it."""
    import torch.utils.deterministic as deterministic

    import circuitlab.training.loop as loop
    from circuitlab.experiments.grokking import grokking_model
    from circuitlab.training import ModularAdditionTask

    seen = []
    spy = lambda ctx: seen.append((torch.are_deterministic_algorithms_enabled(),  # noqa: E731
                                   deterministic.fill_uninitialized_memory)) or None
    g = grokking_model(p=13, d_model=16, d_mlp=32, n_heads=2, d_head=8, epochs=20, checkpoint_every=20, log_every=5)
    gm, gt = g.configs()
    runs = {}
    for fill in (False, True):
        monkeypatch.setattr(loop, "FILL_UNINITIALIZED", fill)
        assert deterministic.fill_uninitialized_memory and not torch.are_deterministic_algorithms_enabled()
        seen.clear()
        lm = train(tiny_cfg, tcfg(max_steps=16), tiny_data, tmp_path / f"lm{fill}", progress=False, callbacks=[spy])
        assert set(seen) == {(True, fill)}  # inside the loop: deterministic, the fill as set
        runs[fill] = lm, train(gm, gt, ModularAdditionTask(**g.task), tmp_path / f"g{fill}", progress=False)
    assert deterministic.fill_uninitialized_memory and not torch.are_deterministic_algorithms_enabled()  # restored
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in rows]  # noqa: E731
    for without, with_fill in zip(runs[False], runs[True]):
        for (name, p), q in zip(without.model().named_parameters(), with_fill.model().parameters()):
            assert torch.equal(p, q), name
        assert strip(without.metrics) == strip(with_fill.metrics)
