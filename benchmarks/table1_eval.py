"""Where one width's evaluation in the Table 1 protocol spends its time, and levers on it.

One width of ``configs/mnist_table1.yaml`` (real MNIST test set, Fashion-MNIST as OOD), with an
untrained q stacked for ``--runs`` runs (evaluation does not depend on how long q trained). For
the working tree it times, ahead-of-time compiled, the pieces of one run's evaluation
(``mnist._evaluation_pieces``: the predictive on one 10k set, the K = 1000 I^K terms, the
metrics) with XLA's flop and byte counts and compile times; then the whole evaluate program
(``mnist._evaluate_program``) of the working tree against ``--base`` (``git archive`` of that
revision, imported as ``symvi_jax_base``) and against the working tree's program run as two
halves from two threads (``eval_workers: 2``, ``mnist._evaluate_distinct``), interleaved, with a
bitwise check of every output. ``--runs 10``: a Table 1 width's 10 distinct runs.

    PYTHONPATH=.:benchmarks python benchmarks/table1_eval.py --width 30 --runs 4 --repeats 3 --base HEAD
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from _harness import markdown_table, parser, write_json
from regression import import_base, program_stats


def _compile(fn, *args):
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - start


def _timed(fns: dict, repeats: int) -> dict:
    """Median wall and process-CPU seconds of each zero-argument callable, round-robin."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    wall, cpu = {n: [] for n in fns}, {n: [] for n in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), os.times()
            jax.block_until_ready(fn())
            t1, c1 = time.perf_counter(), os.times()
            wall[name].append(t1 - t0)
            cpu[name].append(c1.user + c1.system - c0.user - c0.system)
    return {n: (statistics.median(wall[n]), statistics.median(cpu[n])) for n in fns}


def setup(package, width: int, runs: int):
    """Config, data, the width's apply_fn and group, and an untrained q with ``runs`` leading runs."""
    mnist = __import__(f"{package.__name__}.experiments.mnist", fromlist=["mnist"])
    base = __import__(f"{package.__name__}.experiments.base", fromlist=["base"])
    config = base.load_config(mnist.Config, "configs/mnist_table1.yaml", {"widths": (width,)})
    x_train, y_train, x_test, y_test, ood = mnist._load(config)
    methods = [mnist._method_k(m, 20) for m in config.methods]
    _, apply_fn, group = mnist._train_program(config, width, len(x_train), x_train.shape[1], methods)
    model = package.MLP(features=(width,) * config.num_hidden_layers + (10,))

    def one_q(key):
        params = model.init(key, jnp.zeros((1, x_train.shape[1])))["params"]
        return package.meanfield.init(params, init_scale=config.init_scale)

    q = jax.vmap(one_q)(jax.random.split(jax.random.key(1), runs))
    keys = jnp.tile(jax.random.split(jax.random.key(2), -(-runs // 4)), 4)[:runs]
    data = jax.device_put((x_test, y_test, ood[1]))
    return mnist, config, apply_fn, group, q, keys, data


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/table1_eval.json")
    p.add_argument("--width", type=int, default=30)
    p.add_argument("--runs", type=int, default=4, help="runs stacked (the protocol has 40 per width)")
    p.add_argument("--base", default=None, help="a revision whose evaluate program to time against")
    p.add_argument("--pieces-only", action="store_true", help="time the pieces of one run, not the whole program")
    args = p.parse_args()
    import symvi_jax as new

    mnist, config, apply_fn, group, q, keys, (x_test, y_test, ood) = setup(new, args.width, args.runs)
    record = dict(width=args.width, runs=args.runs, load_average=os.getloadavg())
    print(f"load average {os.getloadavg()}", flush=True)

    # ---- the pieces of one run
    probs_fn, mi_fn, metrics_fn = mnist._evaluation_pieces(config, apply_fn, group)
    q0, k0 = jax.tree.map(lambda x: x[0], q), keys[0]
    pieces = {
        "predictive, one 10k set": (jax.jit(probs_fn), (k0, q0, x_test)),
        f"I^K terms, K = {config.mi_num_permutations}, {config.mi_num_samples} samples": (jax.jit(mi_fn), (k0, q0)),
        "metrics (accuracy, NLL, ECE, entropy)": (jax.jit(metrics_fn), (jnp.full((len(y_test), 10), 0.1), y_test)),
        "unit statistics": (jax.jit(lambda q: mnist.unit_statistics(q, group.layer_names, config.prior_scale)), (q0,)),
    }
    compiled, rows = {}, []
    for name, (fn, fargs) in pieces.items():
        compiled[name], seconds = _compile(fn, *fargs)
        record.setdefault("pieces", {})[name] = dict(compile_s=seconds, **program_stats(compiled[name]))
    times = _timed({n: (lambda c=compiled[n], a=pieces[n][1]: c(*a)) for n in pieces}, args.repeats)
    per_run = {"predictive, one 10k set": 2}  # the test set and the OOD set
    for name in pieces:
        info = record["pieces"][name]
        info.update(wall_s=times[name][0], cpu_s=times[name][1])
        share = per_run.get(name, 1) * times[name][0]
        rows.append([name, f"{info['compile_s']:.1f}", f"{info['flops']:.3g}", f"{info['bytes_accessed']:.3g}",
                     f"{times[name][0]:.3f}", f"{times[name][1]:.3f}", f"{40 * share:.0f}"])
    print(markdown_table(["piece (one run)", "compile s", "flops", "bytes", "wall s", "cpu s",
                          "x 40 runs (x2 sets for the predictive), s"], rows), flush=True)

    if args.pieces_only:
        write_json(args.json, record)
        return
    # ---- the whole evaluate program: base, new, new as two concurrent halves
    contenders, outputs = {}, {}
    eval_args = (q, keys, x_test, y_test, ood)
    programs = [("new", mnist, apply_fn, group, eval_args)]
    tmp = tempfile.TemporaryDirectory()
    if args.base:
        old = import_base(args.base, Path(tmp.name))
        b_mnist, b_config, b_apply, b_group, b_q, b_keys, b_data = setup(old, args.width, args.runs)
        programs.insert(0, ("base", b_mnist, b_apply, b_group, (b_q, b_keys) + tuple(b_data)))
    record["programs"] = {}
    for label, module, fn_apply, fn_group, fargs in programs:
        fn = module._evaluate_program(module.base.load_config(module.Config, "configs/mnist_table1.yaml",
                                                              {"widths": (args.width,)}), fn_apply, fn_group)
        prog, seconds = _compile(fn, *fargs)
        record["programs"][label] = dict(compile_s=seconds, **program_stats(prog))
        print(f"{label} evaluate program: compiled in {seconds:.1f} s", flush=True)
        contenders[label] = (lambda prog=prog, fargs=fargs: prog(*fargs))
        outputs[label] = jax.device_get(prog(*fargs))
    half = args.runs // 2
    if half and args.runs % 2 == 0:  # ``eval_workers: 2``: the runs in two calls of half, from two threads
        fn = mnist._evaluate_program(config, apply_fn, group)
        prog_half, seconds = _compile(fn, jax.tree.map(lambda x: x[:half], q), keys[:half], x_test, y_test, ood)
        print(f"half-runs evaluate program: compiled in {seconds:.1f} s", flush=True)
        name = "new, eval_workers 2 (two threads x half the runs)"
        contenders[name] = lambda: mnist._evaluate_distinct(prog_half, q, keys, (x_test, y_test, ood), block=half,
                                                            workers=2)[0]
        outputs[name] = contenders[name]()
    reference = outputs["base" if args.base else "new"]
    times = _timed(contenders, args.repeats)
    rows = []
    for name, (wall, cpu) in times.items():
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(outputs[name])))
        record["programs"].setdefault(name, {}).update(wall_s=wall, cpu_s=cpu, bitwise_equal=same)
        rows.append([name, f"{wall:.2f}", f"{cpu:.2f}", f"{40 * wall / args.runs:.0f}", "yes" if same else "NO"])
    print(markdown_table(["evaluate program", f"wall s ({args.runs} runs)", "cpu s", "x 40 runs, s",
                          "outputs bitwise equal"], rows))
    record["load_average_end"] = os.getloadavg()
    print(f"load average {os.getloadavg()}")
    write_json(args.json, record)
    tmp.cleanup()


if __name__ == "__main__":
    main()
