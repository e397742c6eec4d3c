"""tests/conftest.py's ``default_emitters`` hook: a marked test runs in a child pytest with XLA:CPU's
fusion emitters on, and a failure there fails the test in the parent."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent

PROBE = '''
import os

import pytest


@pytest.mark.default_emitters
def test_child_has_the_fusion_emitters():
    assert "--xla_cpu_use_fusion_emitters=true" in os.environ["XLA_FLAGS"]


@pytest.mark.default_emitters
def test_child_failure():
    assert False, "deliberate failure in the child"


def test_parent_has_the_loop_emitters():
    assert "--xla_cpu_use_fusion_emitters=false" in os.environ["XLA_FLAGS"]
'''


def test_a_marked_test_runs_in_a_child_with_the_fusion_emitters_and_its_failure_fails_the_parent(tmp_path):
    if "--xla_cpu_use_fusion_emitters=false" not in os.environ["XLA_FLAGS"]:
        pytest.skip("the suite runs with XLA:CPU's fusion emitters here (XLA_FLAGS or this jaxlib): no child runs")
    for name in ("conftest.py", "fixtures.py"):
        shutil.copy(HERE / name, tmp_path / name)
    (tmp_path / "test_probe.py").write_text(PROBE)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:xdist",
                          str(tmp_path)], cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True,
                         timeout=300)
    out = run.stdout
    assert run.returncode == 1, out[-3000:] + run.stderr[-2000:]
    assert "PASSED test_probe.py::test_child_has_the_fusion_emitters" in out, out[-3000:]
    assert "PASSED test_probe.py::test_parent_has_the_loop_emitters" in out, out[-3000:]
    assert "FAILED test_probe.py::test_child_failure" in out and "deliberate failure in the child" in out, out[-3000:]
