"""The symmetrized step with mi_weight 0 as a number, as a traced value and as 1, against the ELBO step.

784 -> 30 -> 10 MLP, batch 100 of random inputs, K = 20, Adam, 300 steps in one ``lax.scan``,
ahead-of-time compiled, interleaved medians. A traced weight 0 (what a program that vmaps MFVI and
SGM runs together needs) still runs I^K's backward pass, times 0; a number 0 does not. The steps'
info is unused here, so XLA also drops the forward I^K of the weight-0 steps.

    PYTHONPATH=.:benchmarks python benchmarks/mi_weight_zero.py --repeats 9
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from _harness import interleaved_medians, markdown_table, parser, write_json
from symvi_jax import MLP, PermutationGroup, likelihoods, objectives, orbits, vi

STEPS = 300


def main():
    args = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/mi_weight_zero.json").parse_args()
    x = jax.random.normal(jax.random.key(1), (100, 784))
    y = jax.random.randint(jax.random.key(2), (100,), 0, 10)
    model = MLP(features=(30, 10))
    params = model.init(jax.random.key(0), x[:1])["params"]
    loglik = likelihoods.categorical(lambda p, inputs: model.apply({"params": p}, inputs))
    group = PermutationGroup.from_params(params)
    keys = jax.random.split(jax.random.key(3), STEPS)

    def program(objective_of):
        def run(state, weight):
            algorithm = vi.from_objective(objective_of(weight), optax.adam(1e-3))
            return jax.lax.scan(lambda s, k: (algorithm.step(k, s, (x, y))[0], None), state, keys)[0]

        state = vi.from_objective(objectives.ELBO(loglik, 60000), optax.adam(1e-3)).init(params)
        compiled = jax.jit(run).lower(state, jnp.float32(0.0)).compile()
        return lambda: compiled(state, jnp.float32(0.0))

    def symmetrized(weight):
        return lambda traced: objectives.SymmetrizedELBO(loglik, group, 60000, orbits.InfoNCE(20),
                                                         mi_weight=traced if weight is None else weight)

    fns = {"ELBO": program(lambda _: objectives.ELBO(loglik, 60000)),
           "mi_weight 0.0 (a number)": program(symmetrized(0.0)),
           "mi_weight 0 (traced)": program(symmetrized(None)),
           "mi_weight 1.0": program(symmetrized(1.0))}
    medians = interleaved_medians(fns, repeats=1 if args.quick else args.repeats, warmup=1)
    rows = [[name, round(seconds * 1e6 / STEPS), round(seconds / medians["ELBO"], 2)]
            for name, seconds in medians.items()]
    print(markdown_table(["step", "us/step", "/ ELBO"], rows))
    write_json(args.json, {"steps": STEPS, "rows": rows, "complete": True})


if __name__ == "__main__":
    main()
