"""Property-based fuzzing of the command line (Hypothesis): hostile flag values and damaged run files must end in
success or in exit status 2 with exactly one error line -- never a traceback -- and a refused command changes
nothing that existed before it."""

import hashlib
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from circuitlab.cli import app

runner = CliRunner()
BASE = ["--preset", "attn1", "--n-ctx", "32", "--d-vocab", "320", "--d-model", "32", "--n-heads", "2", "--d-head", "16",
        "--batch-size", "2", "--eval-every", "2", "--quiet"]
HOSTILE = ["0", "-1", "nan", "inf", "-inf", "1e-12", "1e400", "3", "abc", "", "0x10", "1_000", "2.5", "-0.0"]
FLAGS = ["--lr", "--weight-decay", "--grad-clip", "--warmup-steps", "--seed", "--eval-every", "--checkpoint-every",
         "--log-checkpoints", "--beta1", "--beta2", "--max-steps", "--d-model", "--n-heads", "--d-head", "--n-ctx",
         "--batch-size", "--device", "--positional", "--schedule", "--init"]
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def check(result) -> bool:
    """Success, or exit 2 with one error line; never an uncaught exception. Returns whether it was refused."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}\n{result.output}")
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 2), (result.exit_code, result.output)
    if result.exit_code == 2:
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.output
    return result.exit_code == 2


@pytest.fixture(scope="module")
def corpus(small_corpus_dir):
    return str(small_corpus_dir)


@given(st.dictionaries(st.sampled_from(FLAGS), st.sampled_from(HOSTILE), min_size=1, max_size=3))
@SETTINGS
def test_train_with_hostile_flags_succeeds_or_says_one_line(corpus, flags):
    with tempfile.TemporaryDirectory() as d:
        existing = Path(d) / "existing"
        existing.mkdir()
        (existing / "notes.txt").write_text("keep me")
        before = digests(Path(d))
        args = ["train", "--text", corpus, "--out", str(Path(d) / "run"), *BASE, "--max-steps", "2"]
        for k, v in flags.items():
            if k == "--max-steps" and v not in ("0", "-1", "abc", "", "nan"):
                v = "3"  # keep successful runs short
            args += [k, v]
        refused = check(runner.invoke(app, args))
        after = digests(Path(d))
        assert {k: v for k, v in after.items() if k in before} == before  # nothing that existed was changed
        if refused:
            assert not (Path(d) / "run" / "run.json").exists()  # and no half-made run blocks the next command


@pytest.fixture(scope="module")
def finished_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    r = runner.invoke(app, ["train", "--text", corpus, "--out", str(out), *BASE, "--max-steps", "4"])
    assert r.exit_code == 0, r.output
    return out


DAMAGES = ["truncate", "garbage", "empty", "delete", "flip"]
TARGETS = ["run.json", "metrics.jsonl", "tokenizer.json", "optimizer.safetensors", "checkpoints/step-000000004.safetensors",
           "checkpoints/step-000000002.safetensors", "stopped.json"]
COMMANDS = [["info"], ["analyze"], ["train", "--resume", "--quiet", "--max-steps", "6"]]


def damage(path: Path, how: str, data: bytes) -> None:
    if how == "delete":
        path.unlink(missing_ok=True)
        return
    old = path.read_bytes() if path.exists() else b""
    if how == "truncate":
        path.write_bytes(old[: len(old) // 2])
    elif how == "garbage":
        path.write_bytes(data)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flip" and old:
        i = len(old) - 1 - (int.from_bytes(data[:4].ljust(4, b"\0"), "little") % max(1, len(old) // 2))
        path.write_bytes(old[:i] + bytes([old[i] ^ 0xFF]) + old[i + 1 :])


@given(st.sampled_from(TARGETS), st.sampled_from(DAMAGES), st.binary(min_size=1, max_size=64),
       st.sampled_from(COMMANDS))
@SETTINGS
def test_damaged_run_files_give_one_line_and_change_nothing(finished_run, target, how, data, command):
    with tempfile.TemporaryDirectory() as d:
        run = Path(d) / "run"
        shutil.copytree(finished_run, run)
        damage(run / target, how, data)
        before = digests(run)
        args = [*command[:1], *(["--out", str(run)] if command[0] == "train" else [str(run)]), *command[1:]]
        if check(runner.invoke(app, args)):
            assert digests(run) == before  # a refused command leaves every file as it was
