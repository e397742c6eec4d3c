"""The ``symvi-jax`` command line (also ``python -m symvi_jax``).

Every experiment subcommand takes ``--config FILE.yaml``, ``--out DIR`` and one flag per config
key (``--num-seeds 3``; tuples comma-separated, ``--widths 5,10``, or in YAML syntax,
``--widths "[5, 10]"``), and writes ``results.json``, ``results.md`` and figures into ``--out``.
See ``experiments/base.py``. Flags must be spelled out in full: every parser is built with
``allow_abbrev=False``, so a typo such as ``--num-step 50`` is an error (with a suggestion), not
silently taken as ``--num-steps``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import inspect
import sys
import time
import typing
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["main", "COMMANDS"]

#: Experiment subcommands: name -> (module with ``Config``, ``run`` and a module docstring, the
#: one-line summary ``symvi-jax --help`` shows). The module is imported only when its command runs
#: (or its ``--help`` is asked for); ``tests/test_cli.py`` checks each summary against the module's
#: first docstring line.
COMMANDS = {
    "demo": ("symvi_jax.experiments.demo",
             "MFVI vs symmetrized VI on the paper's two-unit ReLU regression, no download needed."),
    "train": ("symvi_jax.experiments.train",
              "Train an MLP with vi.fit on generated data, checkpointed, resumable with --resume (no download)."),
    "mixture": ("symvi_jax.experiments.mixture",
                "Section 3: a single Gaussian fitted by reverse KL to two equal modes interpolates them below a*."),
    "tractable": ("symvi_jax.experiments.tractable",
                  "The paper's tractable BNN (Tables 2 and 3, Figure 4) against an exact grid and an HMC reference."),
    "mnist": ("symvi_jax.experiments.mnist",
              "MNIST / Fashion-MNIST with small MLPs: MFVI vs the symmetrized posterior (SGM), Table 1."),
    "estimators": ("symvi_jax.experiments.estimators",
                   "Orbit estimators on MNIST posteriors: uniform vs importance against exact I, wide nets, training."),
    "sign-flips": ("symvi_jax.experiments.sign_flips",
                   "How much of I(g; w) comes from sign flips and how much from permutations, on tanh nets."),
    "regression": ("symvi_jax.experiments.regression",
                   "Learned noise on 1-D regression: type-II ML against the true noise sd, and predictive interval coverage."),
    "cnn": ("symvi_jax.experiments.cnn",
            "A small CNN on MNIST / Fashion-MNIST with its channel symmetry read off the network."),
    "realdata": ("symvi_jax.experiments.realdata",
                 "Real data, offline: MFVI and symmetrized VI against NumPyro's SVI (AutoNormal) on scikit-learn's data sets."),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_experiment_parser(subparsers, name: str, module_path: str, summary: str, *, with_flags: bool = True):
    """The subparser of one experiment; its config flags (which import the module) only if ``with_flags``."""
    if not with_flags:  # listed in the top-level help, never parsed with
        parser = subparsers.add_parser(name, help=summary, description=summary, allow_abbrev=False)
        parser.set_defaults(_parser=parser)
        return parser
    module = importlib.import_module(module_path)
    parser = subparsers.add_parser(name, help=summary, description=module.__doc__, allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of config keys (flags override it)")
    parser.add_argument("--out", default=f"out/{name}", help="output directory (default: %(default)s)")
    hints = typing.get_type_hints(module.Config)
    for field in dataclasses.fields(module.Config):
        default = field.default if field.default is not dataclasses.MISSING else None
        parser.add_argument(_flag(field.name), dest=f"config__{field.name}", default=None, metavar="VALUE",
                            help=f"{getattr(hints[field.name], '__name__', hints[field.name])} (default: {default})")
    if "resume" in inspect.signature(module.run).parameters:  # experiments that checkpoint into --out
        parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in OUT/checkpoints")
    parser.add_argument("--compile-cache", default=None, metavar="DIR",
                        help="persistent XLA compilation cache: a second run of the same programs compiles nothing "
                             "(default: $SYMVI_JAX_CACHE or ~/.cache/symvi-jax/jax; 'off' disables it)")
    parser.set_defaults(_module=module, _parser=parser)
    return parser


def _run_experiment(args) -> int:
    from symvi_jax.experiments import base

    module = args._module
    hints = typing.get_type_hints(module.Config)
    overrides = {}
    for key, value in vars(args).items():
        if key.startswith("config__") and value is not None:
            field = key[len("config__"):]
            overrides[field] = base.parse_value(value, hints[field], field)
    config = base.load_config(module.Config, args.config, overrides)
    base.check_output_dir(args.out)
    from symvi_jax import compilation

    start = time.perf_counter()
    kwargs = {}
    if "resume" in inspect.signature(module.run).parameters:
        kwargs = dict(checkpoint_dir=str(Path(args.out) / "checkpoints"), resume=args.resume)
    with compilation.persistent_cache(args.compile_cache) as cache_dir, compilation.CompileStats() as stats:
        result = module.run(config, **kwargs)
    written = base.write_results(args.out, config, result)
    print(result.markdown)
    print(f"\nwrote {', '.join(str(p) for p in written)} in {time.perf_counter() - start:.1f} s")
    print(stats.summary(cache_dir))
    return 0


def _add_data_parser(subparsers):
    from symvi_jax import data

    parser = subparsers.add_parser("data", help="download and verify datasets (symvi-jax data fetch NAME)",
                                   allow_abbrev=False)
    actions = parser.add_subparsers(dest="data_command", required=True)
    fetch = actions.add_parser("fetch", help="download the IDX files of NAME and check their SHA-256 digests",
                               allow_abbrev=False)
    fetch.add_argument("name", choices=data.DATASETS)
    fetch.add_argument("--dir", default=None, help=f"target directory (default: {data.default_data_dir()}/NAME)")
    parser.set_defaults(_handler=_run_data)
    fetch.set_defaults(_parser=fetch)


def _run_data(args) -> int:
    from symvi_jax import data

    directory = data.fetch(args.name, args.dir, progress=True)
    print(f"{args.name}: the four IDX files are in {directory} (use --data {directory})")
    return 0


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``symvi-jax`` parser.

    Args:
      command: build the config flags of this experiment only (importing only its module); the
        other experiments are listed with their summaries. None: build every experiment's flags.
    """
    parser = argparse.ArgumentParser(prog="symvi-jax", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (module_path, summary) in COMMANDS.items():
        _add_experiment_parser(subparsers, name, module_path, summary, with_flags=command in (None, name))
    _add_data_parser(subparsers)
    return parser


def _command_name(argv: Sequence[str]) -> str:
    """The subcommand named in ``argv`` (its first word that is not an option), or "" if none."""
    return next((word for word in argv if not word.startswith("-")), "")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(command=_command_name(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # report it on the subcommand's parser, whose usage lists every flag
        flags = sorted(o for action in args._parser._actions for o in action.option_strings if o.startswith("--"))
        close = difflib.get_close_matches(unknown[0], flags, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        args._parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    try:
        return getattr(args, "_handler", _run_experiment)(args)
    except ValueError as err:
        print(f"symvi-jax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
