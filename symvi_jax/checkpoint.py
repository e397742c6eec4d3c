"""Checkpoints of a training run that lose nothing, saved and restored with orbax.

A checkpoint (:class:`TrainingCheckpoint`) holds everything a run needs to continue exactly where
it stopped:

* ``state``: the ``vi.VIState`` (variational parameters, optimiser state and learned
  hyperparameters), bit for bit. A checkpoint written before ``VIState.params`` was renamed
  ``q`` restores into today's ``VIState`` (with no hyperparameters);
* ``rng_key``: the key the run was started with (a typed key is stored as ``jax.random.key_data``
  plus the name of its implementation, and rebuilt with ``jax.random.wrap_key_data``);
* ``step``: the number of steps done. ``vi.fit`` derives the data order of epoch e and the key of
  every step from ``(rng_key, e)`` alone, so ``(rng_key, step)`` fixes the epoch, the position in
  it, the rest of that epoch's data order and every remaining step key;
* ``history``: the per-step info of the steps done so far (optional), so that a resumed run
  returns the same history as an uninterrupted one;
* ``metadata``: a JSON dict for whatever the caller checks on resume (``vi.fit`` stores the batch
  size, the number of epochs and a digest of the data, and refuses to resume if they changed).

Atomicity: orbax writes step ``s`` into a temporary folder ``s.orbax-checkpoint-tmp-*`` and
renames it to ``s`` only after every file is on disk. Temporary folders are never listed as
checkpoints, and opening a directory for writing deletes those left by a crash, so a save either
completes or leaves the previous checkpoint as the latest one (``tests/test_checkpoint.py``
kills a process inside a save to check this).

Nothing is pickled: orbax stores arrays with tensorstore and the metadata as JSON.

Example:
  >>> with Checkpointer(directory) as checkpointer:               # doctest: +SKIP
  ...     checkpointer.save(TrainingCheckpoint(state, rng_key, step, history, {"lr": 1e-3}))
  ...     restored = checkpointer.restore(state, history=history)   # the latest step
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import _checks
from symvi_jax.types import ArrayTree, PRNGKey

__all__ = ["TrainingCheckpoint", "Checkpointer", "save", "restore", "latest_step", "read_metadata", "is_finished"]

#: Bumped when the layout of a checkpoint changes; restoring another version is refused.
FORMAT_VERSION = 1

#: The orbax items of a checkpoint: arrays of the state and key, the history, the JSON record.
ITEMS = ("state", "history", "metadata")


class TrainingCheckpoint(NamedTuple):
    """What a checkpoint holds (see the module docstring)."""

    state: ArrayTree
    rng_key: PRNGKey
    step: int
    history: Optional[ArrayTree] = None
    metadata: Mapping[str, Any] = {}


def _key_from_data(data, impl: Optional[str]):
    data = jnp.asarray(data)
    return data if impl is None else jax.random.wrap_key_data(data, impl=impl)


def _check_step(step) -> int:
    if not _checks.is_int(step) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    return int(step)


def _check_directory(directory) -> Path:
    if not isinstance(directory, (str, os.PathLike)) or not str(directory):
        raise ValueError(f"checkpoint directory must be a non-empty path, got {directory!r}")
    path = Path(directory).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"checkpoint directory {directory} exists and is not a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"checkpoint directory {directory}: {parent} is a file, not a directory")
            break
    return path


class Checkpointer:
    """Saves and restores :class:`TrainingCheckpoint` s in one directory (one sub-folder per step).

    A thin driver around ``orbax.checkpoint.CheckpointManager`` with synchronous saves. It keeps
    the ``max_to_keep`` newest checkpoints. Use it as a context manager, or call :meth:`close`.

    Args:
      directory: where the step folders live; created on the first save.
      max_to_keep: how many of the newest checkpoints to keep (>= 1).
      read_only: only list and restore; never create, write or clean up anything.
    """

    def __init__(self, directory, *, max_to_keep: int = 2, read_only: bool = False):
        from symvi_jax import _optional

        ocp = _optional.require("orbax.checkpoint", extra="checkpoint", feature="symvi_jax.checkpoint")

        _checks.positive_int(max_to_keep, "max_to_keep")
        self.directory = _check_directory(directory)
        self._ocp = ocp
        self.read_only = bool(read_only)
        self._manager = None
        if not self.read_only or self.directory.is_dir():
            self._manager = self._open(max_to_keep)

    def _open(self, max_to_keep):
        ocp = self._ocp
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=False,
            # Leftovers of a save that crashed: never listed as steps; delete them when we write.
            cleanup_tmp_directories=not self.read_only,
            enable_async_checkpointing=False,
            save_root_metadata=False,
        )
        if not self.read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
        return ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)

    # ---- listing -------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """The steps of every complete checkpoint, oldest first."""
        if self._manager is None:
            return []
        self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> Optional[int]:
        """The newest complete checkpoint's step, or None if there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    # ---- save / restore ------------------------------------------------------------------------
    def save(self, checkpoint: TrainingCheckpoint) -> int:
        """Write ``checkpoint`` as step ``checkpoint.step``; returns the step.

        The folder appears only once it is complete (see the module docstring).

        Raises:
          ValueError: on a negative step, a step that already exists, metadata that is not JSON,
            or a read-only checkpointer.
        """
        if self.read_only or self._manager is None:
            raise ValueError(f"checkpointer for {self.directory} is read-only")
        step = _check_step(checkpoint.step)
        if step in self.all_steps():
            raise ValueError(f"a checkpoint for step {step} already exists in {self.directory}")
        metadata = dict(checkpoint.metadata or {})
        key_data, key_impl = _checks.key_to_data(checkpoint.rng_key)
        record = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "rng_key_impl": key_impl,
            "has_history": checkpoint.history is not None,
            # shapes and dtypes of every leaf, so that restore can refuse a template that would
            # silently cast or reshape (orbax casts to the template's dtype).
            "signature": {"state": _signature(checkpoint.state), "history": _signature(checkpoint.history)},
            "user": metadata,
        }
        try:
            json.dumps(record, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"checkpoint metadata must be JSON-serialisable (finite numbers): {err}") from None
        ocp = self._ocp
        items = {
            "state": ocp.args.StandardSave({"state": checkpoint.state, "rng_key": key_data}),
            "metadata": ocp.args.JsonSave(record),
        }
        if checkpoint.history is not None:
            items["history"] = ocp.args.StandardSave(checkpoint.history)
        self._manager.save(step, args=ocp.args.Composite(**items))
        self._manager.wait_until_finished()
        return step

    def read_metadata(self, step: Optional[int] = None) -> dict:
        """The JSON record of a checkpoint (the latest by default); the caller's dict is ``["user"]``."""
        step = self._resolve_step(step)
        ocp = self._ocp
        restored = self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
        return dict(restored.metadata)

    def restore(self, state: ArrayTree, *, history: Optional[ArrayTree] = None,
                step: Optional[int] = None) -> TrainingCheckpoint:
        """Read a checkpoint (the latest by default) into the structure of ``state`` (and ``history``).

        Args:
          state: a template with the saved state's tree structure, shapes and dtypes (e.g. the
            freshly initialised state); its values are not used.
          history: a template for the history, if the checkpoint has one and you want it.
          step: which checkpoint; None for the latest.

        Raises:
          ValueError: if there is no checkpoint, the step does not exist, the format version
            differs, or the saved arrays do not fit the templates.
        """
        step = self._resolve_step(step)
        record = self.read_metadata(step)
        if record.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"checkpoint {self.directory / str(step)} has format version {record.get('format_version')}, "
                f"this code reads version {FORMAT_VERSION}"
            )
        impl = record["rng_key_impl"]
        key_shape = jax.random.key_data(jax.random.key(0, impl=impl)).shape if impl else (2,)
        key_template = np.zeros(key_shape, np.uint32)
        legacy = self._is_legacy_vi_state(step, state)
        template = {"state": {"state": _legacy_template(state) if legacy else state, "rng_key": key_template}}
        if history is not None:
            if not record["has_history"]:
                raise ValueError(f"checkpoint {self.directory / str(step)} holds no history")
            template["history"] = history
        for name, tree in (("state", state), ("history", history)):
            if tree is not None:
                _compare_signatures(name, _signature(tree), record["signature"][name], self.directory / str(step))
        ocp = self._ocp
        # Read everything as host numpy arrays, then place each leaf like its template leaf (jit
        # caches key on committed-ness, so a restored state must look like a fresh one).
        host_template = jax.tree.map(lambda x: np.zeros(np.shape(x), _dtype(x)), template)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(**{k: ocp.args.StandardRestore(v) for k, v in host_template.items()})
            )
            restored = {k: restored[k] for k in template}
            jax.tree.map(_check_same_shape, restored, host_template)
            restored = jax.tree.map(_place_like, restored, template)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"checkpoint {self.directory / str(step)} does not fit the given state/history templates "
                f"(a different network, optimiser or run length?): {err}"
            ) from None
        restored_state = restored["state"]["state"]
        if legacy:  # saved as VIState(params, opt_state): rebuild today's VIState(q, opt_state, hyper=())
            restored_state = type(state)(restored_state["params"], restored_state["opt_state"], state.hyper)
        return TrainingCheckpoint(
            state=restored_state,
            rng_key=_key_from_data(restored["state"]["rng_key"], record["rng_key_impl"]),
            step=int(record["step"]),
            history=restored.get("history"),
            metadata=record["user"],
        )

    def _is_legacy_vi_state(self, step: int, state) -> bool:
        """Whether the checkpoint holds a ``vi.VIState`` saved before its field ``params`` was renamed ``q``.

        Such a checkpoint restores into today's ``VIState`` (``hyper`` empty: it had none); a
        template with learned hyperparameters is refused, since the checkpoint holds none of them.
        """
        if "q" not in getattr(type(state), "_fields", ()):
            return False
        saved = self._ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
        saved = getattr(saved, "tree", saved)["state"]
        if not isinstance(saved, Mapping) or "params" not in saved or "q" in saved:
            return False
        if jax.tree.leaves(state.hyper):
            raise ValueError(
                f"checkpoint {self.directory / str(step)} holds a VIState saved before hyperparameters existed "
                "(fields params, opt_state); it cannot restore a state with learned hyperparameters "
                "(state.hyper is not empty): build without learn_noise / learn_prior_scale to continue it, or "
                "start a new run"
            )
        return True

    def _resolve_step(self, step) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise ValueError(f"no checkpoint in {self.directory}")
            return steps[-1]
        step = _check_step(step)
        if step not in steps:
            raise ValueError(f"no checkpoint for step {step} in {self.directory}; saved steps are {steps}")
        return step

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _legacy_template(state):
    """The pre-rename layout of a ``vi.VIState``: orbax restores by field name."""
    return {"params": state.q, "opt_state": state.opt_state}


def _dtype(x):
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def _place_like(value, template):
    value = np.asarray(value)
    if isinstance(template, jax.Array):
        if getattr(template, "committed", False):
            return jax.device_put(value, template.sharding)
        return jnp.asarray(value)
    return value


def _signature(tree) -> Optional[list]:
    if tree is None:
        return None
    return [[list(np.shape(x)), str(_dtype(x))] for x in jax.tree.leaves(tree)]


def _compare_signatures(name, given, saved, where) -> None:
    if given == saved:
        return
    if len(given) != len(saved):
        detail = f"{len(given)} leaves given, {len(saved)} saved"
    else:
        i = next(i for i, (a, b) in enumerate(zip(given, saved)) if a != b)
        detail = f"leaf {i} is {tuple(given[i][0])} {given[i][1]}, saved {tuple(saved[i][0])} {saved[i][1]}"
    raise ValueError(
        f"checkpoint {where} does not fit the {name} template ({detail}); a different network, "
        "optimiser, run length or float precision?"
    )


def _check_same_shape(restored, template):
    if np.shape(restored) != np.shape(template) or np.asarray(restored).dtype != np.asarray(template).dtype:
        raise ValueError(
            f"saved array {np.shape(restored)} {np.asarray(restored).dtype} vs template "
            f"{np.shape(template)} {np.asarray(template).dtype}"
        )


# ---- one-call helpers ---------------------------------------------------------------------------


def save(directory, checkpoint: TrainingCheckpoint, *, max_to_keep: int = 2) -> int:
    """Save one checkpoint into ``directory`` (see :meth:`Checkpointer.save`)."""
    with Checkpointer(directory, max_to_keep=max_to_keep) as checkpointer:
        return checkpointer.save(checkpoint)


def restore(directory, state: ArrayTree, *, history: Optional[ArrayTree] = None,
            step: Optional[int] = None) -> TrainingCheckpoint:
    """Restore a checkpoint from ``directory`` (see :meth:`Checkpointer.restore`)."""
    with Checkpointer(directory, read_only=True) as checkpointer:
        return checkpointer.restore(state, history=history, step=step)


def latest_step(directory) -> Optional[int]:
    """The newest complete checkpoint's step in ``directory``, or None (also if it does not exist)."""
    with Checkpointer(directory, read_only=True) as checkpointer:
        return checkpointer.latest_step()


def read_metadata(directory, step: Optional[int] = None) -> dict:
    """The JSON record of a checkpoint in ``directory`` (see :meth:`Checkpointer.read_metadata`)."""
    with Checkpointer(directory, read_only=True) as checkpointer:
        return checkpointer.read_metadata(step)


def is_finished(directory) -> bool:
    """Whether the latest checkpoint in ``directory`` is the last step of its run.

    True when ``vi.fit`` saved its final step there (fit records ``total_steps`` in the metadata),
    so a sweep can skip that configuration; ``vi.fit(..., resume=True)`` on such a directory
    returns the saved result without training.
    """
    with Checkpointer(directory, read_only=True) as checkpointer:
        step = checkpointer.latest_step()
        if step is None:
            return False
        total = checkpointer.read_metadata(step)["user"].get("fit", {}).get("total_steps")
        return total is not None and step >= int(total)
