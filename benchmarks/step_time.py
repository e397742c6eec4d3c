"""Step time of the standard ELBO vs the symmetrized ELBO (L^K), and the ratio between them.

One jitted ``algorithm.step`` (S = 1, Adam) on MNIST-shaped inputs (784 -> hidden -> 10) with
random data resident on the device, for K in {2, 5, 20, 64, 256}, hidden widths 30, 1024, 4096
and 1024x1024, batch 100 and 1024. Each symmetrized step is timed interleaved with the standard
step of the same network and batch; the table reports medians and their ratio.

    python benchmarks/step_time.py [--quick] [--nets 30 1024] [--ks 20 64] [--batches 100]
        [--repeats 20] [--json benchmarks/results/step_time.json]
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import optax

from _harness import interleaved_medians, markdown_table, parser, write_json
import symvi_jax  # noqa: F401  (make_step's default package)

NETS = {"30": (30,), "1024": (1024,), "4096": (4096,), "1024x1024": (1024, 1024)}
KS = (2, 5, 20, 64, 256)
BATCHES = (100, 1024)


def make_step(hidden, batch_size, objective, k, estimator="infonce", package=None, compiled=False):
    """A zero-argument jitted step of ``package`` (default: ``symvi_jax``; benchmarks/regression.py passes a past one).

    With ``compiled=True`` also returns the compiled program (for its HLO and cost analysis).
    """
    package = package or sys.modules["symvi_jax"]
    model = package.MLP(features=(*hidden, 10))
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    loglik = package.likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))
    kwargs = {}
    if objective == "symmetrized_elbo":
        kwargs = dict(group=package.PermutationGroup.from_params(params), num_permutations=k, estimator=estimator)
    algorithm = package.vi.build(loglik, optax.adam(1e-3), data_size=60_000, objective=objective, num_samples=1,
                                 **kwargs)
    state = algorithm.init(params)
    batch = (jax.random.uniform(jax.random.key(1), (batch_size, 784)),
             jax.random.randint(jax.random.key(2), (batch_size,), 0, 10))
    key = jax.random.key(3)
    step = jax.jit(algorithm.step).lower(key, state, batch).compile()
    run = lambda: step(key, state, batch)[1].objective  # noqa: E731
    return (run, step) if compiled else run


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/step_time.json")
    p.add_argument("--nets", nargs="+", choices=list(NETS), default=None, help="hidden layouts (default: all)")
    p.add_argument("--ks", nargs="+", type=int, default=None, help=f"values of K (default: {KS})")
    p.add_argument("--batches", nargs="+", type=int, default=None, help=f"batch sizes (default: {BATCHES})")
    args = p.parse_args()
    if any(k < 1 for k in args.ks or ()) or any(b < 1 for b in args.batches or ()):
        p.error("--ks and --batches must be positive integers")
    nets = {"30": NETS["30"], "1024": NETS["1024"]} if args.quick else NETS
    nets = {name: NETS[name] for name in args.nets} if args.nets else nets
    ks = tuple(args.ks) if args.ks else (5, 20) if args.quick else KS
    batches = tuple(args.batches) if args.batches else (100,) if args.quick else BATCHES
    rows, records = [], []
    for net_name, hidden in nets.items():
        for batch_size in batches:
            standard = make_step(hidden, batch_size, "elbo", None)
            for k in ks:
                symmetrized = make_step(hidden, batch_size, "symmetrized_elbo", k)
                times = interleaved_medians({"standard": standard, "symmetrized": symmetrized}, repeats=args.repeats)
                ratio = times["symmetrized"] / times["standard"]
                records.append(dict(width=net_name, batch=batch_size, K=k, standard_s=times["standard"],
                                    symmetrized_s=times["symmetrized"], ratio=ratio))
                rows.append([net_name, batch_size, k, f"{times['standard'] * 1e3:.3f}",
                             f"{times['symmetrized'] * 1e3:.3f}", f"{ratio:.2f}"])
                print(rows[-1], flush=True)
                write_json(args.json, {"benchmark": "step_time", "rows": records, "complete": False})
    print(markdown_table(["hidden", "batch", "K", "standard ms", "symmetrized ms", "ratio"], rows))
    write_json(args.json, {"benchmark": "step_time", "rows": records, "complete": True})


if __name__ == "__main__":
    main()
