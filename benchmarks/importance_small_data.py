"""Small data, overlapping copies: does training with the symmetrized ELBO reach a better L^G? (issue #12)

Question: on a 1-6-1 tanh regression net fitted to N = 10 generated points (Gaussian likelihood,
noise sd 0.5, prior N(0, 1)), where the posterior's permuted copies overlap, do the symmetrized
objectives end at a higher exact ELBO of the symmetrized posterior, L^G = L + I (Theorem 4.1),
than MFVI? Methods, all with ``vi.build`` and a ``lax.scan`` over ``algorithm.step``, the same
initial parameters and step keys per seed (paired):

* MFVI (``objective="elbo"``),
* InfoNCE, the paper's uniform estimator, K = 20,
* importance, K = 20, ``score_correction=True`` (gradient unbiased for the Sinkhorn proposal),
* importance, K = 20, the default gradient (unbiased only at the exact posterior),
* exact (``estimator="exact"``: the permanent, the gradient of L^G itself).

Final L^G of every q is evaluated the same way: the expected log-likelihood by Monte Carlo with
``--eval-samples`` draws, KL(q || prior) in closed form, I exactly (permanent) on the same draws.
Units alive: 6 - ``diagnostics.collapsed_units`` (unit KL to the prior below 1 nat is collapsed).

    PYTHONPATH=. python benchmarks/importance_small_data.py [--seeds 10] [--steps 3000] [--out ...]

Prints one row per method (mean over seeds, paired mean difference to MFVI with a 95% t interval)
and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from symvi_jax import MLP, PermutationGroup, diagnostics, likelihoods, meanfield, orbits, vi

WIDTH, NUM_POINTS, NOISE_SD, PRIOR_SCALE = 6, 10, 0.5, 1.0

#: t_{0.975, n-1} for the paired 95% intervals
T_975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}

METHODS = {
    "MFVI": dict(objective="elbo"),
    "InfoNCE K=20": dict(objective="symmetrized_elbo", estimator="infonce", num_permutations=20),
    "importance K=20 (corrected)": dict(objective="symmetrized_elbo", estimator="importance", num_permutations=20,
                                        score_correction=True),
    "importance K=20 (default)": dict(objective="symmetrized_elbo", estimator="importance", num_permutations=20),
    "exact (permanent)": dict(objective="symmetrized_elbo", estimator="exact"),
}


def problem():
    """The net, its group, the likelihood and the N = 10 points: x ~ U[-3, 3], y = sin(x) + 0.5 noise."""
    model = MLP(features=(WIDTH, 1), activation=jnp.tanh)
    rng = np.random.default_rng(0)
    x = rng.uniform(-3.0, 3.0, size=(NUM_POINTS, 1))
    y = np.sin(x[:, 0]) + NOISE_SD * rng.normal(size=NUM_POINTS)
    data = (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    loglik = likelihoods.gaussian(lambda p, inputs: model.apply({"params": p}, inputs), noise_precision=NOISE_SD**-2)
    params = model.init(jax.random.key(0), data[0])["params"]
    return model, PermutationGroup.from_params(params), loglik, data


def train(method: str, seed_keys, *, steps: int, learning_rate: float, num_samples: int, init_scale: float):
    model, group, loglik, data = problem()
    options = dict(METHODS[method])
    if options["objective"] == "elbo":
        options.pop("objective")
        algorithm = vi.build(loglik, optax.adam(learning_rate), data_size=NUM_POINTS, objective="elbo",
                             num_samples=num_samples, prior_scale=PRIOR_SCALE, init_scale=init_scale)
    else:
        algorithm = vi.build(loglik, optax.adam(learning_rate), data_size=NUM_POINTS, group=group,
                             num_samples=num_samples, prior_scale=PRIOR_SCALE, init_scale=init_scale, **options)

    def one(key):
        key_init, key_steps = jax.random.split(key)
        state = algorithm.init(model.init(key_init, data[0])["params"])

        def body(state, key):
            state, info = algorithm.step(key, state, data)
            return state, info.objective

        state, trace = jax.lax.scan(body, state, jax.random.split(key_steps, steps))
        return state.q, trace

    return jax.jit(jax.vmap(one))(seed_keys)


def evaluate(q, key, *, num_samples: int):
    """L, I and L^G = L + I of one q: Monte Carlo log-likelihood, closed-form KL, exact I on the same draws."""
    _, group, loglik, data = problem()
    samples = meanfield.sample(key, q, num_samples)
    expected_ll = NUM_POINTS * jnp.mean(jax.vmap(lambda w: loglik(w, data))(samples))
    elbo = expected_ll - meanfield.kl_to_normal(q, PRIOR_SCALE)
    info = jnp.mean(orbits.mutual_information_terms(key, q, samples, group, num_permutations=None, estimator="exact"))
    return dict(elbo=elbo, mutual_information=info, symmetrized_elbo=elbo + info)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--init-scale", type=float, default=0.1)
    parser.add_argument("--eval-samples", type=int, default=4096)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--out", default="out/benchmarks/importance_small_data.json")
    args = parser.parse_args(argv)
    _, group, _, _ = problem()
    seed_keys = jax.random.split(jax.random.key(12), args.seeds)
    eval_keys = jax.random.split(jax.random.key(13), args.seeds)
    evaluate_all = jax.jit(jax.vmap(lambda q, key: evaluate(q, key, num_samples=args.eval_samples)))
    results = {}
    for method in args.methods:
        start = time.perf_counter()
        qs, trace = train(method, seed_keys, steps=args.steps, learning_rate=args.learning_rate,
                          num_samples=args.num_samples, init_scale=args.init_scale)
        metrics = {k: np.asarray(v, np.float64) for k, v in evaluate_all(qs, eval_keys).items()}
        alive = [WIDTH - diagnostics.collapsed_units(jax.tree.map(lambda x: x[i], qs), group, PRIOR_SCALE)[0]
                 for i in range(args.seeds)]
        metrics["units_alive"] = np.asarray(alive, np.float64)
        metrics["final_objective"] = np.asarray(jnp.mean(trace[:, -100:], axis=1), np.float64)
        results[method] = metrics
        print(f"{method}: {time.perf_counter() - start:.0f} s", flush=True)
    base = results["MFVI"] if "MFVI" in results else None
    t = T_975[args.seeds] if args.seeds in T_975 else 1.96
    rows = []
    print(f"\n{args.seeds} seeds, {args.steps} steps; mean over seeds, and [paired mean difference to MFVI, 95% CI]")
    print("| method | L^G = L + I | L | I | units alive | L^G - MFVI | I - MFVI | units alive - MFVI |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for method, m in results.items():
        row = dict(method=method, **{k: [float(x) for x in v] for k, v in m.items()})
        cells = [f"{np.mean(m[k]):.3f}" for k in ("symmetrized_elbo", "elbo", "mutual_information")]
        cells.append(f"{np.mean(m['units_alive']):.1f}")
        for key in ("symmetrized_elbo", "mutual_information", "units_alive"):
            if base is None or method == "MFVI":
                cells.append("-")
                continue
            diff = m[key] - base[key]
            half = t * diff.std(ddof=1) / math.sqrt(len(diff))
            cells.append(f"{diff.mean():+.3f} [{diff.mean() - half:+.3f}, {diff.mean() + half:+.3f}]")
            row[f"{key}_diff"] = [float(diff.mean()), float(half)]
        rows.append(row)
        print(f"| {method} | " + " | ".join(cells) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(benchmark="importance_small_data", jax=jax.__version__, config=vars(args),
                                   log_group_order=group.log_order(), rows=rows), indent=1))


if __name__ == "__main__":
    main()
