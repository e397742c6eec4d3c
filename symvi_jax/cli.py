"""The ``symvi-jax`` command line (also ``python -m symvi_jax``).

Every experiment subcommand takes ``--config FILE.yaml``, ``--out DIR`` and one flag per config
key (``--num-seeds 3``; tuples in YAML syntax, ``--widths "[5, 10]"``), and writes
``results.json``, ``results.md`` and figures into ``--out``. See ``experiments/base.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import time
import typing
from typing import Optional, Sequence

from symvi_jax.experiments import base

__all__ = ["main", "COMMANDS"]

#: Experiment subcommands: name -> module with ``Config``, ``run`` and a one-line ``__doc__``.
COMMANDS = {
    "demo": "symvi_jax.experiments.demo",
    "estimators": "symvi_jax.experiments.estimators",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_experiment_parser(subparsers, name: str, module_path: str):
    module = importlib.import_module(module_path)
    summary = (module.__doc__ or name).strip().splitlines()[0]
    parser = subparsers.add_parser(name, help=summary, description=module.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of config keys (flags override it)")
    parser.add_argument("--out", default=f"out/{name}", help="output directory (default: out/%(default)s)")
    hints = typing.get_type_hints(module.Config)
    for field in dataclasses.fields(module.Config):
        default = field.default if field.default is not dataclasses.MISSING else None
        parser.add_argument(_flag(field.name), dest=f"config__{field.name}", default=None, metavar="VALUE",
                            help=f"{getattr(hints[field.name], '__name__', hints[field.name])} (default: {default})")
    parser.set_defaults(_module=module)
    return parser


def _run_experiment(args) -> int:
    module = args._module
    hints = typing.get_type_hints(module.Config)
    overrides = {}
    for key, value in vars(args).items():
        if key.startswith("config__") and value is not None:
            field = key[len("config__"):]
            overrides[field] = base.parse_value(value, hints[field], field)
    config = base.load_config(module.Config, args.config, overrides)
    base.check_output_dir(args.out)
    start = time.perf_counter()
    result = module.run(config)
    written = base.write_results(args.out, config, result)
    print(result.markdown)
    print(f"\nwrote {', '.join(str(p) for p in written)} in {time.perf_counter() - start:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="symvi-jax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, module_path in COMMANDS.items():
        _add_experiment_parser(subparsers, name, module_path)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run_experiment(args)
    except ValueError as err:
        print(f"symvi-jax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
