import pytest

from fixtures import KeySource


@pytest.fixture
def next_key():
    """A callable returning a fresh PRNG key on each call."""
    return KeySource(0)
