import os
import subprocess
import sys

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
# emitters that the loop emitters do not keep. Those are marked ``default_emitters`` and run in a
# child pytest with the fusion emitters on (:func:`pytest_pyfunc_call`).
_LEVEL = "--xla_backend_optimization_level=0"
_EMITTERS = "--xla_cpu_use_fusion_emitters"
_PROBE = "SYMVI_JAX_TEST_EMITTER_FLAG"  # "1": this jaxlib takes the flag, "0": it does not


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


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "default_emitters: compares different programs bit for bit; runs in a child pytest with "
                   "XLA:CPU's fusion emitters on (tests/conftest.py)")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """A ``default_emitters`` test under the loop emitters runs as a child pytest with the fusion emitters."""
    if pyfuncitem.get_closest_marker("default_emitters") is None or f"{_EMITTERS}=false" not in os.environ["XLA_FLAGS"]:
        return None
    flags = os.environ["XLA_FLAGS"].replace(f"{_EMITTERS}=false", f"{_EMITTERS}=true")
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-m", "default_emitters",
         pyfuncitem.nodeid],
        cwd=str(pyfuncitem.config.rootpath), env=dict(os.environ, XLA_FLAGS=flags), capture_output=True, text=True)
    if child.returncode != 0 or " passed" not in child.stdout:
        pytest.fail(f"under XLA:CPU's fusion emitters (child pytest, exit {child.returncode}):\n"
                    f"{child.stdout[-4000:]}\n{child.stderr[-2000:]}", pytrace=False)
    return True
