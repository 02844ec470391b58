"""Multi-process runs under torchrun on the CPU (gloo): the same code path multi-GPU runs take."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _torchrun(nproc: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("REPRO_DEBUG", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_two_processes_keep_one_student_and_one_generator(teacher_dir, tmp_path):
    """Gradients are averaged over ranks: after training, both ranks hold bit-identical student and
    generator parameters; only rank 0 records the epoch metrics (reduced over ranks)."""
    _torchrun(2, str(REPO / "tests/support/ddp_worker.py"), str(REPO), str(teacher_dir), str(tmp_path), cwd=tmp_path)
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["student"] == ranks[1]["student"]
    assert ranks[0]["generator"] == ranks[1]["generator"]
    epochs = [row for row in ranks[0]["metrics"] if "startup_seconds" not in row]  # and one start-up record
    assert len(epochs) == 2 and len(ranks[0]["metrics"]) == 3 and ranks[1]["metrics"] == []
    assert all(row["student/loss"] > 0 for row in epochs)


def test_teacher_stage_under_torchrun_matches_one_process(tmp_path):
    """`torchrun --nproc_per_node 2 -m repro train-teacher` (gloo) gives the one-process accuracy
    within tolerance: each rank takes its half of every global batch (same batches in all), so the
    runs differ only by per-rank BatchNorm statistics and summation order. Rank 0 alone writes."""
    gin_args = ["--gin", str(REPO / "gin/experiments/digits.gin"), "--gin", str(REPO / "gin/profiles/smoke.gin"), "--no-track"]
    single = subprocess.run([sys.executable, "-m", "repro", "train-teacher", *gin_args, "--out", "one",
                             "--metrics", "one.json"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    result = _torchrun(2, "-m", "repro", "train-teacher", *gin_args, "--out", "two", "--metrics", "two.json", cwd=tmp_path)
    one, two = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    print(f"top-1: 1 process {one['top1']:.2f}%, 2 processes {two['top1']:.2f}%")
    assert abs(one["top1"] - two["top1"]) <= 3.0
    assert result.stdout.count("teacher digits_cnn_large: test top-1") == 1  # rank 0 reports, once
    assert (tmp_path / "two" / "model.safetensors").is_file()


def test_global_batch_must_split_evenly(monkeypatch):
    from repro.errors import UserError
    from repro.train import distributed
    from repro.train.engine import Trainer

    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(UserError, match="batch_size \\(128\\) must be divisible by the 3 processes"):
        Trainer(epochs=1, steps_per_epoch=1, batch_size=128, optimizer=lambda params: None)
