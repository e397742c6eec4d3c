import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile

# Most of this suite's time is XLA compiling small programs (about 95% of it, from jax's monitoring
# events), so it compiles them the quick way: XLA:CPU's backend optimisation level 0 (LLVM without its
# optimisation passes) and XLA:CPU's older loop emitters instead of its fusion emitters
# (--xla_cpu_use_fusion_emitters=false). Level 0 took the suite from 16 min 0 s to 9 min 55 s; the
# loop emitters then from 18 min 46 s to 10 min 16 s on a slower 2-core host (benchmarks/RESULTS.md,
# "Fifteenth stop"). Set before jax starts its backend; workers and the CLI runs of the tests inherit them. A
# setting already in XLA_FLAGS is kept, and the emitter flag is added only where this jaxlib knows it
# (XLA aborts on an unknown flag).
#
# The programs compute the same values up to float rounding. Bitwise comparisons between programs
# compiled alike hold under any settings; a few tests compare *different* programs bit for bit (our
# one-op normals against jax.random.normal, a step built two ways), a property of XLA's default
# emitters that the loop emitters do not keep. Those are marked ``default_emitters`` and run with the
# fusion emitters on, all of a session's in one child pytest (:func:`pytest_pyfunc_call`).
_LEVEL = "--xla_backend_optimization_level=0"
_EMITTERS = "--xla_cpu_use_fusion_emitters"
_PROBE = "SYMVI_JAX_TEST_EMITTER_FLAG"  # "1": this jaxlib takes the flag, "0": it does not
_REPORTS = "SYMVI_JAX_TEST_CHILD_REPORTS"  # in the child pytest: the file its test reports go to


def _jaxlib_takes(flag: str) -> bool:
    env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
    probe = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0


_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
    _flags = f"{_flags} {_LEVEL}"
if _EMITTERS not in _flags:
    if _PROBE not in os.environ:
        os.environ[_PROBE] = "1" if _jaxlib_takes(f"{_EMITTERS}=false") else "0"
    if os.environ[_PROBE] == "1":
        _flags = f"{_flags} {_EMITTERS}=false"
os.environ["XLA_FLAGS"] = _flags.strip()
# No Python frames in the programs' MLIR locations: metadata only (a symmetrized step's outputs were bitwise
# the same, its MLIR text 19% shorter). Compile-bound test files took 0.85-1.05x as long in five pairs,
# 0.92x in the median: at this host's noise level, not shown ("Sixteenth stop"). A value already set wins.
os.environ.setdefault("JAX_TRACEBACK_IN_LOCATIONS_LIMIT", "0")

import pytest  # noqa: E402

from fixtures import KeySource  # noqa: E402

# CLI runs in tests compile into no shared cache unless a test asks for one (--compile-cache DIR)
os.environ.setdefault("SYMVI_JAX_CACHE", "off")


@pytest.fixture
def next_key():
    """A callable returning a fresh PRNG key on each call."""
    return KeySource(0)


@pytest.fixture(scope="module")
def float64():
    """jax_enable_x64 on for a module's tests, restored after: ``pytestmark = pytest.mark.usefixtures("float64")``."""
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
    """chex.assert_max_traces counts per function code object, across tests: start each at zero."""
    import chex

    chex.clear_trace_counter()
    yield


_SHARED = pytest.StashKey[str]()  # the session's folder for the child pytest's reports


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "default_emitters: compares different programs bit for bit; runs in a child pytest with "
                   "XLA:CPU's fusion emitters on (tests/conftest.py)")
    if not hasattr(config, "workerinput"):  # the session's own process, with or without xdist workers
        config.stash[_SHARED] = tempfile.mkdtemp(prefix="symvi-jax-tests-")


def pytest_unconfigure(config):
    if _SHARED in config.stash:
        shutil.rmtree(config.stash[_SHARED], ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist: each worker gets the session's folder, where the child pytest's reports are shared."""
    node.workerinput["symvi_jax_shared"] = node.config.stash[_SHARED]


def _shared_folder(config) -> str:
    return config.workerinput["symvi_jax_shared"] if hasattr(config, "workerinput") else config.stash[_SHARED]


def pytest_runtest_logreport(report):
    """In the child pytest: every phase's outcome, for the parent to read."""
    if os.environ.get(_REPORTS):
        with open(os.environ[_REPORTS], "a") as f:
            f.write(json.dumps({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                                "text": report.longreprtext}) + "\n")


def _child_reports(session) -> tuple[dict, str]:
    """Runs every selected ``default_emitters`` test in one child pytest with the fusion emitters, once per
    session: the first worker to need it runs it under a lock, the others read its reports."""
    folder = _shared_folder(session.config)
    reports, done = os.path.join(folder, "reports.jsonl"), os.path.join(folder, "child_output.txt")
    with open(os.path.join(folder, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(done):
            nodeids = [item.nodeid for item in session.items if item.get_closest_marker("default_emitters")]
            flags = os.environ["XLA_FLAGS"].replace(f"{_EMITTERS}=false", f"{_EMITTERS}=true")
            child = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-m",
                 "default_emitters", *nodeids],
                cwd=str(session.config.rootpath), env=dict(os.environ, XLA_FLAGS=flags, **{_REPORTS: reports}),
                capture_output=True, text=True)
            with open(done, "w") as f:
                f.write(f"child pytest, exit {child.returncode}:\n{child.stdout[-4000:]}\n{child.stderr[-2000:]}")
    by_node = {}
    if os.path.exists(reports):
        with open(reports) as f:
            for line in f:
                record = json.loads(line)
                by_node.setdefault(record["nodeid"], []).append(record)
    with open(done) as f:
        return by_node, f.read()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """A ``default_emitters`` test under the loop emitters takes its outcome from the child pytest's run of it."""
    if pyfuncitem.get_closest_marker("default_emitters") is None or f"{_EMITTERS}=false" not in os.environ["XLA_FLAGS"]:
        return None
    by_node, output = _child_reports(pyfuncitem.session)
    records = by_node.get(pyfuncitem.nodeid, [])
    failed = [r for r in records if r["outcome"] == "failed"]
    if failed:
        pytest.fail("under XLA:CPU's fusion emitters (child pytest), the " + failed[0]["when"] + " phase failed:\n"
                    + failed[0]["text"][-4000:], pytrace=False)
    skipped = [r for r in records if r["outcome"] == "skipped"]
    if skipped:
        pytest.skip("under XLA:CPU's fusion emitters (child pytest): " + skipped[0]["text"][-1000:])
    if not any(r["when"] == "call" and r["outcome"] == "passed" for r in records):
        pytest.fail(f"the child pytest did not run this test ({output})", pytrace=False)
    return True
