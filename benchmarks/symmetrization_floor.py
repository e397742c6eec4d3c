"""What the symmetrized step must add to the standard one, each piece timed alone in the same scanned form.

Issue 15's (b): 784 -> 30 -> 10 ReLU (``--width``), batch 100, K = 20 InfoNCE (``--num-permutations``),
300 steps. Five jitted ``lax.scan`` programs of 300 iterations, timed interleaved in one process
(medians, per step):

* ``standard`` and ``symmetrized``: one epoch of ``vi.run`` (as ``scan_steps.py`` (b));
* ``draws``: the K - 1 group elements of a step, ``group.sample(key, K - 1)``;
* ``terms``: the K - 1 orbit terms log q(sigma.w) - log q(w) of one weight draw, forward only
  (``orbits.assignment_log_ratios``, the library's path in the step), on 300 pre-drawn weight
  samples and assignments fed as the scan's inputs, so nothing is hoisted out of the loop;
* ``draws + terms``: both, the assignments drawn in the loop.

In Table 1's runs every InfoNCE weight of a drawn element is 0, so the terms' backward pass is
skipped (units.py): ``standard + draws + terms`` is then what any program computing the same
terms must at least cost, at this per-pass speed, and ``(standard + draws + terms) / standard``
the ratio a symmetrized step cannot go below without cheaper terms.

    PYTHONPATH=.:benchmarks python benchmarks/symmetrization_floor.py [--repeats 15]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from _harness import interleaved_medians, markdown_table, parser, write_json
from symvi_jax import MLP, PermutationGroup, likelihoods, meanfield, orbits, vi

STEPS, BATCH = 300, 100


def _problem(width):
    model = MLP(features=(width, 10))
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    return model, params, PermutationGroup.from_params(params)


def epoch_loop(objective, width, k):
    model, params, group = _problem(width)
    loglik = likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))
    data = (jax.random.uniform(jax.random.key(1), (STEPS * BATCH, 784)),
            jax.random.randint(jax.random.key(2), (STEPS * BATCH,), 0, 10))
    kwargs = dict(group=group, num_permutations=k) if objective != "elbo" else {}
    algorithm = vi.build(loglik, optax.adam(1e-3), data_size=60_000, objective=objective, **kwargs)
    state = algorithm.init(params)
    loop = jax.jit(lambda key, s: vi.run(key, algorithm, s, data, num_epochs=1, batch_size=BATCH))
    key = jax.random.key(3)
    return lambda: loop(key, state)[1].objective


def pieces(width, k):
    """The draws, the forward terms, and both, each a scan of STEPS iterations."""
    _, params, group = _problem(width)
    q = meanfield.init(params, init_scale=0.01)
    keys = jax.random.split(jax.random.key(4), STEPS)
    samples = jax.vmap(lambda key: meanfield.sample(key, q))(keys)  # STEPS weight draws
    assignments = jax.vmap(lambda key: group.sample(key, k - 1))(jax.random.split(jax.random.key(5), STEPS))

    @jax.jit
    def draws(keys):
        return jax.lax.scan(lambda c, key: (c + jnp.sum(group.sample(key, k - 1)[0]), None), 0, keys)[0]

    @jax.jit
    def terms(samples, assignments):
        def body(c, xs):
            w, a = xs
            return c + jnp.sum(orbits.assignment_log_ratios(q, w, a, group)), None

        return jax.lax.scan(body, 0.0, (samples, assignments))[0]

    @jax.jit
    def both(keys, samples):
        def body(c, xs):
            key, w = xs
            return c + jnp.sum(orbits.assignment_log_ratios(q, w, group.sample(key, k - 1), group)), None

        return jax.lax.scan(body, 0.0, (keys, samples))[0]

    return (lambda: draws(keys)), (lambda: terms(samples, assignments)), (lambda: both(keys, samples))


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/symmetrization_floor.json")
    p.add_argument("--width", type=int, default=30)
    p.add_argument("--num-permutations", type=int, default=20)
    args = p.parse_args()
    width, k = args.width, args.num_permutations
    draws, terms, both = pieces(width, k)
    t = interleaved_medians({"standard": epoch_loop("elbo", width, k),
                             "symmetrized": epoch_loop("symmetrized_elbo", width, k),
                             "draws": draws, "terms": terms, "draws + terms": both},
                            repeats=3 if args.quick else args.repeats)
    us = {name: 1e6 * v / STEPS for name, v in t.items()}
    std = us["standard"]
    rows = [[name, f"{v:.0f}", f"{v / std:.3f}"] for name, v in us.items()]
    print(f"width {width}, batch {BATCH}, K = {k}, {STEPS} scanned steps, per step:")
    print(markdown_table(["program", "us / step", "/ standard"], rows))
    floor = (std + us["draws + terms"]) / std
    print(f"\nsymmetrized / standard: {us['symmetrized'] / std:.3f}; "
          f"(standard + draws + terms) / standard: {floor:.3f}; the target is <= 1.15")
    write_json(args.json, {"benchmark": "symmetrization_floor", "width": width, "K": k, "steps": STEPS,
                           "us_per_step": us, "ratio": us["symmetrized"] / std, "floor_ratio": floor,
                           "complete": True})


if __name__ == "__main__":
    main()
