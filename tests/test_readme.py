"""The README's Python example runs exactly as printed: the README defines every name it uses."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"
FIT_LINE = "# or: "


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    return blocks[0]


def test_readme_example_runs_as_printed():
    namespace: dict = {}  # nothing is supplied: a name the README leaves undefined is a NameError
    exec(compile(_example(), str(README), "exec"), namespace)
    probs = np.asarray(namespace["probs"])
    assert probs.shape == (20, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert np.isfinite(float(namespace["info"].objective))
    assert namespace["algorithm"].data_size == len(namespace["x"])  # what vi.fit checks

    # the commented alternative is a whole run with vi.fit; it runs as printed too
    (line,) = [line for line in _example().splitlines() if line.startswith(FIT_LINE)]
    exec(compile(line[len(FIT_LINE):], str(README), "exec"), namespace)
    history = namespace["history"]
    assert history.objective.shape == (10, 4) and np.all(np.isfinite(history.objective))


def test_readme_any_network_example_runs():
    """The second example: infer_symmetry on a residual CNN with LayerNorm, and the same group by hand."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "infer_symmetry" in b)
    namespace = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert namespace["group"].sizes == (8,)
    assert "LayerNorm_0/scale" in str(namespace["report"])


def test_readme_learned_hyperparameters_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "learn_noise=True" in b)
    namespace = {}
    exec(compile(example, str(README), "exec"), namespace)
    learned = namespace["learned"]
    assert set(learned) == {"noise_precision", "prior_scale"}
    assert 0.2 < float(learned["noise_precision"]) ** -0.5 < 0.5  # from sd 1 towards the true 0.3


def test_readme_objective_value_example_is_the_build_example():
    """The objective-value block, run after the first example: its algorithm steps bitwise as vi.build's."""
    import jax

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "vi.from_objective" in b)
    namespace: dict = {}
    exec(compile(_example(), str(README), "exec"), namespace)
    built = namespace["algorithm"]
    exec(compile(example, str(README), "exec"), namespace)
    bound = namespace["algorithm"]
    batch = (namespace["x_batch"], namespace["y_batch"])
    state = built.init(namespace["params"])
    a, b = (jax.jit(algo.step)(jax.random.key(1), state, batch) for algo in (built, bound))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
