"""Data parallelism (issue 18): two gloo ranks on the CPU train exactly the single-process trajectory, only rank 0
writes, and a run interrupted and resumed under two ranks equals an uninterrupted single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import circuitlab
from circuitlab.errors import CircuitlabError
from circuitlab.model import ModelConfig
from circuitlab.training import TrainConfig, train
from circuitlab.training.distributed import Ranks, check_split, shard

SCRIPT = """
import json, sys
from pathlib import Path
from circuitlab.data import load_corpus, prepare_tokens
from circuitlab.model import ModelConfig
from circuitlab.training import TrainConfig, train
corpus, cache, m, t, out, stop = sys.argv[1:7]
data = prepare_tokens(load_corpus(text=corpus), 320, cache=Path(cache))
train(ModelConfig(**json.loads(m)), TrainConfig(**json.loads(t)), data, out, resume=(Path(out) / "run.json").exists(),
      progress=False, stop_at=int(stop) or None)
# the threads left once train() has returned (Linux): gloo's must be gone, not left to interpreter shutdown
import os
tasks = Path("/proc/self/task")
if tasks.is_dir():
    (Path(out).parent / f"threads-{stop}-{os.environ['RANK']}.json").write_text(
        json.dumps(sorted((t / "comm").read_text().strip() for t in tasks.iterdir())))
"""
MODEL = ModelConfig(n_layers=1, d_model=32, n_heads=4, d_head=8, n_ctx=32, d_vocab=320)
TRAIN = TrainConfig(batch_size=4, max_steps=6, eval_every=3, log_checkpoints=2, lr=1e-2)


def _torchrun(tmp_path: Path, corpus: Path, cache: Path, out: Path, stop: int) -> subprocess.CompletedProcess:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                           str(script), str(corpus), str(cache), json.dumps(MODEL.to_dict()),
                           json.dumps(TRAIN.to_dict()), str(out), str(stop)],
                          capture_output=True, text=True, timeout=240, env=env)


def test_two_gloo_ranks_interrupted_and_resumed_equal_one_process(small_corpus_dir, tmp_path):
    from circuitlab.data import load_corpus, prepare_tokens

    cache = tmp_path / "cache"
    data = prepare_tokens(load_corpus(text=str(small_corpus_dir)), 320, cache=cache)
    straight = train(MODEL, TRAIN, data, tmp_path / "one", progress=False)
    out = tmp_path / "two"
    for stop in (3, 0):  # stopped at step 3 (an evaluation step), then resumed to the end, both under 2 ranks
        r = _torchrun(tmp_path, small_corpus_dir, cache, out, stop)
        assert r.returncode == 0, r.stderr[-3000:]
        # train() ended the process group it started on both ranks: its gloo threads ('gloo_tcp_loop',
        # 'pt_gloo_runloop') joined, none left running into interpreter shutdown (where they aborted a rank now and
        # then: torch._inductor imported after the group started had kept it alive past destroy_process_group)
        if Path("/proc/self/task").is_dir():
            left = [json.loads((tmp_path / f"threads-{stop}-{rank}.json").read_text()) for rank in (0, 1)]
            assert all("python" in names for names in left), left  # what is read is the ranks' threads
            assert not [name for names in left for name in names if "gloo" in name], left
    ddp = circuitlab.load_run(out)
    for (name, p), q in zip(straight.model().named_parameters(), ddp.model().parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=f"{name} differs")
    # only rank 0 wrote: the same files, one metrics row per evaluation (none twice), the same losses
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.name != ".lock")  # noqa: E731
    assert set(files(out)) - {"checkpoints/step-000000003.safetensors"} == set(files(straight.path))  # + the stop
    assert [r["step"] for r in ddp.metrics] == [r["step"] for r in straight.metrics] == [0, 3, 6]
    for a, b in zip(straight.metrics[1:], ddp.metrics[1:]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["heldout_loss"] == pytest.approx(b["heldout_loss"], abs=1e-5)


def test_a_batch_the_ranks_cannot_split_is_one_line_before_anything():
    with pytest.raises(CircuitlabError, match="4 rows, which 3 ranks cannot split evenly"):
        check_split(4, Ranks(0, 3))
    batch = torch.arange(12).reshape(6, 2)
    assert shard(batch, Ranks(1, 2)).tolist() == [[2, 3], [6, 7], [10, 11]]
    x, y = shard((batch, torch.arange(6)), Ranks(0, 3))
    assert y.tolist() == [0, 3] and x.shape == (2, 2)


def test_cli_nproc_launches_torchrun_and_errors_stay_one_line(small_corpus_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    base = [sys.executable, "-m", "circuitlab", "train", "--preset", "attn1", "--text", str(small_corpus_dir),
            "--n-layers", "1", "--d-model", "32", "--n-heads", "4", "--d-head", "8", "--n-ctx", "32",
            "--d-vocab", "320", "--eval-every", "2", "--max-steps", "2", "--quiet", "--nproc", "2"]
    ok = subprocess.run(base + ["--batch-size", "4", "--out", str(tmp_path / "ok")], capture_output=True, text=True,
                        timeout=240, env=env)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert ok.stdout.count("done: ") == 1  # rank 0 talks, rank 1 does not
    assert [r["step"] for r in circuitlab.load_run(tmp_path / "ok").metrics] == [0, 2]
    bad = subprocess.run(base + ["--batch-size", "3", "--out", str(tmp_path / "bad")], capture_output=True,
                         text=True, timeout=240, env=env)
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "3 rows, which 2 ranks cannot split evenly" in errors[0], bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout and not (tmp_path / "bad" / "run.json").exists()
