"""Reference posterior samples: BlackJAX NUTS with window adaptation, symmetrized by the group.

A G-invariant posterior p(g.w) = p(w) has |G| copies of every mode, and a sampler started in one
copy rarely crosses to another. Since p is invariant, applying an independent uniform g_s to
every draw w_s of a chain that targets p leaves p invariant and spreads the draws over all copies:

    w_s ~ chain targeting p,   g_s ~ U(G)   =>   g_s.w_s ~ p   (in the chain's limit).

:func:`sample` runs ``num_chains`` independent chains (vmapped), each with BlackJAX's Stan-style
window adaptation of the step size and a diagonal mass matrix for ``num_warmup`` steps, then
``num_samples`` NUTS steps. :func:`symmetrize` applies the random group elements. Neither is
jitted: jit the call at the outermost scope, with ``logdensity_fn``, ``num_warmup`` and
``num_samples`` static.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from symvi_jax import hmc
  >>> logdensity_fn = lambda w: -0.5 * jnp.sum(jnp.square(w["a"]))
  >>> run = jax.jit(lambda key, init: hmc.sample(key, logdensity_fn, init, num_warmup=100, num_samples=50))
  >>> positions, info = run(jax.random.key(0), {"a": jnp.zeros((2, 3))})  # 2 chains
  >>> positions["a"].shape
  (2, 50, 3)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from symvi_jax import _checks, _optional
from symvi_jax.symmetry import PermutationGroup
from symvi_jax.types import Array, ArrayTree, PRNGKey

blackjax = _optional.require("blackjax", extra="hmc", feature="symvi_jax.hmc")

__all__ = ["HMCInfo", "sample", "symmetrize"]


class HMCInfo(NamedTuple):
    """Per-chain diagnostics (leading axis: chains).

    Fields:
      step_size: the adapted step size.
      inverse_mass_matrix: the adapted diagonal inverse mass matrix (flattened position).
      acceptance_rate: mean acceptance probability over the sampling phase.
      num_divergent: divergent transitions in the sampling phase.
      num_integration_steps: mean leapfrog steps per draw.
    """

    step_size: Array
    inverse_mass_matrix: Array
    acceptance_rate: Array
    num_divergent: Array
    num_integration_steps: Array


def sample(
    rng_key: PRNGKey,
    logdensity_fn: Callable[[ArrayTree], Array],
    initial_positions: ArrayTree,
    *,
    num_warmup: int,
    num_samples: int,
    target_acceptance_rate: float = 0.8,
) -> tuple[ArrayTree, HMCInfo]:
    """Run independent NUTS chains, one per leading entry of ``initial_positions``.

    Args:
      rng_key: randomness for adaptation and sampling (split per chain).
      logdensity_fn: the unnormalised log posterior of one position (a pytree).
      initial_positions: a pytree whose leaves carry a leading axis of size num_chains.
      num_warmup: window-adaptation steps per chain (step size and diagonal mass matrix).
      num_samples: NUTS draws kept per chain after warm-up.
      target_acceptance_rate: the dual-averaging target.

    Returns:
      ``(positions, info)``: positions shaped like ``initial_positions`` with an extra axis of
      ``num_samples`` after the chain axis, and :class:`HMCInfo` per chain.
    """
    _checks.positive_int(num_warmup, "num_warmup")
    _checks.positive_int(num_samples, "num_samples")
    if not 0.0 < target_acceptance_rate < 1.0:
        raise ValueError(f"target_acceptance_rate must lie in (0, 1), got {target_acceptance_rate!r}")
    leaves = jax.tree.leaves(initial_positions)
    if not leaves or any(jnp.ndim(x) < 1 for x in leaves):
        raise ValueError("initial_positions must be a pytree whose leaves have a leading chain axis")
    num_chains = jnp.shape(leaves[0])[0]
    if any(jnp.shape(x)[0] != num_chains for x in leaves):
        raise ValueError(f"initial_positions leaves disagree on the number of chains: {[jnp.shape(x)[0] for x in leaves]}")

    warmup = blackjax.window_adaptation(blackjax.nuts, logdensity_fn, target_acceptance_rate=target_acceptance_rate)

    def one_chain(key, position):
        key_warmup, key_sample = jax.random.split(key)
        (state, parameters), _ = warmup.run(key_warmup, position, num_steps=num_warmup)
        kernel = blackjax.nuts(logdensity_fn, **parameters)

        def body(state, key):
            state, info = kernel.step(key, state)
            return state, (state.position, info.acceptance_rate, info.is_divergent, info.num_integration_steps)

        _, (positions, acceptance, divergent, steps) = jax.lax.scan(
            body, state, jax.random.split(key_sample, num_samples)
        )
        info = HMCInfo(
            step_size=parameters["step_size"],
            inverse_mass_matrix=jnp.ravel(parameters["inverse_mass_matrix"]),
            acceptance_rate=jnp.mean(acceptance),
            num_divergent=jnp.sum(divergent),
            num_integration_steps=jnp.mean(steps.astype(jnp.float32)),
        )
        return positions, info

    return jax.vmap(one_chain)(jax.random.split(rng_key, num_chains), initial_positions)


def symmetrize(rng_key: PRNGKey, positions: ArrayTree, group: PermutationGroup) -> ArrayTree:
    """g_s.w_s with independent uniform g_s in G, for every draw (any number of leading axes).

    ``positions`` is a params tree (or the trainable part of one) whose leaves share leading
    batch axes in front of the parameter shapes the group acts on.
    """
    if not isinstance(group, PermutationGroup):
        raise ValueError(f"group must be a PermutationGroup, got {type(group).__name__}")
    # The batch axes are those in front of each leaf's parameter shape (kernels are 2-D, biases
    # 1-D), so any number of chain and sample axes works.
    batch_shape = _batch_shape(positions)
    flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[len(batch_shape):]), positions)
    num = jax.tree.leaves(flat)[0].shape[0]
    elements = group.sample(rng_key, num)
    moved = jax.vmap(group.act)(elements, flat)
    return jax.tree.map(lambda x: x.reshape(batch_shape + x.shape[1:]), moved)


def _batch_shape(positions: ArrayTree) -> tuple:
    shapes = []
    for name, layer in positions.items() if isinstance(positions, dict) else ():
        for leaf, x in layer.items():
            rank = 2 if leaf == "kernel" else 1
            if jnp.ndim(x) < rank:
                raise ValueError(f"leaf {name}/{leaf} has shape {jnp.shape(x)}, fewer axes than a {leaf}")
            shapes.append(tuple(jnp.shape(x)[: jnp.ndim(x) - rank]))
    if not shapes:
        raise ValueError("positions must be a Dense-chain params dict {'Dense_0': {'kernel': ...}, ...}")
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"positions leaves disagree on their leading (batch) axes: {shapes}")
    return shapes[0]
