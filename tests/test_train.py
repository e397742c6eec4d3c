"""The `train` command: SIGKILL mid-run then --resume gives bitwise the same result; runs are deterministic."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from symvi_jax import checkpoint, cli

ROOT = Path(__file__).resolve().parents[1]

# 96 // 12 = 8 steps per epoch, 6 epochs = 48 steps, a checkpoint every 3 steps (mostly mid-epoch).
# The plain ELBO compiles faster; resuming the symmetrized objective is checked in test_checkpoint.py.
QUICK = """
num_train: 96
num_test: 64
hidden: [4]
objective: elbo
num_epochs: 6
batch_size: 12
checkpoint_every: 3
num_eval_samples: 20
"""
TOTAL_STEPS = 48


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _command(config, out, *extra):
    return [sys.executable, "-m", "symvi_jax", "train", "--config", str(config), "--out", str(out), *extra]


def _rows(out):
    return json.loads((out / "results.json").read_text())["rows"]


def _steps(directory):
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def test_sigkill_then_resume_is_bitwise_identical_and_runs_are_deterministic(tmp_path):
    config = tmp_path / "quick.yaml"
    config.write_text(QUICK)
    runs = {name: tmp_path / name for name in ("a", "killed")}
    # an uninterrupted run and the one to kill, started together
    first = {name: subprocess.Popen(_command(config, out), env=_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, out in runs.items()}
    victim = first["killed"]
    deadline = time.monotonic() + 240
    while not _steps(runs["killed"] / "checkpoints") and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (runs["killed"] / "results.json").exists()
    killed_at = checkpoint.latest_step(runs["killed"] / "checkpoints")
    assert killed_at is not None and 0 < killed_at < TOTAL_STEPS
    assert killed_at % 8 != 0  # the run resumes mid-epoch (8 steps per epoch)

    _, err = first["a"].communicate(timeout=300)
    assert first["a"].returncode == 0, err[-3000:]

    resumed = subprocess.run(_command(config, runs["killed"], "--resume"), env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from the checkpoint at step {killed_at}" in resumed.stderr
    rows = _rows(runs["killed"])
    # every metric, the state's and the history's sha256 digests: the killed-and-resumed process
    # reproduces the uninterrupted one bitwise, which also shows that a run is deterministic
    assert rows == _rows(runs["a"])
    assert rows[0]["num_steps"] == TOTAL_STEPS
    assert checkpoint.is_finished(runs["killed"] / "checkpoints")


def test_only_experiments_that_checkpoint_take_resume(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--resume", "--out", str(tmp_path / "demo")])
    assert "unrecognized arguments: --resume" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
    assert cli.build_parser().parse_args(["train", "--resume"]).resume is True


def test_resume_with_more_epochs_extends_the_run(tmp_path, capsys):
    """``train --resume --num-epochs 3`` on a finished 2-epoch run equals a 3-epoch run from scratch."""
    config = tmp_path / "quick.yaml"
    config.write_text(QUICK.replace("num_epochs: 6", "num_epochs: 2"))
    run = lambda out, *extra: cli.main(["train", "--config", str(config), "--out", str(tmp_path / out), *extra])  # noqa: E731
    assert run("extended") == 0
    assert run("extended", "--num-epochs", "3") == 2  # the folder holds a run: refused, naming the flag
    assert "--resume" in capsys.readouterr().err
    assert run("extended", "--num-epochs", "3", "--resume") == 0
    assert run("direct", "--num-epochs", "3") == 0
    extended, direct = _rows(tmp_path / "extended"), _rows(tmp_path / "direct")
    assert extended[0]["num_steps"] == 24 and extended == direct
    assert checkpoint.is_finished(tmp_path / "extended" / "checkpoints")
