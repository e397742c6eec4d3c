"""Data-parallel training over local devices with ``jax.sharding``.

The minibatch is split along its example axis over a one-axis device mesh ``("data",)``; the
variational parameters and the optimiser state are replicated. Nothing else changes: the ELBO
averages per-example log-likelihoods over the batch, so under ``jit`` the compiler inserts the
all-reduce of the gradient itself (GSPMD). The result equals single-device training up to float
reduction order.

Example:
  >>> mesh = data_mesh()                                   # all local devices
  >>> step = data_parallel_step(algorithm.step, mesh)      # jitted with the shardings
  >>> state = replicate(algorithm.init(params), mesh)
  >>> state, info = step(rng_key, state, shard_batch(batch, mesh))  # doctest: +SKIP

Multi-host: call ``jax.distributed.initialize()`` on every host first (see the JAX docs on
multi-process runs); ``jax.devices()`` then lists the devices of all hosts, ``data_mesh()`` spans
them, and each host feeds its own slice of the batch (e.g. with
``jax.make_array_from_process_local_data``). symvi-jax has no cluster layer of its own.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from symvi_jax.types import ArrayTree

__all__ = ["data_mesh", "shard_batch", "replicate", "data_parallel_step"]

AXIS = "data"


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must hold at least one device")
    return Mesh(np.array(devices), (AXIS,))


def shard_batch(batch: ArrayTree, mesh: Mesh) -> ArrayTree:
    """Place every array of ``batch`` split along its leading (example) axis over the mesh."""
    size = mesh.shape[AXIS]

    def place(x):
        if np.shape(x)[0] % size:
            raise ValueError(
                f"the batch size ({np.shape(x)[0]}) must be a multiple of the number of devices ({size})"
            )
        return jax.device_put(x, NamedSharding(mesh, PartitionSpec(AXIS)))

    return jax.tree.map(place, batch)


def replicate(tree: ArrayTree, mesh: Mesh) -> ArrayTree:
    """Place a full copy of ``tree`` (e.g. the ``VIState``) on every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def data_parallel_step(step: Callable, mesh: Mesh) -> Callable:
    """``jit(step)`` with the batch sharded over ``"data"`` and key, state and info replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded = NamedSharding(mesh, PartitionSpec(AXIS))
    return jax.jit(step, in_shardings=(replicated, replicated, sharded), out_shardings=replicated)
