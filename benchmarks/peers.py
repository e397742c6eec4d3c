"""The standard mean-field ELBO step in symvi-jax vs NumPyro SVI and a hand-written JAX + optax floor.

Same maths in all three: a 784 -> width -> 10 ReLU MLP, N(0, 1) prior on every weight, a
mean-field Gaussian guide started at the same means with sigma = 1e-2, one reparameterised draw
(S = 1) per step, closed-form KL, softmax likelihood on a minibatch scaled by N / M, Adam
(lr 1e-3). NumPyro uses ``AutoNormal`` (init_scale 1e-2, means from the same init via
``init_to_value``), ``TraceMeanField_ELBO`` and a subsampling ``plate``. Each contender is one
jitted update, timed interleaved in one process; medians and ratios to symvi-jax are reported.
symvi-jax is timed twice: as built by default (its info reports the gradient norm) and with
``track_grad_norm=False``, which does exactly the work of the other two.

    python benchmarks/peers.py [--quick] [--json benchmarks/results/peers.json]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _harness import interleaved_medians, markdown_table, parser, write_json
from symvi_jax import MLP, likelihoods, vi

N, LR, INIT_SCALE = 60_000, 1e-3, 1e-2


def problem(width, batch_size):
    model = MLP(features=(width, 10))
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    x = jax.random.uniform(jax.random.key(1), (batch_size, 784))
    y = jax.random.randint(jax.random.key(2), (batch_size,), 0, 10)
    return model, params, (x, y)


def symvi_step(width, batch_size, track_grad_norm=True):
    model, params, batch = problem(width, batch_size)
    loglik = likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))
    algorithm = vi.build(loglik, optax.adam(LR), data_size=N, num_samples=1, init_scale=INIT_SCALE,
                         track_grad_norm=track_grad_norm)
    state = algorithm.init(params)
    step = jax.jit(algorithm.step)
    key = jax.random.key(3)
    return lambda: step(key, state, batch)[0].q.loc


def floor_step(width, batch_size):
    """Hand-written: the same maths with no library at all."""
    _, params, (x, y) = problem(width, batch_size)
    w1, b1 = params["Dense_0"]["kernel"], params["Dense_0"]["bias"]
    w2, b2 = params["Dense_1"]["kernel"], params["Dense_1"]["bias"]
    rho0 = float(np.log(np.expm1(INIT_SCALE)))
    mu = (w1, b1, w2, b2)
    rho = tuple(jnp.full_like(p, rho0) for p in mu)
    theta = (mu, rho)
    optimizer = optax.adam(LR)
    opt_state = optimizer.init(theta)

    def loss(theta, key, x, y):
        mu, rho = theta
        sigma = tuple(jax.nn.softplus(r) for r in rho)
        keys = jax.random.split(key, 4)
        w = tuple(m + s * jax.random.normal(k, m.shape) for m, s, k in zip(mu, sigma, keys))
        h = jax.nn.relu(x @ w[0] + w[1])
        logits = h @ w[2] + w[3]
        ll = jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1).sum() * N / x.shape[0]
        kl = sum(jnp.sum(-jnp.log(s) + 0.5 * (s**2 + m**2) - 0.5) for m, s in zip(mu, sigma))
        return kl - ll

    @jax.jit
    def step(theta, opt_state, key, x, y):
        grads = jax.grad(loss)(theta, key, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state

    key = jax.random.key(3)
    return lambda: step(theta, opt_state, key, x, y)[0]


def numpyro_step(width, batch_size):
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, TraceMeanField_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.infer.initialization import init_to_value

    _, params, (x, y) = problem(width, batch_size)
    init = {"w1": params["Dense_0"]["kernel"], "b1": params["Dense_0"]["bias"],
            "w2": params["Dense_1"]["kernel"], "b2": params["Dense_1"]["bias"]}

    def model(x, y):
        w1 = numpyro.sample("w1", dist.Normal(0.0, 1.0).expand([784, width]).to_event(2))
        b1 = numpyro.sample("b1", dist.Normal(0.0, 1.0).expand([width]).to_event(1))
        w2 = numpyro.sample("w2", dist.Normal(0.0, 1.0).expand([width, 10]).to_event(2))
        b2 = numpyro.sample("b2", dist.Normal(0.0, 1.0).expand([10]).to_event(1))
        with numpyro.plate("data", N, subsample_size=x.shape[0]):
            logits = jax.nn.relu(x @ w1 + b1) @ w2 + b2
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    guide = AutoNormal(model, init_loc_fn=init_to_value(values=init), init_scale=INIT_SCALE)
    svi = SVI(model, guide, numpyro.optim.Adam(LR), TraceMeanField_ELBO())
    state = svi.init(jax.random.key(3), x, y)
    update = jax.jit(svi.update)
    return lambda: update(state, x, y)[0].optim_state


def main():
    args = parser(__doc__.splitlines()[0], "benchmarks/results/peers.json").parse_args()
    widths = (30,) if args.quick else (30, 1024)
    batches = (100,) if args.quick else (100, 1024)
    rows, records = [], []
    for width in widths:
        for batch_size in batches:
            times = interleaved_medians(
                {"symvi-jax": symvi_step(width, batch_size), "symvi-jax-nonorm": symvi_step(width, batch_size, False),
                 "numpyro": numpyro_step(width, batch_size), "floor": floor_step(width, batch_size)},
                repeats=args.repeats,
            )
            record = dict(width=width, batch=batch_size, **{f"{k}_s": v for k, v in times.items()},
                          symvi_over_numpyro=times["symvi-jax"] / times["numpyro"],
                          symvi_over_floor=times["symvi-jax"] / times["floor"],
                          nonorm_over_numpyro=times["symvi-jax-nonorm"] / times["numpyro"],
                          nonorm_over_floor=times["symvi-jax-nonorm"] / times["floor"])
            records.append(record)
            rows.append([width, batch_size]
                        + [f"{times[k] * 1e3:.3f}" for k in ("symvi-jax", "symvi-jax-nonorm", "numpyro", "floor")]
                        + [f"{record[k]:.2f}" for k in ("symvi_over_numpyro", "symvi_over_floor",
                                                        "nonorm_over_numpyro", "nonorm_over_floor")])
            print(rows[-1], flush=True)
            write_json(args.json, {"benchmark": "peers", "rows": records, "complete": False})
    print(markdown_table(["width", "batch", "symvi-jax ms", "symvi-jax, no grad norm ms", "numpyro ms", "floor ms",
                          "symvi/numpyro", "symvi/floor", "no-norm/numpyro", "no-norm/floor"], rows))
    write_json(args.json, {"benchmark": "peers", "rows": records, "complete": True})


if __name__ == "__main__":
    main()
