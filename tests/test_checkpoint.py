"""Checkpoints: exact round trips, atomic saves (a process killed inside a save), and vi.fit resume."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from symvi_jax import PermutationGroup, _checks, checkpoint, likelihoods, vi
from fixtures import make_mlp

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def assert_bitwise_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(leaves_a, leaves_b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


@pytest.fixture(scope="module")
def problem():
    """A tiny classification problem and one algorithm, shared so that fit compiles once per module."""
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    model, params = make_mlp(k1, 3, (4, 3))
    loglik = likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))
    x = jax.random.normal(k2, (40, 3))
    y = jax.random.randint(k3, (40,), 0, 3)
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=40, objective="symmetrized_elbo",
                         group=PermutationGroup.from_params(params), num_permutations=3)
    state = jax.jit(algorithm.init)(params)
    # 40 // 6 = 6 steps per epoch, 4 epochs: 24 steps
    fit = lambda rng_key, **kw: vi.fit(rng_key, algorithm, state, (x, y), num_epochs=4, batch_size=6,  # noqa: E731
                                       progress_bar=False, **kw)
    reference = fit(jax.random.key(7))
    return dict(algorithm=algorithm, state=state, data=(x, y), fit=fit, reference=reference)


def test_round_trip_is_exact_for_state_key_and_history(tmp_path, problem):
    state, history = problem["reference"]
    key = jax.random.key(123)
    ckpt = checkpoint.TrainingCheckpoint(state, key, 24, jax.device_get(history), {"note": "x", "lr": 0.01})
    assert checkpoint.save(tmp_path / "c", ckpt) == 24
    assert checkpoint.latest_step(tmp_path / "c") == 24
    restored = checkpoint.restore(tmp_path / "c", problem["state"], history=jax.device_get(history))
    assert_bitwise_equal(restored.state, state)
    assert_bitwise_equal(restored.history, jax.device_get(history))
    assert type(restored.state) is vi.VIState and type(restored.state.q) is type(state.q)
    assert jax.dtypes.issubdtype(restored.rng_key.dtype, jax.dtypes.prng_key)
    assert np.array_equal(jax.random.key_data(restored.rng_key), jax.random.key_data(key))
    assert restored.step == 24 and restored.metadata == {"note": "x", "lr": 0.01}
    # a legacy uint32 key comes back as one
    checkpoint.save(tmp_path / "c", ckpt._replace(rng_key=jax.random.PRNGKey(5), step=25))
    legacy = checkpoint.restore(tmp_path / "c", problem["state"])
    assert legacy.rng_key.dtype == jnp.uint32 and np.array_equal(legacy.rng_key, jax.random.PRNGKey(5))


def test_restore_refuses_a_template_that_does_not_fit(tmp_path, problem):
    state, _ = problem["reference"]
    checkpoint.save(tmp_path, checkpoint.TrainingCheckpoint(state, jax.random.key(0), 3))
    wider = jax.tree.map(lambda x: jnp.zeros(x.shape + (1,), x.dtype), state)
    with pytest.raises(ValueError, match="does not fit the state template"):
        checkpoint.restore(tmp_path, wider)
    as_float64 = jax.tree.map(lambda x: np.zeros(x.shape, np.float64 if x.dtype == jnp.float32 else x.dtype), state)
    with pytest.raises(ValueError, match="float32"):  # no silent cast
        checkpoint.restore(tmp_path, as_float64)
    with pytest.raises(ValueError, match="holds no history"):
        checkpoint.restore(tmp_path, state, history=np.zeros(3))
    with pytest.raises(ValueError, match="no checkpoint for step 4"):
        checkpoint.restore(tmp_path, state, step=4)
    with pytest.raises(ValueError, match="already exists"):
        checkpoint.save(tmp_path, checkpoint.TrainingCheckpoint(state, jax.random.key(0), 3))
    with pytest.raises(ValueError, match="JSON"):
        checkpoint.save(tmp_path, checkpoint.TrainingCheckpoint(state, jax.random.key(0), 5, metadata={"x": object()}))
    with pytest.raises(ValueError, match="step must be a non-negative int"):
        checkpoint.save(tmp_path, checkpoint.TrainingCheckpoint(state, jax.random.key(0), -1))
    with pytest.raises(ValueError, match="no checkpoint in"):
        checkpoint.restore(tmp_path / "empty", state)
    assert checkpoint.latest_step(tmp_path / "missing") is None
    assert not (tmp_path / "missing").exists()  # reading never creates anything


CRASH_IN_SAVE = """
import os, sys
import numpy as np, jax
from symvi_jax import checkpoint
directory = sys.argv[1]
state = {"w": np.arange(6, dtype=np.float32)}
checkpoint.save(directory, checkpoint.TrainingCheckpoint(state, jax.random.key(0), 1, metadata={"n": 1}))
# The process dies inside the next save, after every file is written and just before orbax's
# atomic rename of the temporary folder: the worst moment for a checkpoint.
from orbax.checkpoint._src.path import async_path
async def crash(src, dst):
    os._exit(17)
async_path.rename = crash
checkpoint.save(directory, checkpoint.TrainingCheckpoint({"w": state["w"] + 1}, jax.random.key(0), 2, metadata={"n": 2}))
"""


def test_a_crash_inside_a_save_leaves_the_previous_checkpoint_intact(tmp_path):
    directory = tmp_path / "ckpt"
    done = subprocess.run([sys.executable, "-c", CRASH_IN_SAVE, str(directory)], env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 17, done.stderr[-2000:]  # it really died inside the second save
    leftovers = [p.name for p in directory.iterdir() if "tmp" in p.name]
    assert leftovers, sorted(p.name for p in directory.iterdir())  # the half-finished save is on disk...
    assert checkpoint.latest_step(directory) == 1  # ...but is not a checkpoint
    template = {"w": np.zeros(6, np.float32)}
    restored = checkpoint.restore(directory, template)
    assert restored.step == 1 and restored.metadata == {"n": 1}
    np.testing.assert_array_equal(restored.state["w"], np.arange(6, dtype=np.float32))
    # opening the folder for writing removes the leftovers; saving step 2 again works
    checkpoint.save(directory, checkpoint.TrainingCheckpoint({"w": np.ones(6, np.float32)}, jax.random.key(0), 2))
    assert not [p for p in directory.iterdir() if "tmp" in p.name]
    assert checkpoint.latest_step(directory) == 2


def test_checkpointing_does_not_change_the_result(tmp_path, problem):
    state, history = problem["fit"](jax.random.key(7), checkpoint_dir=tmp_path, checkpoint_every=5)
    assert_bitwise_equal((state, history), problem["reference"])
    assert checkpoint.Checkpointer(tmp_path).all_steps() == [20, 24]  # max_to_keep = 2; the last step is saved
    assert checkpoint.is_finished(tmp_path)


def test_resume_from_a_mid_epoch_checkpoint_is_bitwise_identical(tmp_path, problem):
    problem["fit"](jax.random.key(7), checkpoint_dir=tmp_path, checkpoint_every=5)
    shutil.rmtree(tmp_path / "24")  # as if the run had died after step 20 = epoch 3, step 2 of 6
    assert checkpoint.latest_step(tmp_path) == 20 and not checkpoint.is_finished(tmp_path)
    with pytest.raises(ValueError, match="pass resume=True"):
        problem["fit"](jax.random.key(7), checkpoint_dir=tmp_path)
    resumed = problem["fit"](jax.random.key(7), checkpoint_dir=tmp_path, checkpoint_every=5, resume=True)
    assert_bitwise_equal(resumed, problem["reference"])
    assert checkpoint.is_finished(tmp_path)


def test_resuming_a_finished_run_returns_it_without_training(tmp_path, problem):
    problem["fit"](jax.random.key(7), checkpoint_dir=tmp_path)
    algorithm = problem["algorithm"]
    # fit traces step once to check the data; training would trace it a second time
    counted = vi.VIAlgorithm(algorithm.init, chex.assert_max_traces(algorithm.step, n=1), algorithm.sample)
    x, y = problem["data"]
    resumed = vi.fit(jax.random.key(7), counted, problem["state"], (x, y), num_epochs=4, batch_size=6,
                     progress_bar=False, checkpoint_dir=tmp_path, resume=True)
    assert_bitwise_equal(resumed, problem["reference"])


def test_resume_with_more_epochs_extends_a_finished_run_bitwise(tmp_path, problem):
    """4 epochs, then resume=True with num_epochs=6: bitwise the run that asked for 6 from the start."""
    algorithm, state, data = problem["algorithm"], problem["state"], problem["data"]
    six = lambda **kw: vi.fit(jax.random.key(7), algorithm, state, data, num_epochs=6, batch_size=6,  # noqa: E731
                              progress_bar=False, **kw)
    problem["fit"](jax.random.key(7), checkpoint_dir=tmp_path)
    assert checkpoint.is_finished(tmp_path)
    extended = six(checkpoint_dir=tmp_path, resume=True)
    direct = six()
    assert_bitwise_equal(extended, direct)
    assert checkpoint.latest_step(tmp_path) == 36 and checkpoint.is_finished(tmp_path)
    # epoch e does not depend on the run length: the 4-epoch run is the start of the 6-epoch one
    reference_state, reference_history = problem["reference"]
    assert_bitwise_equal(jax.tree.map(lambda h: h[:4], direct[1]), reference_history)
    assert not np.array_equal(np.asarray(direct[1].objective[4:]), 0)  # the new epochs did train


def test_resume_with_fewer_epochs_that_the_checkpoint_has_reached(tmp_path, problem):
    problem["fit"](jax.random.key(7), checkpoint_dir=tmp_path, checkpoint_every=6)
    shutil.rmtree(tmp_path / "24")  # the latest checkpoint is now the end of epoch 3 (step 18)
    algorithm, state, data = problem["algorithm"], problem["state"], problem["data"]
    counted = vi.VIAlgorithm(algorithm.init, chex.assert_max_traces(algorithm.step, n=1), algorithm.sample)
    three = vi.fit(jax.random.key(7), counted, state, data, num_epochs=3, batch_size=6, progress_bar=False,
                   checkpoint_dir=tmp_path, resume=True)  # finished at 18 steps: no training
    direct = vi.fit(jax.random.key(7), algorithm, state, data, num_epochs=3, batch_size=6, progress_bar=False)
    assert_bitwise_equal(three, direct)


def test_refusals_name_the_cli_flags(tmp_path, problem):
    problem["fit"](jax.random.key(7), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"pass resume=True \(CLI: --resume\).*\(CLI: another --out\)"):
        problem["fit"](jax.random.key(7), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"rng_key differs.*CLI: another --out, without --resume"):
        problem["fit"](jax.random.key(8), checkpoint_dir=tmp_path, resume=True)


def test_resume_refuses_checkpoints_with_the_old_epoch_keys(tmp_path, problem):
    """Checkpoints from before fold_in epoch keys would continue with other keys: refused."""
    state, history = problem["reference"]
    fit_record = {"num_epochs": 4, "batch_size": 6, "num_examples": 40, "steps_per_epoch": 6, "total_steps": 24,
                  "data_sha256": _checks.data_digest(problem["data"])}  # as saved before: no "epoch_keys"
    checkpoint.save(tmp_path, checkpoint.TrainingCheckpoint(state, jax.random.key(7), 12, jax.device_get(history),
                                                            {"fit": fit_record, "config": None}))
    with pytest.raises(ValueError, match=r"epoch_keys: saved None, now 'fold_in\(rng_key, epoch\)'"):
        problem["fit"](jax.random.key(7), checkpoint_dir=tmp_path, resume=True)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(rng_key=jax.random.key(8)), "rng_key differs"),
        (dict(batch_size=5), "batch_size"),
        (dict(num_epochs=3), r"past the 18 steps of num_epochs=3; resume with num_epochs >= 4"),
        (dict(data_shift=1.0), "data_sha256"),
        (dict(checkpoint_metadata={"lr": 0.1}), "checkpoint_metadata differs"),
    ],
)
def test_resume_refuses_a_different_run(tmp_path, problem, change, message):
    x, y = problem["data"]
    run = dict(rng_key=jax.random.key(7), batch_size=6, num_epochs=4, checkpoint_metadata={"lr": 0.01})
    vi.fit(run["rng_key"], problem["algorithm"], problem["state"], (x, y), num_epochs=4, batch_size=6,
           progress_bar=False, checkpoint_dir=tmp_path, checkpoint_metadata=run["checkpoint_metadata"])
    run.update(change)
    data = (x + run.pop("data_shift", 0.0), y)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match=message):
        vi.fit(run["rng_key"], problem["algorithm"], problem["state"], data, num_epochs=run["num_epochs"],
               batch_size=run["batch_size"], progress_bar=False, checkpoint_dir=tmp_path,
               checkpoint_metadata=run["checkpoint_metadata"], resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
