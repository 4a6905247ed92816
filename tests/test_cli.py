import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

import circuitlab
from circuitlab.cli import app
from circuitlab.experiments.framework import ModelAnalysis
from circuitlab.heads import Head

TINY = ["--n-layers", "1", "--d-model", "32", "--n-heads", "4", "--d-head", "8", "--n-ctx", "32", "--d-vocab", "320",
        "--batch-size", "4", "--eval-every", "3", "--quiet"]

runner = CliRunner()


def error_line(result) -> str:
    """The CLI's error: exit status 2 and exactly one line."""
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_train_info_resume_and_load_run(small_corpus_dir, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--preset", "attn1", "--text", str(small_corpus_dir), "--out", str(out),
                            "--max-steps", "6", *TINY])
    assert r.exit_code == 0, r.output
    assert "1-layer model, d_model 32" in r.output and "checkpoints" in r.output

    r = runner.invoke(app, ["info", str(out)])
    assert r.exit_code == 0, r.output
    assert "6 / 6 (100%)" in r.output and "Checkpoints" in r.output and "shortformer" in r.output

    # resume may extend the run; it reuses the run's corpus and config
    r = runner.invoke(app, ["train", "--resume", "--out", str(out), "--max-steps", "9", "--quiet"])
    assert r.exit_code == 0, r.output
    run = circuitlab.load_run(out)
    assert run.metrics[-1]["step"] == 9 and run.config.n_layers == 1 and run.train_config.max_steps == 9
    assert run.model().OV.shape == (1, 4, 32, 32)

    line = error_line(runner.invoke(app, ["train", "--resume", "--out", str(out), "--d-model", "64", "--quiet"]))
    assert "cannot resume" in line and "--d-model was 32, now 64" in line
    assert circuitlab.load_run(out).metrics[-1]["step"] == 9  # nothing lost


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--preset", "attn9", "--out", "{tmp}/x"], "unknown preset 'attn9'"),
        (["train", "--text", "{tmp}/missing/*.txt", "--out", "{tmp}/x"], "no files match"),
        (["train", "--text", "{corpus}", "--d-vocab", "100000", "--out", "{tmp}/x", "--max-steps", "1"], "supports a vocabulary of only"),
        (["train", "--text", "{corpus}", "--out", "{tmp}/x", "--positional", "rotary"], "positional_embedding_type"),
        (["info", "{tmp}"], "is not a circuitlab run"),
    ],
)
def test_bad_input_is_one_clear_line(args, expected, small_corpus_dir, tmp_path):
    args = [a.format(tmp=tmp_path, corpus=small_corpus_dir) for a in args]
    assert expected in error_line(runner.invoke(app, args))
    assert not (tmp_path / "x" / "run.json").exists()


def test_devices_this_machine_lacks_are_one_line_from_the_command_line(small_corpus_dir, tmp_path):
    import torch

    base = ["train", "--text", str(small_corpus_dir), "--out", str(tmp_path / "x"), "--max-steps", "1", *TINY]
    cases = [("junk", "is not a device"), ("ipu", "trains on cpu, cuda or mps")]
    if not torch.cuda.is_available():
        cases += [("cuda", "no CUDA device here"), ("cuda:1", "no CUDA device here")]
    if not torch.backends.mps.is_available():
        cases.append(("mps", "no Apple-silicon GPU"))
    for device, message in cases:
        r = runner.invoke(app, [*base, "--device", device])
        assert r.exit_code == 2 and message in error_line(r) and "Traceback" not in r.output, (device, r.output)
        assert not (tmp_path / "x" / "run.json").exists()
    r = runner.invoke(app, ["experiment", "grokking", "--preset", "quick", "--device", "junk", "--out",
                            str(tmp_path / "g")])
    assert "is not a device" in error_line(r) and not (tmp_path / "g" / "run" / "run.json").exists()


def test_presets_cover_the_papers_sizes():
    from circuitlab.training import PRESETS

    assert {name: p.model["n_layers"] for name, p in PRESETS.items()} == {
        "attn0": 0, "attn1": 1, "attn2": 2, "attn3": 3, "attn8": 8}


def test_metrics_file_is_jsonl(small_corpus_dir, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--text", str(small_corpus_dir), "--out", str(out), "--max-steps", "3", *TINY])
    assert r.exit_code == 0, r.output
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 3]
    # Only circuitlab's own messages are turned up to INFO: other libraries' INFO logs (torch's FakeTensor cache
    # statistics at exit) would otherwise print after the one line an interrupted command ends with.
    # (--quiet keeps circuitlab's own notes to warnings too.)
    assert logging.getLogger("circuitlab").handlers and not logging.getLogger("circuitlab").isEnabledFor(logging.INFO)
    assert not logging.getLogger("torch._subclasses.fake_tensor").isEnabledFor(logging.INFO)
    # a damaged row (a number field holding text, as a hand edit or a bad disk leaves it) is skipped, not a crash
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 2, "train_loss": "abc", "tokens": 8}) + "\n")
        f.write(json.dumps({"step": 2, "tokens": [1], "lr": True}) + "\n")
    assert [m["step"] for m in circuitlab.load_run(out).metrics] == [0, 3]
    r = runner.invoke(app, ["info", str(out)])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert logging.getLogger("circuitlab").isEnabledFor(logging.INFO)
    assert not logging.getLogger("torch._subclasses.fake_tensor").isEnabledFor(logging.INFO)


def test_analyze_writes_analysis_json(small_corpus_dir, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--text", str(small_corpus_dir), "--out", str(out), "--max-steps", "4",
                            *[a if a != "1" else "2" for a in TINY[:2]], *TINY[2:]])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["analyze", str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "analysis.json").read_text())
    assert result["step"] == 4 and result["model"]["n_layers"] == 2
    assert len(result["heads"]) == 8 and {"ov_copying", "induction", "prefix_matching", "roles"} <= set(result["heads"][0])
    assert -1 <= result["heads"][0]["ov_copying"] <= 1
    assert "k" in result["composition"] and "correlation" in result["bigram_agreement"]
    assert {"positional_share", "attention_driver", "ov_top1_diagonal"} <= set(result["heads"][0])
    assert len(result["skip_trigrams"]) == 4 and result["skip_trigrams"][0]["rows"]
    ti = result["term_importance"]
    assert len(ti["improvement"]) == 3 and abs(ti["cumulative_loss"][-1] - ti["model_loss"]) < 1e-3
    assert result["softmax_competition"]["hand_built"]["gap"] > 3
    typed = ModelAnalysis.load(out / "analysis.json")  # the file reads back into the typed result, unchanged
    assert typed.to_json() == result and typed.heads[5].head == Head(1, 1)
    assert "Heads" in r.output and "K-composition" in r.output and "term importance" in r.output
    r = runner.invoke(app, ["analyze", str(out), "--step", "0"])
    assert r.exit_code == 0 and (out / "analysis-step0.json").exists()
    assert "no checkpoint at step 99" in error_line(runner.invoke(app, ["analyze", str(out), "--step", "99"]))


def test_experiment_induction_takes_a_corpus_and_says_what_is_wrong_with_it(tmp_path):
    for args in (["--text", str(tmp_path / "missing")], ["--text", "a", "--hf-dataset", "b"]):
        r = runner.invoke(app, ["experiment", "induction", "--out", str(tmp_path / "exp"), *args])
        assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "exp").exists()
    r = runner.invoke(app, ["reproduce", "--out", str(tmp_path / "rep"), "--text", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no files match" in r.output
    for args, words in ((["--float-noise", "-1"], "--float-noise must be 0"),
                        (["--float-noise", "1", "--seeds", "2"], "one at a time")):
        r = runner.invoke(app, ["reproduce", "--out", str(tmp_path / "rep"), *args])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "rep").exists()


def test_experiment_induction_on_your_text_over_two_seeds(small_corpus_dir, tmp_path, monkeypatch):
    """`circuitlab experiment induction --text DIR --seeds 2` (on the tiny test preset): seed 1 trains models of its
    own seed under OUT/seeds/1, and every claim is reported over both seeds."""
    from circuitlab.experiments import induction
    from circuitlab.experiments.seeds import SeedResults
    from tests.test_induction_experiment import TINY

    monkeypatch.setitem(induction.PRESETS, "tiny", TINY)
    out = tmp_path / "exp"
    r = runner.invoke(app, ["experiment", "induction", "--preset", "tiny", "--out", str(out), "--text",
                            str(small_corpus_dir), "--seeds", "2", "--workers", "2"])
    assert r.exit_code == 0, r.output
    s = SeedResults.load(out / "seeds.json")
    assert s.seeds == [0, 1] and all(c.seeds == 2 for c in s.claims) and "Claims" in r.output
    assert json.loads((out / "seeds" / "1" / "runs" / "2L" / "run.json").read_text())["model"]["seed"] == 1
    assert json.loads((out / "runs" / "2L" / "run.json").read_text())["data"]["corpus"].startswith("text:")
    for task in ("pattern", "translation"):  # the behaviours' task models draw their init and batches from it too
        seed1 = json.loads((out / "seeds" / "1" / "tasks" / task / "run.json").read_text())
        seed0 = json.loads((out / "tasks" / task / "run.json").read_text())
        assert (seed1["model"]["seed"], seed1["train"]["seed"]) == (1, 1)
        assert (seed0["model"]["seed"], seed0["train"]["seed"]) == (0, 0)


def test_experiment_induction_float_noise_check(small_corpus_dir, tmp_path, monkeypatch):
    """`circuitlab experiment induction --float-noise 1` (tiny preset): run 1 trains every model from weights one
    ulp away (same seed) under OUT/float-noise/1; every claim carries both runs' verdicts."""
    from circuitlab.experiments import induction
    from circuitlab.experiments.noise import NoiseResults
    from tests.test_induction_experiment import TINY

    monkeypatch.setitem(induction.PRESETS, "tiny", TINY)
    out = tmp_path / "exp"
    r = runner.invoke(app, ["experiment", "induction", "--preset", "tiny", "--out", str(out), "--text",
                            str(small_corpus_dir), "--float-noise", "1", "--workers", "2"])
    assert r.exit_code == 0, r.output
    s = NoiseResults.load(out / "float-noise.json")
    assert s.runs == [0, 1] and all(len(c.verdicts) == 2 for c in s.claims) and "verdicts unstable" in r.output
    for name in ("1L", "2L"):
        m = json.loads((out / "float-noise" / "1" / "runs" / name / "run.json").read_text())["model"]
        assert (m["init_noise"], m["seed"]) == (1, 0)
        assert json.loads((out / "runs" / name / "run.json").read_text())["model"]["init_noise"] == 0
    for task in ("pattern", "translation"):  # the behaviours' task models too
        assert json.loads((out / "float-noise" / "1" / "tasks" / task / "run.json").read_text())["model"][
            "init_noise"] == 1


@pytest.mark.parametrize("flags, words", [
    (["--lr", "nan"], "lr must be a finite number"), (["--lr", "inf"], "lr must be a finite number"),
    (["--weight-decay", "nan"], "weight_decay must be"), (["--grad-clip", "nan"], "grad_clip must be"),
    (["--seed", "-1"], "seed must be"), (["--log-checkpoints", "-1"], "log_checkpoints must be"),
    (["--max-steps", "0"], "--max-steps must be at least 1"), (["--max-tokens", "0"], "--max-tokens must be"),
    (["--layer-norm", "--final-norm"], "final_norm is part of layer_norm"),
])
def test_bad_training_numbers_are_one_line_and_write_nothing(small_corpus_dir, tmp_path, flags, words):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--text", str(small_corpus_dir), "--out", str(out), *TINY, *flags])
    assert r.exit_code == 2 and words in error_line(r) and "Traceback" not in r.output, r.output
    assert not out.exists()


def test_analyze_a_pretrained_model_from_a_folder_offline(tiny_gpt2, tmp_path):
    from circuitlab.experiments.framework.pretrained import PretrainedAnalysis

    out = tmp_path / "a.json"
    r = runner.invoke(app, ["analyze", "--model", str(tiny_gpt2), "--out", str(out)])
    assert r.exit_code == 0, r.output
    a = PretrainedAnalysis.load(out)
    assert a.config["n_layers"] == 2 and len(a.head_scores["induction"]) == 2 and len(a.head_scores["induction"][0]) == 4
    assert a.logit_attribution is not None and a.logit_attribution.explained == pytest.approx(a.logit_attribution.total,
                                                                                               abs=1e-4)
    assert len(a.logit_lens.logit_diff) == 3 and "skipped bigrams" in r.output and "Direct logit attribution" in r.output
    assert "error" in error_line(runner.invoke(app, ["analyze"]))
    assert "one of them" in error_line(runner.invoke(app, ["analyze", str(tmp_path), "--model", str(tiny_gpt2)]))
    assert "no config.json" in error_line(runner.invoke(app, ["analyze", "--model", str(tmp_path)]))
    assert "Hugging Face cache" in error_line(runner.invoke(app, ["analyze", "--model", "nobody/nothing-here"]))


def test_experiment_induction_cap_is_checked_and_applies_to_the_plain_models(tmp_path):
    from circuitlab.experiments.induction import PRESETS
    from circuitlab.experiments.induction.presets import with_cap

    r = runner.invoke(app, ["experiment", "induction", "--max-tokens", "0", "--out", str(tmp_path / "x")])
    assert "positive number of tokens" in error_line(r) and not (tmp_path / "x").exists()
    capped = with_cap(PRESETS["quick"], 1_000_000)
    assert {n: p.train["max_tokens"] for n, p in capped.models.items()} == {
        "2L": 1_000_000, "1L": 1_000_000, "1L-smeared": 4_000_000, "2L-smeared": 4_000_000}


def test_file_system_refusals_are_one_line(small_corpus_dir, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    base = ["train", "--preset", "attn1", "--text", str(small_corpus_dir), "--max-steps", "2", *TINY]
    assert "is a file, not a folder" in error_line(runner.invoke(app, [*base, "--out", str(f)]))
    assert "check the path" in error_line(runner.invoke(app, [*base, "--out", str(f / "run")]))  # under a file
    assert f.read_text() == "x"
    if Path("/proc/self").is_dir():  # a folder nobody can create files in, even root
        assert "check the path" in error_line(runner.invoke(app, [*base, "--out", "/proc/circuitlab-run"]))
    for flags, message in ((["--p", "2"], "prime >= 5"), (["--frac", "0.00001"], "leaves 0 for training"),
                           (["--epochs", "0"], "--epochs must be at least 1"),  # was: 833,334 epochs, silently
                           (["--log-every", "0"], "--log-every must be at least 1"),
                           (["--lr", "nan"], "lr must be a finite number")):
        r = runner.invoke(app, ["experiment", "grokking", "--preset", "quick", *flags, "--out", str(tmp_path / "g")])
        assert message in error_line(r) and not (tmp_path / "g").exists()


def test_relative_text_is_recorded_absolute_resume_of_a_mistyped_out_is_refused_and_orphans_are_cleaned(
        small_corpus_dir, tmp_path, monkeypatch):
    """Issue 15, item 11: a relative --text recorded as given broke `analyze` from another folder (and an old run
    recorded that way still resumes); `--resume` with a mistyped --out started a new run; a killed writer's
    temporary files were never removed."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(small_corpus_dir, work / "texts")
    monkeypatch.chdir(work)
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--preset", "attn1", "--text", "texts", "--out", str(out), "--max-steps", "3",
                            *TINY])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["data"]["corpus"] == f"text:{work / 'texts'}"
    monkeypatch.chdir(tmp_path)  # elsewhere: the recorded corpus still names the same files
    (out / "checkpoints" / "step-000000009.safetensors.x1y2z3.tmp").write_bytes(b"half a checkpoint")
    (out / "metrics.jsonl.a1b2c3.tmp").write_text("half a row")
    r = runner.invoke(app, ["train", "--resume", "--out", str(out), "--max-steps", "6", "--quiet"])
    assert r.exit_code == 0, r.output
    assert not list(out.rglob("*.tmp"))
    # a run recorded before specs were absolute resumes from the folder it was started in
    for key in ("data", "task"):
        if isinstance(meta.get(key), dict) and "corpus" in meta[key]:
            meta[key]["corpus"] = "text:texts"
    (out / "run.json").write_text(json.dumps(meta))
    monkeypatch.chdir(work)
    r = runner.invoke(app, ["train", "--resume", "--out", str(out), "--max-steps", "9", "--quiet"])
    assert r.exit_code == 0, r.output
    assert circuitlab.load_run(out).metrics[-1]["step"] == 9
    # --resume into a folder with no run is refused, and creates nothing
    line = error_line(runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "rnu"), "--quiet"]))
    assert "holds no run" in line and not (tmp_path / "rnu").exists()
    # a new run starts in a folder that holds only a killed writer's temporary file
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "run.json.q9w8e7.tmp").write_text("{")
    r = runner.invoke(app, ["train", "--preset", "attn1", "--text", str(work / "texts"), "--out", str(fresh),
                            "--max-steps", "2", *TINY])
    assert r.exit_code == 0, r.output
    assert not list(fresh.glob("*.tmp"))


def test_resume_without_tokenizer_json_is_refused(small_corpus_dir, tmp_path):
    """Issue 15, item 11: a missing tokenizer.json made resume skip the check that the corpus is unchanged."""
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--preset", "attn1", "--text", str(small_corpus_dir), "--out", str(out),
                            "--max-steps", "3", *TINY])
    assert r.exit_code == 0, r.output
    (out / "tokenizer.json").unlink()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    line = error_line(runner.invoke(app, ["train", "--resume", "--out", str(out), "--max-steps", "6", "--quiet"]))
    assert "tokenizer.json is missing" in line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == \
        {p: b for p, b in before.items() if p.name != ".lock"}


def test_ctrl_c_while_a_command_starts_is_one_line(small_corpus_dir, tmp_path):
    """SIGINT at several moments of start-up (importing, tokenizing, the first steps): exit status 130 and one line,
    never a traceback; afterwards the run continues with --resume (or the command starts afresh where nothing was
    written)."""
    import signal
    import subprocess
    import sys
    import sysconfig
    import time
    from pathlib import Path

    import circuitlab

    package = str(Path(circuitlab.__file__).parent)

    def command(out, *extra):
        return [sys.executable, "-m", "circuitlab", "train", "--text", str(small_corpus_dir), "--out", str(out),
                "--n-layers", "1", "--d-model", "32", "--n-heads", "2", "--d-head", "16", "--n-ctx", "32",
                "--d-vocab", "320", "--batch-size", "4", "--max-steps", "400", "--quiet", *extra]

    for i, delay in enumerate((0.05, 0.3, 1.0, 2.5)):
        out = tmp_path / f"run{i}"
        p = subprocess.Popen(command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
        if "Traceback" in err and delay < 0.1:
            # a signal that lands while the interpreter is still starting (site's imports: "Fatal Python error:
            # init_import_site"; runpy finding the package), before a line of circuitlab has run (seen on a slow VM
            # at 0.05 s), is Python's own start-up: nothing of ours can catch it. No frame may be circuitlab's then,
            # and every one must be the interpreter's own (frozen modules or the standard library).
            frames = [line for line in err.splitlines() if line.strip().startswith("File ")]
            assert frames and not any(package in f for f in frames), (delay, err)
            assert all("<frozen " in f or sysconfig.get_paths()["stdlib"] in f for f in frames), (delay, err)
            continue
        assert "Traceback" not in err, (delay, err)
        if p.returncode == 0:  # it finished before the signal came
            continue
        assert p.returncode in (130, -signal.SIGINT), (delay, p.returncode, err)
        if p.returncode == 130:
            assert "interrupted" in err.strip().splitlines()[-1], err
        # where something was saved, --resume continues it; where nothing was (Ctrl-C before the first save), the
        # same command starts it: a half-made run never blocks it
        saved = (out / "optimizer.safetensors").exists() or any((out / "checkpoints").glob("*.safetensors"))
        again = command(out, "--resume") if saved else command(out)
        r = subprocess.run(again, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (delay, r.stderr[-500:])


def test_a_full_disk_is_one_line_and_loses_nothing(small_corpus_dir, tmp_path, monkeypatch):
    """ENOSPC while writing the token cache, then while writing the third checkpoint: exit status 2 with one line
    naming the disk space, no half-written cache or checkpoint left, the checkpoints already written intact, and
    --resume finishes the run once there is space again."""
    import errno

    import numpy as np
    import torch

    import circuitlab.data.tokens as tokens_mod
    import circuitlab.training.checkpoints as ckpt_mod

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    args = ["train", "--text", str(small_corpus_dir), "--out", str(tmp_path / "run"), "--n-layers", "1",
            "--d-model", "32", "--n-heads", "2", "--d-head", "16", "--n-ctx", "32", "--d-vocab", "320",
            "--batch-size", "4", "--max-steps", "30", "--checkpoint-every", "10", "--log-checkpoints", "0", "--quiet"]
    cache = tmp_path / "cache"
    monkeypatch.setenv("CIRCUITLAB_CACHE", str(cache))
    with monkeypatch.context() as m:
        m.setattr(tokens_mod.np, "save", full)
        r = runner.invoke(app, args)
    assert r.exit_code == 2 and "No space left on device" in r.output and "free disk space" in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not list(cache.glob("tokens-*"))  # no half-written token cache
    saved = ckpt_mod.save_file
    reference = runner.invoke(app, [a if a != str(tmp_path / "run") else str(tmp_path / "reference") for a in args])
    assert reference.exit_code == 0, reference.output
    final = {k: v.clone() for k, v in circuitlab.load_run(tmp_path / "reference").model().state_dict().items()}
    # save_file is called for checkpoint 0, optimizer 0, checkpoint 10, optimizer 10, checkpoint 20, ...: the disk
    # fills up at the optimizer save after checkpoint 10, or at checkpoint 20
    for fails_at, resumes_from in ((4, 0), (5, 10)):
        out = tmp_path / f"run-{fails_at}"
        run_args = [a if a != str(tmp_path / "run") else str(out) for a in args]
        calls = []

        def fills_up(*a, **k):
            calls.append(1)
            if len(calls) >= fails_at:
                full()
            return saved(*a, **k)

        with monkeypatch.context() as m:
            m.setattr(ckpt_mod, "save_file", fills_up)
            r = runner.invoke(app, run_args)
        assert r.exit_code == 2 and "No space left on device" in r.output and "Traceback" not in r.output, r.output
        run = circuitlab.load_run(out)
        assert run.checkpoints == [0, 10] and not list(out.rglob("*.tmp"))
        for s in run.checkpoints:
            assert np.isfinite(run.model(s).W_E.detach().numpy()).all()  # they load (their digests check out)
        assert ckpt_mod.optimizer_step(out) == resumes_from  # the optimizer state saved before the disk filled up
        r = runner.invoke(app, run_args + ["--resume"])
        assert r.exit_code == 0, r.output
        after = circuitlab.load_run(out)
        assert after.checkpoints == [0, 10, 20, 30]
        got = after.model().state_dict()
        assert all(torch.equal(got[k], v) for k, v in final.items())  # the uninterrupted run's weights, exactly
        assert [m["step"] for m in after.metrics] == [m["step"] for m in circuitlab.load_run(tmp_path / "reference").metrics]
    # The disk fills before anything is trained (the run's tokenizer.json, or checkpoint 0): one line, and the same
    # command -- not --resume -- then starts the run (it used to be refused: "already holds a run" or "not empty").
    import circuitlab.results as results_mod

    written = results_mod.atomic_write_text
    for where in ("tokenizer", "checkpoint 0"):
        out = tmp_path / f"early-{where.replace(' ', '')}"
        run_args = [a if a != str(tmp_path / "run") else str(out) for a in args]
        with monkeypatch.context() as m:
            if where == "tokenizer":
                m.setattr("circuitlab.training.tasks.atomic_write_text",
                          lambda path, text: full() if path.name == "tokenizer.json" else written(path, text))
            else:
                m.setattr(ckpt_mod, "save_file", full)
            r = runner.invoke(app, run_args)
        assert r.exit_code == 2 and "No space left on device" in r.output and "Traceback" not in r.output, r.output
        assert not list(out.rglob("*.tmp"))
        if where == "tokenizer":
            assert not (out / "tokenizer.json").exists()
        r = runner.invoke(app, run_args)
        assert r.exit_code == 0, (where, r.output)
        got = circuitlab.load_run(out).model().state_dict()
        assert all(torch.equal(got[k], v) for k, v in final.items()), where
