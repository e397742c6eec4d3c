"""``fit``: :func:`vi.run`'s training loop with validation, checkpoints, a progress bar and resume.

``vi`` holds the algorithm (``build``, ``init``, ``step``, ``sample``, the pure ``run``); this
module is the host-side shell around it. ``vi.fit`` and ``vi.NonFiniteError`` are these names.

Randomness is a pure function of ``rng_key``: epoch e uses ``key_e = fold_in(rng_key, e)``, its
data order is ``permutation(split(key_e)[0], N)`` (the last incomplete minibatch is dropped, so
every step has the same shapes) and step i of the epoch uses ``split(split(key_e)[1], N // batch_size)[i]``.
Epoch e does not depend on ``num_epochs``, so the first E epochs of a longer run are exactly an
E-epoch run. The steps run inside one jit-compiled ``lax.while_loop`` over a range of steps of an
epoch, with the data resident on the device; it is compiled once and reused for every epoch,
every range and every ``num_epochs``.

Checks before training (nothing is compiled or written when one fails):

* ``data_size``: the algorithm scales each minibatch sum by N / M with the N given to
  ``vi.build``; if N differs from ``len(data)`` the likelihood is silently over- or
  under-weighted against the KL (N = 60000 on 400 points weights it 150x). This is refused
  unless ``allow_data_size_mismatch=True``, which is meant for a deliberate mismatch, e.g.
  ``data`` is one shard of a larger training set of size N, or an intended reweighting (a
  likelihood temperature says that more plainly).
* The likelihood's own ``check_batch(params, data)``, when it has one (every builder in
  ``symvi_jax.likelihoods`` does), on the whole data set with the mean of q: labels outside the
  network's classes would give a NaN or a wrong objective under jit, not an error.
* The group: f(g.w) = f(w) on the first inputs at the mean of q (``WeightSymmetry.check``).

Checkpoints: with ``checkpoint_dir`` the state, the key, the number of steps done and the
history so far are saved (``symvi_jax.checkpoint``, atomic) every ``checkpoint_every`` steps
(default: once per epoch, also mid-epoch if it does not divide the epoch) and after the last
step. ``resume=True`` continues from the latest checkpoint there: since the data order and the
step keys depend only on ``(rng_key, epoch)``, the resumed run executes exactly the steps the
uninterrupted run would have, and the final state and history are bitwise identical on the same
machine (``tests/test_checkpoint.py``). A finished run is returned without training, so a sweep
that re-runs every configuration with ``resume=True`` skips the finished ones. Resuming with a
larger ``num_epochs`` extends the run (a finished one included): the result is bitwise the run
that had asked for that many epochs from the start. A smaller ``num_epochs`` is accepted while
the checkpoint has not passed it.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import _checks, _optional, prng
from symvi_jax.types import PRNGKey
from symvi_jax.vi import VIAlgorithm, VIInfo, VIState

__all__ = ["NonFiniteError", "fit"]


class NonFiniteError(FloatingPointError):
    """Raised by :func:`fit` when the objective or its gradient stops being finite.

    ``err.state`` is the last finite state, ``err.step`` the number of the offending step.
    """


#: How epoch keys derive from fit's rng_key; recorded in checkpoints, since runs saved with
#: another rule (``split(rng_key, num_epochs)[e]`` before extending runs was possible) differ.
_EPOCH_KEYS = "fold_in(rng_key, epoch)"

#: Fit-record entries that may change on resume: the run's length (resume extends or shortens it).
_RUN_LENGTH = ("num_epochs", "total_steps")

_START_AFRESH = "; to start a new run use an empty checkpoint_dir (CLI: another --out, without --resume)"


class _Plan(NamedTuple):
    """The validated shape of a run: how many steps, and when to checkpoint."""

    num_epochs: int
    batch_size: int
    num_examples: int
    num_batches: int
    checkpoint_every: Optional[int]
    checkpoint_metadata: Any
    progress_bar: bool

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.num_batches


def fit(
    rng_key: PRNGKey,
    algorithm: VIAlgorithm,
    state: VIState,
    data: tuple,
    *,
    num_epochs: int,
    batch_size: int,
    progress_bar: Optional[bool] = None,
    checkpoint_dir: Optional[Union[str, os.PathLike]] = None,
    checkpoint_every: Optional[int] = None,
    resume: bool = False,
    checkpoint_metadata: Optional[Mapping[str, Any]] = None,
    allow_data_size_mismatch: bool = False,
) -> tuple[VIState, VIInfo]:
    """Train for ``num_epochs`` passes over ``data`` in shuffled minibatches, optionally checkpointed.

    The key schedule, the checks made before training and the checkpoint and resume rules are in
    the module docstring (``symvi_jax.training``). This helper jits internally.

    Args:
      rng_key: randomness for shuffling and for every step.
      algorithm: from ``vi.build``.
      state: from ``algorithm.init``. When resuming, only its structure, shapes and dtypes are
        used (as the template the checkpoint is read into).
      data: ``(inputs, targets)`` arrays with the same leading size N (numeric, finite).
      num_epochs, batch_size: positive ints, ``batch_size <= N``.
      progress_bar: show a tqdm bar over epochs. None (the default): show one if tqdm is
        installed (the ``progress`` extra); True requires it.
      checkpoint_dir: folder for the checkpoints of this run (one run per folder).
      checkpoint_every: save every this many steps (a positive int; needs ``checkpoint_dir``).
      resume: continue from the latest checkpoint in ``checkpoint_dir`` if there is one. If it
        holds checkpoints and ``resume`` is False, fit refuses to start rather than mix two runs.
        (The CLI's ``--resume`` sets it.)
      checkpoint_metadata: a JSON-serialisable dict saved with every checkpoint (e.g. the
        experiment's config); resuming with a different one is refused.
      allow_data_size_mismatch: accept ``algorithm.data_size != len(data)``.

    Returns:
      The final state and the per-step ``VIInfo`` stacked to shape ``(num_epochs, N // batch_size)``.

    Raises:
      NonFiniteError: naming the first step whose objective, gradient or updated parameters were
        not finite (unless the algorithm was built with ``skip_nonfinite=True``, which skips and
        counts such steps in ``info.skipped``). Training stops there; ``err.state`` is the state
        before that step, ``err.step`` its number (0-based, counted over all epochs).
      ValueError: on bad arguments or data (a ``data_size`` other than ``len(data)``, labels the
        likelihood rejects), or a checkpoint that belongs to another run (a different key, data,
        batch size or ``checkpoint_metadata``, or one already past ``num_epochs``).
    """
    plan = _check_arguments(rng_key, algorithm, data, num_epochs, batch_size, progress_bar, checkpoint_dir,
                            checkpoint_every, resume, checkpoint_metadata, allow_data_size_mismatch)
    data = jax.tree.map(jnp.asarray, data)
    _check_before_training(algorithm, state, data)
    history, info_buffer = _history_buffers(algorithm, rng_key, state, data, plan)
    if checkpoint_dir is None:
        return _train(rng_key, algorithm, state, data, history, info_buffer, plan, done=0, checkpointer=None,
                      record=None)
    from symvi_jax import checkpoint

    with checkpoint.Checkpointer(checkpoint_dir) as checkpointer:
        record = _fit_record(data, plan)
        state, history, done = _start_or_resume(checkpointer, checkpoint_dir, resume, state, history, rng_key,
                                                 record, plan.checkpoint_metadata)
        return _train(rng_key, algorithm, state, data, history, info_buffer, plan, done=done,
                      checkpointer=checkpointer, record=record)


def _check_arguments(rng_key, algorithm, data, num_epochs, batch_size, progress_bar, checkpoint_dir,
                     checkpoint_every, resume, checkpoint_metadata, allow_data_size_mismatch) -> _Plan:
    """Every argument check that needs no compilation; returns the run's :class:`_Plan`."""
    _checks.positive_int(num_epochs, "num_epochs")
    _checks.positive_int(batch_size, "batch_size")
    if progress_bar is not None and not isinstance(progress_bar, bool):
        raise ValueError(f"progress_bar must be True, False or None, got {progress_bar!r}")
    if progress_bar is None:
        progress_bar = _optional.available("tqdm")
    if not isinstance(algorithm, VIAlgorithm):
        raise ValueError(f"algorithm must be a VIAlgorithm from vi.build, got {type(algorithm).__name__}")
    _checks.rng_key(rng_key)
    size = _checks.finite_data(data)
    if batch_size > size:
        raise ValueError(f"batch_size ({batch_size}) must not exceed the number of examples ({size})")
    num_batches = size // batch_size
    if checkpoint_dir is None:
        for name, value in (("checkpoint_every", checkpoint_every), ("checkpoint_metadata", checkpoint_metadata)):
            if value is not None:
                raise ValueError(f"{name} needs checkpoint_dir")
        if resume:
            raise ValueError("resume=True needs checkpoint_dir")
    else:
        if checkpoint_every is None:
            checkpoint_every = num_batches
        _checks.positive_int(checkpoint_every, "checkpoint_every")
        if not isinstance(resume, bool):
            raise ValueError(f"resume must be True or False, got {resume!r}")
        if checkpoint_metadata is not None and not isinstance(checkpoint_metadata, Mapping):
            raise ValueError(f"checkpoint_metadata must be a dict, got {type(checkpoint_metadata).__name__}")
        checkpoint_metadata = _jsonable(checkpoint_metadata, "checkpoint_metadata")
    if not isinstance(allow_data_size_mismatch, bool):
        raise ValueError(f"allow_data_size_mismatch must be True or False, got {allow_data_size_mismatch!r}")
    if not allow_data_size_mismatch:
        _check_data_size(algorithm.data_size, size, batch_size)
    return _Plan(num_epochs, batch_size, size, num_batches, checkpoint_every, checkpoint_metadata, progress_bar)


def _check_before_training(algorithm: VIAlgorithm, state, data) -> None:
    """The likelihood's label checks and the group's invariance, on the whole data set, eagerly."""
    _check_likelihood_data(algorithm.loglikelihood_fn, state, data)
    _check_group_invariance(algorithm, state, data)


def _history_buffers(algorithm, rng_key, state, data, plan: _Plan):
    """Host buffers for the run's history and for one epoch's infos, sized by an abstract step.

    The abstract evaluation on the whole data set also runs the shape checks, and label-range
    checks on the concrete (closed-over) targets, without computing anything.
    """
    _, info_shapes = jax.eval_shape(lambda s: algorithm.step(rng_key, s, data), state)
    history = jax.tree.map(lambda s: np.zeros((plan.num_epochs, plan.num_batches) + s.shape, s.dtype), info_shapes)
    info_buffer = jax.tree.map(lambda s: np.zeros((plan.num_batches,) + s.shape, s.dtype), info_shapes)
    return history, info_buffer


def _fit_record(data, plan: _Plan) -> dict:
    """What identifies a run in its checkpoints (resuming with another record is refused)."""
    return {
        "num_epochs": plan.num_epochs,
        "batch_size": plan.batch_size,
        "num_examples": plan.num_examples,
        "steps_per_epoch": plan.num_batches,
        "total_steps": plan.total_steps,
        "data_sha256": _checks.data_digest(data),
        "epoch_keys": _EPOCH_KEYS,
    }


def _start_or_resume(checkpointer, checkpoint_dir, resume, state, history, rng_key, record, config):
    """(state, history, steps done): fresh if the folder is empty, else resumed (``resume=True`` only)."""
    latest = checkpointer.latest_step()
    if latest is None:
        return state, history, 0
    if not resume:
        raise ValueError(
            f"checkpoint_dir {checkpoint_dir} already holds checkpoints (latest step {latest}); "
            "pass resume=True (CLI: --resume) to continue or extend that run, or use an empty "
            "directory (CLI: another --out)"
        )
    return _resume(checkpointer, state, history, rng_key, record, config)


def _train(rng_key, algorithm, state, data, history, info_buffer, plan: _Plan, *, done, checkpointer, record):
    """Run the remaining steps range by range, checkpointing and updating the bar between ranges."""
    run_steps = functools.partial(_run_steps, algorithm, plan.batch_size)
    bar = _progress_bar(plan, done)
    try:
        while done < plan.total_steps:
            epoch, start = divmod(done, plan.num_batches)
            stop = plan.num_batches
            if checkpointer is not None:
                stop = min(stop, start + plan.checkpoint_every - done % plan.checkpoint_every)
            state, bad_step, infos = run_steps(state, rng_key, data, info_buffer, start, stop, epoch)
            infos = jax.device_get(infos)
            for buffer, values in zip(jax.tree.leaves(history), jax.tree.leaves(infos)):
                buffer[epoch, start:stop] = values[start:stop]
            _raise_if_nonfinite(int(bad_step), epoch, state)
            done = epoch * plan.num_batches + stop
            if checkpointer is not None and (done % plan.checkpoint_every == 0 or done == plan.total_steps):
                _save(checkpointer, state, rng_key, done, history, record, plan.checkpoint_metadata)
            if bar is not None and stop == plan.num_batches:
                _update_bar(bar, history, epoch)
    finally:
        if bar is not None:
            bar.close()
    return state, jax.tree.map(jnp.asarray, history)


def _raise_if_nonfinite(bad_step: int, epoch: int, state) -> None:
    if bad_step < 0:
        return
    error = NonFiniteError(
        f"the objective, its gradient or the updated parameters became non-finite at step "
        f"{bad_step} (epoch {epoch}); the last finite state is attached as err.state "
        "(build(..., skip_nonfinite=True) skips such steps instead)"
    )
    error.state = state
    error.step = bad_step
    raise error


def _save(checkpointer, state, rng_key, done, history, record, config) -> None:
    from symvi_jax import checkpoint

    checkpointer.save(checkpoint.TrainingCheckpoint(state, rng_key, done, history, {"fit": record, "config": config}))


def _progress_bar(plan: _Plan, done: int):
    if not plan.progress_bar:
        return None
    tqdm = _optional.require("tqdm.auto", extra="progress", feature="vi.fit(progress_bar=True)").tqdm
    return tqdm(total=plan.num_epochs, initial=done // plan.num_batches, desc="fit", unit="epoch")


def _update_bar(bar, history, epoch: int) -> None:
    bar.update(1)
    skipped = int(np.sum(history.skipped[: epoch + 1])) if hasattr(history, "skipped") else 0
    bar.set_postfix(objective=f"{float(np.mean(history.objective[epoch])):.4g}", skipped=skipped)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run_steps(algorithm, batch_size, state, rng_key, data, infos, start, stop, epoch):
    """Steps ``start .. stop - 1`` of epoch ``epoch`` (see :func:`fit`), stopping at the first non-finite one.

    Compiled once per (algorithm, batch_size, shapes), reused for every epoch, range and run length.
    """
    size = jax.tree.leaves(data)[0].shape[0]
    num_batches = size // batch_size
    epoch_key = jax.random.fold_in(rng_key, epoch)
    key_order, key_steps = prng.split(epoch_key)
    order = prng.permutation(key_order, size)[: num_batches * batch_size].reshape(num_batches, batch_size)
    step_keys = prng.split(key_steps, num_batches)

    def cond(carry):
        index, _, bad_step, _ = carry
        return (index < stop) & (bad_step < 0)

    def body(carry):
        index, state, bad_step, infos = carry
        batch = jax.tree.map(lambda x: jnp.take(x, order[index], axis=0), data)
        new_state, info = algorithm.step(step_keys[index], state, batch)
        finite = jnp.isfinite(info.objective) & _checks.all_finite((new_state.q, new_state.hyper))
        finite = finite | jnp.asarray(getattr(info, "skipped", False))  # a skipped step kept the old state
        state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        bad_step = jnp.where(finite, bad_step, epoch * num_batches + index)
        infos = jax.tree.map(lambda buffer, x: buffer.at[index].set(x), infos, info)
        return index + 1, state, bad_step, infos

    carry = (jnp.asarray(start), state, jnp.asarray(-1), infos)
    _, state, bad_step, infos = jax.lax.while_loop(cond, body, carry)
    return state, bad_step, infos


def _check_data_size(data_size: Optional[int], size: int, batch_size: int) -> None:
    """Refuse an algorithm whose likelihood scale N / M was built for another number of examples."""
    if data_size is None or data_size == size:
        return
    raise ValueError(
        f"data_size mismatch: the algorithm was built with data_size={data_size} but data holds {size} "
        f"examples, so each minibatch log-likelihood would be scaled by {data_size}/{batch_size} instead of "
        f"{size}/{batch_size} ({data_size / size:.3g}x the weight of the data against the KL). Build with "
        f"data_size={size}, or pass allow_data_size_mismatch=True to fit if the mismatch is deliberate "
        "(e.g. data is one shard of a larger training set)"
    )


def _check_likelihood_data(loglikelihood_fn, state, data) -> None:
    """Run the likelihood's eager ``check_batch`` on the whole data set, with the mean of q."""
    check = getattr(loglikelihood_fn, "check_batch", None)
    if check is None:
        return
    params = getattr(getattr(state, "q", None), "loc", None)
    if params is None:
        return  # not a mean-field VIState: the abstract evaluation below still checks shapes
    check(params, data)


def _check_group_invariance(algorithm: VIAlgorithm, state, data) -> None:
    """f(g.w) == f(w) on the first inputs, at the mean of q, before the first step (``WeightSymmetry.check``)."""
    apply_fn = getattr(algorithm.loglikelihood_fn, "apply_fn", None)
    params = getattr(getattr(state, "q", None), "loc", None)
    if algorithm.group is None or apply_fn is None or params is None or not isinstance(data, (tuple, list)):
        return
    inputs = jax.tree.map(lambda x: x[:8], data[0])
    try:
        algorithm.group.check(apply_fn, params, inputs)
    except ValueError as err:
        raise ValueError(f"group: {err} (checked by vi.fit before the first step)") from None


def _jsonable(value, name):
    if value is None:
        return None
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be JSON-serialisable with finite numbers: {err}") from None


def _resume(checkpointer, state, history, rng_key, fit_record, config):
    """Restore the latest checkpoint after checking that it belongs to this run.

    The run may be longer than the checkpointed one (it is extended) or shorter, as long as the
    checkpoint has not passed its last step; the history is copied into this run's buffer.
    """
    step = checkpointer.latest_step()
    saved = checkpointer.read_metadata(step)["user"]
    saved_fit = saved.get("fit", {})
    changed = sorted(k for k in fit_record if k not in _RUN_LENGTH and saved_fit.get(k) != fit_record[k])
    if changed:
        detail = ", ".join(f"{k}: saved {saved_fit.get(k)!r}, now {fit_record[k]!r}" for k in changed)
        raise ValueError(
            f"cannot resume from {checkpointer.directory}: the run differs from the checkpointed one ({detail})"
            + _START_AFRESH
        )
    if saved.get("config") != config:
        raise ValueError(
            f"cannot resume from {checkpointer.directory}: checkpoint_metadata differs from the checkpointed "
            f"run's (saved {saved.get('config')!r}, now {config!r})" + _START_AFRESH
        )
    if step > fit_record["total_steps"]:
        steps_per_epoch = fit_record["steps_per_epoch"]
        raise ValueError(
            f"cannot resume from {checkpointer.directory}: its checkpoint is at step {step}, past the "
            f"{fit_record['total_steps']} steps of num_epochs={fit_record['num_epochs']}; resume with "
            f"num_epochs >= {-(-step // steps_per_epoch)}" + _START_AFRESH
        )
    saved_epochs = saved_fit.get("num_epochs", fit_record["num_epochs"])
    saved_history = jax.tree.map(lambda h: np.zeros((saved_epochs,) + h.shape[1:], h.dtype), history)
    restored = checkpointer.restore(state, history=saved_history, step=step)
    saved_key, _ = _checks.key_to_data(restored.rng_key)
    given_key, _ = _checks.key_to_data(rng_key)
    if not np.array_equal(saved_key, given_key):
        raise ValueError(
            f"cannot resume from {checkpointer.directory}: rng_key differs from the checkpointed run's key"
            + _START_AFRESH
        )
    kept = min(saved_epochs, fit_record["num_epochs"])
    for buffer, values in zip(jax.tree.leaves(history), jax.tree.leaves(restored.history)):
        buffer[:kept] = np.asarray(values)[:kept]
    return restored.state, history, int(restored.step)

