"""``import symvi_jax`` imports no optional dependency; features import theirs when used (issue #13)."""

import json
import subprocess
import sys

import pytest

import symvi_jax
from symvi_jax import _optional, cli

# pyyaml is not here: flax imports it (flax.linen.summary), so it comes with the core install.
OPTIONAL = ("blackjax", "orbax", "tqdm", "matplotlib")


def _modules_after(code):
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_import_symvi_jax_imports_no_optional_dependency():
    modules = _modules_after("import symvi_jax")
    assert not {m for m in modules if m.split(".")[0] in OPTIONAL}
    assert not {m for m in modules if m.startswith(("symvi_jax.experiments", "symvi_jax.cli"))}
    assert not {"symvi_jax.hmc", "symvi_jax.checkpoint", "symvi_jax.diagnostics"} & modules


def test_cli_imports_only_the_module_of_the_command_it_runs():
    modules = _modules_after("from symvi_jax import cli\nparser = cli.build_parser(command='demo')")
    others = {path for name, (path, _) in cli.COMMANDS.items() if name not in ("demo", "tractable")}
    assert "symvi_jax.experiments.demo" in modules and not others & modules  # demo uses tractable.problem
    assert not {m for m in modules if m.split(".")[0] in OPTIONAL}


def test_cli_help_lists_every_command_without_importing_any():
    code = "from symvi_jax import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass"
    modules = _modules_after(code)
    assert not {m for m in modules if m.startswith("symvi_jax.experiments.")}


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_cli_summaries_are_the_modules_first_docstring_lines(name):
    import importlib

    module_path, summary = cli.COMMANDS[name]
    assert importlib.import_module(module_path).__doc__.strip().splitlines()[0] == summary


@pytest.mark.parametrize("name", ["diagnostics", "checkpoint", "hmc"])
def test_submodules_are_attributes_of_the_package(name):
    assert getattr(symvi_jax, name).__name__ == f"symvi_jax.{name}"
    assert name in dir(symvi_jax)
    with pytest.raises(AttributeError, match="no_such_module"):
        symvi_jax.no_such_module  # noqa: B018


def test_a_missing_optional_dependency_names_the_extra():
    assert _optional.available("numpy") and not _optional.available("no_such_package.sub")
    with pytest.raises(ImportError, match=r"symvi-jax\[hmc\]"):
        _optional.require("no_such_package_xyz", extra="hmc", feature="symvi_jax.hmc")
