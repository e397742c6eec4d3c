"""Whole scanned training loops: (a) symvi-jax MFVI vs BlackJAX meanfield_vi, (b) symmetrized vs standard.

(a) The same small BNN, 2 -> 16 tanh -> 2 classes, 400 generated points, N(0, 1) prior, Adam
    (lr 1e-2), one reparameterised draw per step, 2000 full-batch steps in one ``lax.scan``, each
    library with its defaults (symvi-jax: closed-form KL, gradient norm in the info; BlackJAX:
    Monte Carlo KL on the same draw). A third contender measures a lever: symvi-jax's step with
    the weight noise drawn by one ``normal`` call on the flattened parameters (as BlackJAX does:
    other random numbers). symvi-jax itself draws the small leaves' noise with one threefry op
    that gives each leaf's own ``normal`` bits (``meanfield._one_op_normals``). A fourth calls the
    network through ``jax.vmap`` over a sample axis of size 1, as BlackJAX does (symvi-jax calls it
    directly at S = 1): XLA:CPU then forms the kernel gradients differently. A fifth takes both levers.
(b) 784 -> 30 -> 10 ReLU, batch 100, K = 20 InfoNCE, 300 steps: one epoch of ``vi.run`` over
    30,000 random MNIST-shaped points, symmetrized against standard.

Each contender is one jitted program, timed interleaved in one process (medians).

    PYTHONPATH=.:benchmarks python benchmarks/scan_steps.py [--repeats 15] [--json benchmarks/results/cpu/scan_steps.json]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from _harness import interleaved_medians, markdown_table, parser, write_json
from symvi_jax import MLP, PermutationGroup, likelihoods, meanfield, objectives, vi

NUM_POINTS, NUM_STEPS, LR = 400, 2000, 1e-2


def small_problem():
    model = MLP(features=(16, 2), activation=jnp.tanh)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)))["params"]
    x = jax.random.normal(jax.random.key(1), (NUM_POINTS, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(jnp.int32)
    return model, params, (x, y)


def scanned(step, state, batch=None):
    """A zero-argument jitted ``lax.scan`` of NUM_STEPS full-batch steps (``batch=None``: blackjax's
    ``step(key, state)``), returning the objective of every step."""

    @jax.jit
    def loop(key, state):
        def body(state, k):
            state, info = step(k, state) if batch is None else step(k, state, batch)
            return state, info.elbo if batch is None else info.objective
        return jax.lax.scan(body, state, jax.random.split(key, NUM_STEPS))

    key = jax.random.key(3)
    return lambda: loop(key, state)[1]


def symvi_loop():
    model, params, batch = small_problem()
    loglik = likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))
    algorithm = vi.build(loglik, optax.adam(LR), data_size=NUM_POINTS)
    return scanned(algorithm.step, algorithm.init(params), batch)


def flat_noise_sample(rng_key, q):
    """The lever: one ``normal`` call for the flattened parameters, as BlackJAX draws, not one per leaf."""
    leaves, treedef = jax.tree.flatten(q.loc)
    eps = jax.random.normal(rng_key, (sum(x.size for x in leaves),), leaves[0].dtype)
    noise, start = [], 0
    for x in leaves:
        noise.append(eps[start:start + x.size].reshape(x.shape))
        start += x.size
    return jax.tree.map(lambda m, s, e: m + s * e, q.loc, meanfield.scale(q), jax.tree.unflatten(treedef, noise))


def lever_loop(*, flat_noise: bool, vmap_sample: bool):
    """symvi-jax's ELBO step (same maths) with its weight draw replaced by :func:`flat_noise_sample`
    (``flat_noise``) and/or the network called through ``jax.vmap`` over a sample axis of size 1, as
    BlackJAX calls it (``vmap_sample``; XLA:CPU then runs the kernel-gradient products differently,
    which rounds differently)."""
    model, params, batch = small_problem()
    loglik = likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))

    def objective(rng_key, q, batch):
        if vmap_sample:
            samples = (jax.tree.map(lambda x: x[None], flat_noise_sample(rng_key, q)) if flat_noise
                       else meanfield.sample(rng_key, q, 1))
            loglik_values = jax.vmap(lambda w: loglik(w, batch))(samples)
        else:
            loglik_values = loglik(flat_noise_sample(rng_key, q), batch)
        expected_ll = NUM_POINTS * jnp.mean(loglik_values)
        kl = meanfield.kl_to_normal(q, 1.0)
        zero = jnp.zeros_like(kl)
        return expected_ll - kl, objectives.ObjectiveInfo(expected_ll - kl, expected_ll, kl, zero, zero)

    algorithm = vi.build(loglik, optax.adam(LR), data_size=NUM_POINTS, objective=objective)
    return scanned(algorithm.step, algorithm.init(params), batch)


def blackjax_loop():
    import blackjax

    model, params, (x, y) = small_problem()

    def logdensity(p):
        logits = model.apply({"params": p}, x)
        loglik = jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
        prior = sum(jnp.sum(-0.5 * jnp.square(w)) for w in jax.tree.leaves(p))
        return loglik + prior

    algorithm = blackjax.meanfield_vi(logdensity, optax.adam(LR), num_samples=1)
    return scanned(algorithm.step, algorithm.init(params))


def epoch_loop(objective):
    model = MLP(features=(30, 10))
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    loglik = likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))
    data = (jax.random.uniform(jax.random.key(1), (30_000, 784)), jax.random.randint(jax.random.key(2), (30_000,), 0, 10))
    kwargs = dict(group=PermutationGroup.from_params(params), num_permutations=20) if objective != "elbo" else {}
    algorithm = vi.build(loglik, optax.adam(1e-3), data_size=60_000, objective=objective, **kwargs)
    state = algorithm.init(params)
    loop = jax.jit(lambda k, s: vi.run(k, algorithm, s, data, num_epochs=1, batch_size=100))
    key = jax.random.key(3)
    return lambda: loop(key, state)[1].objective


def main():
    args = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/scan_steps.json").parse_args()
    repeats = 3 if args.quick else args.repeats
    a = interleaved_medians({"symvi-jax": symvi_loop(), "blackjax": blackjax_loop(),
                             "lever: one RNG call": lever_loop(flat_noise=True, vmap_sample=False),
                             "lever: vmap over one sample": lever_loop(flat_noise=False, vmap_sample=True),
                             "levers: both": lever_loop(flat_noise=True, vmap_sample=True)}, repeats=repeats)
    b = interleaved_medians({"standard": epoch_loop("elbo"), "symmetrized": epoch_loop("symmetrized_elbo")},
                            repeats=repeats)
    records = [dict(part="a", symvi_ms=1e3 * a["symvi-jax"], blackjax_ms=1e3 * a["blackjax"],
                    ratio=a["symvi-jax"] / a["blackjax"], lever_one_rng_call_ms=1e3 * a["lever: one RNG call"],
                    lever_ratio=a["lever: one RNG call"] / a["blackjax"],
                    lever_vmap_sample_ms=1e3 * a["lever: vmap over one sample"],
                    lever_vmap_sample_ratio=a["lever: vmap over one sample"] / a["blackjax"],
                    levers_both_ms=1e3 * a["levers: both"], levers_both_ratio=a["levers: both"] / a["blackjax"]),
               dict(part="b", standard_us_per_step=1e6 * b["standard"] / 300,
                    symmetrized_us_per_step=1e6 * b["symmetrized"] / 300, ratio=b["symmetrized"] / b["standard"])]
    print(markdown_table(["(a) 2000 scanned steps, 2-16-2 tanh", "symvi-jax ms", "BlackJAX ms", "symvi / BlackJAX"],
                         [["MFVI, defaults", f"{records[0]['symvi_ms']:.1f}", f"{records[0]['blackjax_ms']:.1f}",
                           f"{records[0]['ratio']:.2f}"],
                          ["lever: one RNG call for all leaves", f"{records[0]['lever_one_rng_call_ms']:.1f}",
                           f"{records[0]['blackjax_ms']:.1f}", f"{records[0]['lever_ratio']:.2f}"],
                          ["lever: the network through vmap over one sample", f"{records[0]['lever_vmap_sample_ms']:.1f}",
                           f"{records[0]['blackjax_ms']:.1f}", f"{records[0]['lever_vmap_sample_ratio']:.2f}"],
                          ["levers: both", f"{records[0]['levers_both_ms']:.1f}",
                           f"{records[0]['blackjax_ms']:.1f}", f"{records[0]['levers_both_ratio']:.2f}"]]))
    print()
    print(markdown_table(["(b) 300 scanned steps, 784-30-10, batch 100, K = 20", "standard us/step",
                          "symmetrized us/step", "symmetrized / standard"],
                         [["vi.run, one epoch", f"{records[1]['standard_us_per_step']:.0f}",
                           f"{records[1]['symmetrized_us_per_step']:.0f}", f"{records[1]['ratio']:.2f}"]]))
    write_json(args.json, {"benchmark": "scan_steps", "rows": records, "complete": True})


if __name__ == "__main__":
    main()
