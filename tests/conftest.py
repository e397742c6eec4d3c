import os

import pytest

from fixtures import KeySource

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
