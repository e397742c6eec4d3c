import json
import os
import subprocess
import sys

import pytest

from symvi_jax import cli
from symvi_jax.experiments import base, demo

QUICK = ["--num-seeds", "2", "--num-steps", "30", "--num-eval-samples", "50"]


def test_demo_writes_results(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", *QUICK, "--out", str(out)]) == 0
    payload = json.loads((out / "results.json").read_text())
    assert payload["config"]["num_seeds"] == 2 and payload["config"]["num_steps"] == 30
    rows = payload["rows"]
    assert len(rows) == 4 and {r["method"] for r in rows} == {"mfvi", "sgm"}
    for row in rows:
        assert {"seed", "alpha", "test_mse", "elbo", "elbo_symmetrized", "mutual_information", "mode_distance"} <= set(row)
        assert row["elbo_symmetrized"] >= row["elbo"] - 1e-3  # L^G = L + I with exact I >= 0 (Monte Carlo over w)
    assert "| test MSE |" in (out / "results.md").read_text()
    assert "SGM - MFVI" in capsys.readouterr().out
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]


def test_config_file_and_flags_compose(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("num_seeds: 3\nalpha: 0.1\n")
    config = base.load_config(demo.Config, str(path), {"alpha": 0.2})
    assert config.num_seeds == 3 and config.alpha == 0.2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-seeds", "0"], "num_seeds"),
        (["--alpha", "-1"], "alpha"),
        (["--learning-rate", "abc"], "learning_rate"),
        (["--num-steps", "2.5"], "num_steps"),
    ],
)
def test_bad_flags_fail_cleanly_and_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert cli.main(["demo", *argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unknown_config_key_lists_the_valid_ones(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("num_sedes: 3\n")
    assert cli.main(["demo", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "num_sedes" in err and "num_seeds" in err
    assert cli.main(["demo", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    assert cli.main(["demo", *QUICK, "--out", str(locked / "o")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_output_path_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert cli.main(["demo", *QUICK, "--out", str(target)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "symvi_jax", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "fetch", "mnist", "--bogus"], "--bogus"),
        (["data", "fetch", "cifar10"], "cifar10"),
        (["data"], "data_command"),
    ],
)
def test_data_fetch_usage_errors_name_the_argument(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage errors exit with status 2
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: symvi-jax data" in err
