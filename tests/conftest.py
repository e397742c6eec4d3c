import os

import pytest

from fixtures import KeySource

# CLI runs in tests compile into no shared cache unless a test asks for one (--compile-cache DIR)
os.environ.setdefault("SYMVI_JAX_CACHE", "off")


@pytest.fixture
def next_key():
    """A callable returning a fresh PRNG key on each call."""
    return KeySource(0)


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
    """chex.assert_max_traces counts per function code object, across tests: start each at zero."""
    import chex

    chex.clear_trace_counter()
    yield
