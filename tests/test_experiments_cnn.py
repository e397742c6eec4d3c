"""symvi-jax cnn: the inferred channel group of a CNN, and a seconds-long run on generated images."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import cli, infer_symmetry
from symvi_jax.experiments import cnn


def test_inferred_group_is_one_factor_per_convolution_with_the_head_as_a_sub_axis():
    model = cnn.CNN((3, 4))
    x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
    params = model.init(jax.random.key(1), x)["params"]
    group = infer_symmetry(lambda p, inputs: model.apply({"params": p}, inputs), params, x)
    assert sorted(group.sizes) == [3, 4]
    assert group.log_order() == math.lgamma(4) + math.lgamma(5)
    head = [m for f in group.factors for m in f.members if m.path == "Dense_0/kernel"]
    assert head == [("Dense_0/kernel", 0, 1)]  # the channel of the flattened [7, 7, 4] map


def test_command_smoke_run(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "digits.npz", x_train=rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, 200).astype(np.uint8),
             x_test=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), y_test=rng.integers(0, 10, 50).astype(np.uint8))
    out = tmp_path / "out"
    code = cli.main(["cnn", "--config", "configs/cnn.yaml", "--data", str(tmp_path / "digits.npz"), "--out", str(out),
                     "--num-train", "200", "--num-test", "50", "--channels", "[2, 3]", "--num-epochs", "1",
                     "--batch-size", "50", "--num-seeds", "2", "--num-permutations", "3", "--num-eval-samples", "2",
                     "--num-mi-samples", "2", "--methods", "[mfvi, sgm]"])  # importance: the slow test below
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"mfvi", "sgm"} and len(rows) == 4
    for r in rows:
        assert r["factor_sizes"] == [2, 3] and len(r["mi_fraction_per_factor"]) == 2
        assert all(0.0 <= f <= 1.0 + 1e-4 for f in r["mi_fraction_per_factor"])
        assert 0.0 <= r["test_accuracy"] <= 1.0
    assert "Paired differences against MFVI" in (out / "results.md").read_text()


@pytest.mark.slow  # 20-30 s on the shared 2-core CPU; keeps the CI suite near 10 minutes
def test_training_the_cnn_with_its_inferred_group_runs_all_three_estimators():
    import optax

    from symvi_jax import likelihoods, vi

    model = cnn.CNN((2, 3))
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    y = jnp.asarray([0, 1, 2, 3], jnp.int32)
    params = model.init(jax.random.key(1), x)["params"]
    apply_fn = lambda p, inputs: model.apply({"params": p}, inputs)  # noqa: E731
    group = infer_symmetry(apply_fn, params, x)
    assert group.order() == 2 * 6  # small enough to enumerate for the exact estimator
    for estimator, k in (("infonce", 4), ("exact", None), ("importance", 4)):
        algorithm = vi.build(likelihoods.categorical(apply_fn), optax.adam(1e-2), data_size=4,
                             objective="symmetrized_elbo", group=group, num_permutations=k, estimator=estimator,
                             init_scale=0.5)
        state, info = jax.jit(algorithm.step)(jax.random.key(2), algorithm.init(params), (x, y))
        assert np.isfinite(float(info.objective)), estimator
        # InfoNCE and exact never exceed log|G|; the importance bound holds in expectation only, and
        # one draw is capped at log|G| + log K + log r(e|w) <= log|G| + log K
        cap = group.log_order() + (np.log(k) if estimator == "importance" else 0.0)
        assert 0.0 <= float(info.mutual_information) <= cap + 1e-4, estimator
        assert float(info.grad_norm) > 0
