import os

# Most of this suite's time is XLA compiling small programs. At XLA:CPU's backend optimisation level 0
# (LLVM without its optimisation passes) the suite took 9 min 55 s instead of 16 min 0 s on the 2-core
# CPU, all tests passing both ways. The programs compute the same values up to float rounding, and
# every bitwise comparison in the suite is between programs compiled alike. Set before jax starts its
# backend; the CLI runs of the tests inherit it. A level already in XLA_FLAGS is kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

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
