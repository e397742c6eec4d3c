"""scikit-learn's diabetes, breast cancer and digits (offline): symvi-jax MFVI and symmetrized VI
against NumPyro SVI (AutoNormal), mean +- s.e. over 10 random splits (``symvi-jax realdata``).

    PYTHONPATH=. nice -n 10 python benchmarks/sklearn_datasets.py [--out DIR] [--any-config-key VALUE ...]

Prints the tables of docs/realdata.md and writes results.json / results.md into ``--out``
(default benchmarks/results/cpu/realdata). Extra flags are ``symvi-jax realdata`` flags
(``--num-splits 1 --num-steps 200`` for a quick look).
"""

from __future__ import annotations

import sys

from symvi_jax import cli


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv:
        argv += ["--out", "benchmarks/results/cpu/realdata"]
    return cli.main(["realdata", "--config", "configs/realdata.yaml"] + argv)


if __name__ == "__main__":
    sys.exit(main())
