"""tests/conftest.py's ``default_emitters`` hook: the marked tests run in one child pytest with XLA:CPU's
fusion emitters on, whichever xdist worker they fall to, and a failure there fails the test in the parent."""

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


def _record_pid():
    with open(os.path.join(os.path.dirname(__file__), "child_pids"), "a") as f:
        f.write(f"{os.getpid()}\\n")


@pytest.mark.default_emitters
def test_child_has_the_fusion_emitters():
    _record_pid()
    assert "--xla_cpu_use_fusion_emitters=true" in os.environ["XLA_FLAGS"]


@pytest.mark.default_emitters
def test_child_failure():
    _record_pid()
    assert False, "deliberate failure in the child"


def test_parent_has_the_loop_emitters():
    assert "--xla_cpu_use_fusion_emitters=false" in os.environ["XLA_FLAGS"]
'''


def test_marked_tests_run_in_one_child_with_the_fusion_emitters_and_its_failure_fails_the_parent(tmp_path):
    if "--xla_cpu_use_fusion_emitters=false" not in os.environ["XLA_FLAGS"]:
        pytest.skip("the suite runs with XLA:CPU's fusion emitters here (XLA_FLAGS or this jaxlib): no child runs")
    for name in ("conftest.py", "fixtures.py"):
        shutil.copy(HERE / name, tmp_path / name)
    (tmp_path / "test_probe.py").write_text(PROBE)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-n", "2",
                          str(tmp_path)], cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True,
                         timeout=300)
    out = run.stdout
    assert run.returncode == 1, out[-3000:] + run.stderr[-2000:]
    assert "PASSED test_probe.py::test_child_has_the_fusion_emitters" in out, out[-3000:]
    assert "PASSED test_probe.py::test_parent_has_the_loop_emitters" in out, out[-3000:]
    assert "FAILED test_probe.py::test_child_failure" in out and "deliberate failure in the child" in out, out[-3000:]
    pids = (tmp_path / "child_pids").read_text().split()
    assert len(pids) == 2 and len(set(pids)) == 1, pids  # both marked tests, once each, in one child
