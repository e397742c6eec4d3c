"""How small are the permuted orbit terms of the MNIST nets at initialisation? (docs/mnist.md)

For q = N(flax's initial params, sigma_0^2 I) on 784 -> width -> 10, prints the range of
log q(g.w) - log q(w) over 999 uniform g != e and 16 draws w ~ q: the log of the factor by which a
permuted term of the InfoNCE bound is below the identity's, hence of its weight in the gradient.

    PYTHONPATH=. python benchmarks/mnist_permuted_terms.py
"""

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import MLP, PermutationGroup, meanfield, orbits

if __name__ == "__main__":
    print("| width | sigma_0 | max | median | min |")
    print("| --- | --- | --- | --- | --- |")
    for width in (5, 10, 20, 30):
        model = MLP(features=(width, 10))
        params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
        group = PermutationGroup.from_params(params)
        assignments = group.sample(jax.random.key(2), 999)
        moved = np.asarray(jnp.any(assignments[0] != jnp.arange(width), axis=1))
        for sigma0 in (0.01, 0.1):
            q = meanfield.init(params, init_scale=sigma0)
            samples = meanfield.sample(jax.random.key(1), q, 16)
            ratios = jax.vmap(lambda w: orbits.assignment_log_ratios(q, w, assignments, group))(samples)
            ratios = np.asarray(ratios)[:, moved]
            print(f"| {width} | {sigma0} | {ratios.max():.3g} | {np.median(ratios):.3g} | {ratios.min():.3g} |")
