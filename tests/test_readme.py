"""The README's Python example runs as printed, with small stand-ins for the user's data."""

import re
from pathlib import Path

import jax
import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    rng = np.random.default_rng(0)
    namespace = {
        "x_batch": rng.uniform(size=(100, 784)).astype(np.float32),
        "y_batch": rng.integers(0, 10, 100).astype(np.int32),
        "x_test": rng.uniform(size=(20, 784)).astype(np.float32),
        "key": jax.random.key(2),
    }
    exec(compile(blocks[0], str(README), "exec"), namespace)
    probs = np.asarray(namespace["probs"])
    assert probs.shape == (20, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert np.isfinite(float(namespace["info"].objective))


def test_readme_any_network_example_runs():
    """The second example: infer_symmetry on a residual CNN with LayerNorm, and the same group by hand."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "infer_symmetry" in b)
    namespace = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert namespace["group"].sizes == (8,)
    assert "LayerNorm_0/scale" in str(namespace["report"])
