"""Lever probe: the forward orbit terms as one hand-written CPU loop (XLA FFI), against XLA's loop.

``units._forward_terms`` (one assignment per pass) compiles on XLA:CPU to a fused row gather with the
products, written out, then a product with ones that reads it back, per assignment. The kernel in
``orbit_terms_kernel.cc`` reads each gathered row, x, r and a once and sums in registers. Built
here with ``g++ -O3 -march=native`` against jaxlib's FFI headers; the library does not use it.

Issue 15's (b) shapes: units (d, C) = (``--width``, 795), the K - 1 assignments of
``--num-permutations``, 300 scanned iterations on pre-drawn units and assignments fed as the scan's
inputs (as ``symmetrization_floor.py``'s ``terms``), forward only, interleaved medians per
iteration; and the largest relative difference of the terms (the kernel sums in another order).
Then the whole (b) step: ``symmetrization_floor.py``'s standard and symmetrized epochs, and the
symmetrized epoch traced with ``units._forward_terms`` replaced by the kernel (the backward pass
unchanged), interleaved.

    PYTHONPATH=.:benchmarks python benchmarks/orbit_terms_kernel.py [--width 30] [--repeats 15]
"""

from __future__ import annotations

import ctypes
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from _harness import interleaved_medians, markdown_table, parser, write_json
from symmetrization_floor import STEPS as EPOCH_STEPS, epoch_loop
from symvi_jax import units

C, STEPS = 795, 300


def build(folder: str, lanes: int = 16) -> ctypes.CDLL:
    source = Path(__file__).with_name("orbit_terms_kernel.cc")
    library = Path(folder) / "liborbit_terms.so"
    subprocess.run(["g++", "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w", f"-DLANES={lanes}",
                    f"-I{jax.ffi.include_dir()}", str(source), "-o", str(library)], check=True)
    lib = ctypes.cdll.LoadLibrary(str(library))
    jax.ffi.register_ffi_target("symvi_orbit_terms", jax.ffi.pycapsule(lib.orbit_terms), platform="cpu")
    return lib


def kernel_terms(x, loc, a, p, s):
    call = jax.ffi.ffi_call("symvi_orbit_terms", jax.ShapeDtypeStruct((p.shape[0],), x.dtype), vmap_method="sequential")
    return call(x, x - loc, a, p, s)


def main():
    ap = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/orbit_terms_kernel.json")
    ap.add_argument("--width", type=int, default=30)
    ap.add_argument("--num-permutations", type=int, default=20)
    args = ap.parse_args()
    d, k = args.width, args.num_permutations
    with tempfile.TemporaryDirectory() as folder:
        build(folder)
        keys = jax.random.split(jax.random.key(d * k), 4)
        loc = jax.random.normal(keys[0], (d, C))
        sigma = 0.5 + jax.random.uniform(keys[2], (d, C))
        xs = loc + sigma * jax.random.normal(keys[1], (STEPS, d, C))  # weight draws from q
        a = 1.0 / jnp.square(sigma)
        ps = jax.vmap(lambda key: jax.vmap(lambda kk: jax.random.permutation(kk, d))(jax.random.split(key, k - 1)))(
            jax.random.split(keys[3], STEPS)).astype(jnp.int32)
        ss = jnp.ones(ps.shape, jnp.float32)

        def scanned(terms):
            @jax.jit
            def loop(xs, ps, ss):
                return jax.lax.scan(lambda c, v: (c + 1, terms(v[0], loc, a, v[1], v[2])), 0, (xs, ps, ss))[1]
            return loop

        fns = {"xla": scanned(lambda x, l, a_, p, s: units._forward_terms(x, l, a_, p, s, 1)),
               "kernel": scanned(kernel_terms)}
        out = {name: np.asarray(f(xs, ps, ss)) for name, f in fns.items()}
        repeats = 3 if args.quick else args.repeats
        t = interleaved_medians({name: (lambda f=f: f(xs, ps, ss)) for name, f in fns.items()}, repeats=repeats)
        steps = {"standard": epoch_loop("elbo", d, k), "symmetrized": epoch_loop("symmetrized_elbo", d, k)}
        patched = epoch_loop("symmetrized_elbo", d, k)
        original = units._forward_terms
        units._forward_terms = lambda x, loc, a_, p, s, per_pass: kernel_terms(x, loc, a_, p, s)
        try:
            jax.block_until_ready(patched())  # traced and compiled with the kernel
        finally:
            units._forward_terms = original
        steps["symmetrized, kernel terms"] = patched
        e = interleaved_medians(steps, repeats=repeats)
    us = {name: 1e6 * v / STEPS for name, v in t.items()}
    max_rel = float(np.max(np.abs(out["kernel"] - out["xla"]) / np.abs(out["xla"])))
    print(f"d = {d}, C = {C}, K - 1 = {k - 1} assignments, {STEPS} scanned iterations, forward only:")
    print(markdown_table(["terms by", "us / iteration", "/ XLA's loop"],
                         [[name, f"{v:.1f}", f"{v / us['xla']:.3f}"] for name, v in us.items()]))
    print(f"largest relative difference of the terms: {max_rel:.1e}")
    step_us = {name: 1e6 * v / EPOCH_STEPS for name, v in e.items()}
    print(f"\n(b)'s step, {EPOCH_STEPS} scanned steps of vi.run:")
    print(markdown_table(["step", "us / step", "/ standard"],
                         [[name, f"{v:.0f}", f"{v / step_us['standard']:.3f}"] for name, v in step_us.items()]))
    write_json(args.json, {"benchmark": "orbit_terms_kernel", "d": d, "K": k, "C": C, "us_per_iteration": us,
                           "ratio": us["kernel"] / us["xla"], "max_rel_diff": max_rel,
                           "step_us": step_us, "complete": True})


if __name__ == "__main__":
    main()
