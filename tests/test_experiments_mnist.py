"""symvi_jax.experiments.mnist: the fast orbit log-ratios, the shared objective, the local
predictive, and a seconds-long smoke run of ``symvi-jax mnist`` on generated data."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixtures import make_mlp
from symvi_jax import MLP, PermutationGroup, cli, likelihoods, meanfield, objectives, orbits, predict
from symvi_jax.experiments import mnist


def _broad_q(key, params, scale=0.3):
    """A q whose permuted copies overlap, so the log-ratios are O(1) and not all -inf-like."""
    q = meanfield.init(params, init_scale=scale)
    noise = jax.tree.map(lambda r: 0.3 * jax.random.normal(key, r.shape), q.raw_scale)
    return meanfield.MeanFieldState(q.loc, jax.tree.map(jnp.add, q.raw_scale, noise))


def _problem(next_key, features=(4, 3)):
    model, params = make_mlp(next_key(), 5, features)
    loglik = likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))
    batch = (jax.random.normal(next_key(), (8, 5)), jnp.arange(8) % features[-1])
    return model, params, loglik, batch, PermutationGroup.from_params(params)


def test_objective_equals_symmetrized_elbo_at_full_k(next_key):
    _, params, loglik, batch, group = _problem(next_key)
    q = _broad_q(next_key(), params)
    key = next_key()
    common = dict(loglikelihood_fn=loglik, group=group, data_size=40, num_samples=3)
    value, info = jax.jit(lambda q: mnist.symmetrized_objective(
        key, q, batch, prior_scale=1.0, max_permutations=6, num_permutations=6, mi_weight=1.0, **common))(q)
    ref_value, ref_info = jax.jit(lambda q: objectives.symmetrized_elbo(key, q, batch, num_permutations=6, **common))(q)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(info.mutual_information, ref_info.mutual_information, rtol=1e-4, atol=1e-5)


def test_mfvi_weight_gives_the_elbo_gradient(next_key):
    """mi_weight = 0: value and gradient are those of objectives.elbo on the same draws."""
    _, params, loglik, batch, group = _problem(next_key)
    q = _broad_q(next_key(), params)
    key = next_key()

    def ours(q):
        return mnist.symmetrized_objective(key, q, batch, loglikelihood_fn=loglik, group=group, data_size=40,
                                           prior_scale=1.0, num_samples=2, max_permutations=5,
                                           num_permutations=5, mi_weight=0.0)[0]

    def reference(q):
        key_sample, _ = jax.random.split(key)
        return objectives.elbo(key_sample, q, batch, loglikelihood_fn=loglik, data_size=40, num_samples=2)[0]

    (v1, g1), (v2, g2) = jax.jit(jax.value_and_grad(ours))(q), jax.jit(jax.value_and_grad(reference))(q)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mi_weight", [0.0, 1.0])
def test_minibatch_kl_scale_is_the_library_objective_on_n_over_c_points(next_key, mi_weight):
    """kl_weight c (``kl_scale="minibatch"``, c = N / M): E_ll - c (KL - w I^K) = c * [the library's
    objective with data_size N / c], value and gradient (MFVI: objectives.elbo; SGM at full K:
    objectives.symmetrized_elbo)."""
    _, params, loglik, batch, group = _problem(next_key)
    q = _broad_q(next_key(), params)
    key, size, c = next_key(), 40, 5

    def ours(q):
        return mnist.symmetrized_objective(key, q, batch, loglikelihood_fn=loglik, group=group, data_size=size,
                                           prior_scale=1.0, num_samples=2, max_permutations=6,
                                           num_permutations=6, mi_weight=mi_weight, kl_weight=c)[0]

    def reference(q):
        common = dict(loglikelihood_fn=loglik, data_size=size // c, num_samples=2)
        if mi_weight == 0.0:
            return c * objectives.elbo(jax.random.split(key)[0], q, batch, **common)[0]
        return c * objectives.symmetrized_elbo(key, q, batch, group=group, num_permutations=6, **common)[0]

    (v1, g1), (v2, g2) = jax.jit(jax.value_and_grad(ours))(q), jax.jit(jax.value_and_grad(reference))(q)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_smaller_k_uses_a_prefix_and_is_capped_at_log_k(next_key):
    _, params, _, _, group = _problem(next_key)
    q = meanfield.init(params, init_scale=1e-3)  # copies far apart: I^K saturates at log K
    samples = meanfield.sample(next_key(), q, 4)
    key = next_key()
    for k in (2, 3, 5):
        terms = jax.jit(lambda s, k=k: orbits.InfoNCE(k, max_permutations=5).terms(key, q, s, group))(samples)
        np.testing.assert_allclose(terms, np.log(k), rtol=1e-5)
    # K as data: one program, K traced; at K = K_max it is the plain InfoNCE(K) on the same draws
    traced = jax.jit(lambda s, k: orbits.InfoNCE(k, max_permutations=5).terms(key, q, s, group))
    broad = _broad_q(next_key(), params)
    wide = meanfield.sample(next_key(), broad, 4)
    np.testing.assert_allclose(traced(wide, jnp.int32(5)), orbits.InfoNCE(5).terms(key, broad, wide, group), rtol=1e-6)
    assert np.all(np.asarray(traced(wide, jnp.int32(1))) == 0)
    for bad in (0, 6, 2.5):
        with pytest.raises(ValueError, match="num_permutations"):
            orbits.InfoNCE(bad, max_permutations=5)
    with pytest.raises(ValueError, match="mi_weight"):
        mnist.symmetrized_objective(key, broad, None, loglikelihood_fn=None, group=group, data_size=4, prior_scale=1.0,
                                    num_samples=1, max_permutations=5, num_permutations=5, mi_weight=-1.0)


def test_local_predictive_matches_weight_sampling(next_key, features=(4, 4, 3)):
    """Two hidden layers: the local first layer plus sampled later layers (the one-layer case is the
    same code with an empty remainder)."""
    model, params = make_mlp(next_key(), 5, features)
    q = _broad_q(next_key(), params, scale=0.5)
    x = jax.random.normal(next_key(), (50, 5))
    names = PermutationGroup.from_params(params).layer_names
    key_local, key_weights = next_key(), next_key()
    num = 2000

    def apply_fn(p, x):
        return model.apply({"params": p}, x)

    p_local = jax.jit(lambda q, x: mnist.local_predictive_probs(
        key_local, q, x, num_samples=num, chunk_size=500, layer_names=names))(q, x)
    p_weights = jax.jit(lambda q, x: predict.predictive_probs(
        key_weights, q, apply_fn, x, num_samples=num, chunk_size=500))(q, x)
    # Each entry is a mean of num values in [0, 1], so its variance is at most p (1 - p) / num.
    p_local, p_weights = np.asarray(p_local), np.asarray(p_weights)
    p_bar = np.clip((p_local + p_weights) / 2, 1e-3, 1)
    standard_error = np.sqrt(2 * p_bar * (1 - p_bar) / num)
    assert np.all(np.abs(p_local - p_weights) < 5 * standard_error)
    np.testing.assert_allclose(np.sum(p_local, axis=1), 1.0, rtol=1e-5)


def test_unit_statistics_flags_prior_units(next_key):
    _, params = make_mlp(next_key(), 5, (3, 2))
    q = meanfield.init(params, init_scale=0.01)
    loc = dict(q.loc)
    loc["Dense_0"] = {"kernel": q.loc["Dense_0"]["kernel"].at[:, 1].set(0.0), "bias": q.loc["Dense_0"]["bias"]}
    sigma = meanfield.normal(q.loc, 0.01).raw_scale
    sigma["Dense_0"] = {"kernel": sigma["Dense_0"]["kernel"].at[:, 1].set(meanfield.inverse_softplus_scale(2.0)),
                        "bias": sigma["Dense_0"]["bias"].at[1].set(meanfield.inverse_softplus_scale(2.0))}
    stats = jax.jit(lambda q: mnist.unit_statistics(q, ("Dense_0", "Dense_1"), 2.0))
    (loc_stat, scale_stat), = stats(meanfield.MeanFieldState(loc, sigma))
    np.testing.assert_allclose(scale_stat, [0.005, 1.0, 0.005], rtol=1e-4)
    assert loc_stat[1] < 0.1 * loc_stat[0]


@pytest.mark.parametrize("overrides, message", [
    ({"methods": ("mfvi", "sgm1")}, "sgmK"),
    ({"methods": ("mfvi", "mfvi")}, "duplicates"),
    ({"dataset": "cifar"}, "dataset"),
    ({"num_eval_samples": 100, "eval_chunk_size": 30}, "divide"),
    ({"predictive": "exact"}, "predictive"),
    ({"num_train": 50}, "batch_size"),
    ({"kl_scale": "batch"}, "kl_scale"),
    ({"train_workers": 0}, "train_workers"),
    ({"eval_workers": 0}, "eval_workers"),
    ({"eval_xla_optimization_level": 4}, "eval_xla_optimization_level"),
    ({"eval_xla_optimization_level": True}, "eval_xla_optimization_level"),
])
def test_config_rejects_bad_values(overrides, message):
    from symvi_jax.experiments.base import config_from_dict

    with pytest.raises(ValueError, match=message):
        config_from_dict(mnist.Config, overrides)


def test_train_blocks_put_the_runs_back_method_major():
    """Seeds trained in blocks come back in the one-call order: run r = method r // S, seed r % S."""
    keys = jax.random.split(jax.random.key(0), 4)

    def train_fn(seed_keys, x):  # 3 methods x len(seed_keys) seeds, method-major like _train_program
        per_seed = jax.vmap(lambda k: jax.random.uniform(k, (2,)))(seed_keys) + x
        runs = (10.0 * jnp.arange(3.0)[:, None, None] + per_seed[None]).reshape(-1, 2)
        return {"w": runs}, {"elbo": runs[:, :1] * 2.0}

    whole = train_fn(keys, 1.0)
    blocks = mnist._train_blocks(train_fn, keys, (1.0,), 2, 3)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(blocks)):
        np.testing.assert_array_equal(a, b)


def test_evaluate_distinct_evaluates_each_distinct_run_once_and_gives_every_run_its_metrics():
    """Runs equal to an earlier one in q and key bit for bit copy its metrics; runs differing in a value
    (run 3) or only in the key (run 4) are evaluated; the last call is filled up to the block size."""
    loc = jnp.asarray([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [3.0, 4.5], [1.0, 2.0]])
    keys = jax.random.split(jax.random.key(0), 3)[jnp.asarray([0, 1, 0, 1, 2])]
    evaluated = []

    def evaluate_fn(q, run_keys, x):
        evaluated.extend(np.asarray(q["w"]).tolist())
        noise = jax.vmap(lambda k: jax.random.uniform(k))(run_keys)
        return {"score": jnp.sum(q["w"], axis=1) * x + noise, "shape": jnp.zeros((q["w"].shape[0], 2))}

    metrics, num_distinct = mnist._evaluate_distinct(evaluate_fn, {"w": loc}, keys, (2.0,), block=3)
    direct = jax.device_get(evaluate_fn({"w": loc}, keys, 2.0))
    assert num_distinct == 4
    assert evaluated[:5] == [[1.0, 2.0], [3.0, 4.0], [3.0, 4.5], [1.0, 2.0], [1.0, 2.0]]  # runs 0, 1, 3, 4, 4 (fill)
    assert len(evaluated) == 6 + 5  # two calls of 3, then the direct call above
    for name in direct:
        assert metrics[name].shape == direct[name].shape
        np.testing.assert_array_equal(metrics[name], direct[name])
    with pytest.raises(ValueError, match="one run per evaluation key"):
        mnist._evaluate_distinct(evaluate_fn, {"w": loc[:4]}, keys, (2.0,), block=3)


def test_eval_block_splits_the_seeds_and_keeps_two_runs_or_more():
    assert [mnist._eval_block(10, w) for w in (1, 2, 3, 4, 20)] == [10, 5, 4, 3, 2]
    assert [mnist._eval_block(s, 2) for s in (1, 2, 3)] == [1, 2, 2]


def test_evaluate_program_gives_each_run_the_same_bits_in_blocks_from_threads():
    """The evaluate program maps one run at a time, so 4 runs per call and 2 calls of 2 from two threads
    (``eval_workers: 2``) give every metric of every run bit for bit."""
    config = mnist.Config(widths=(3,), methods=("mfvi", "sgm3"), num_seeds=2, num_eval_samples=8, eval_chunk_size=4,
                          mi_num_permutations=6, mi_num_samples=2, eval_workers=2)
    _, apply_fn, group = mnist._train_program(config, 3, 40, 6, [(3, 0.0), (3, 1.0)])
    params = jax.vmap(lambda k: MLP(features=(3, 10)).init(k, jnp.zeros((1, 6)))["params"])(
        jax.random.split(jax.random.key(0), 4))
    q = jax.vmap(lambda p: meanfield.init(p, init_scale=0.3))(params)
    keys = jax.random.split(jax.random.key(1), 4)
    data = (jax.random.uniform(jax.random.key(2), (12, 6)), jnp.arange(12) % 10,
            jax.random.uniform(jax.random.key(3), (12, 6)))
    evaluate_fn = mnist._evaluate_program(config, apply_fn, group)
    whole, distinct = mnist._evaluate_distinct(evaluate_fn, q, keys, data, block=4)
    halves, _ = mnist._evaluate_distinct(evaluate_fn, q, keys, data, block=mnist._eval_block(4, 2), workers=2)
    assert distinct == 4 and jax.tree.structure(whole) == jax.tree.structure(halves)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(halves)):
        np.testing.assert_array_equal(a, b)


def test_seed_blocks_are_equal_and_hold_two_seeds_or_more():
    assert [mnist._seed_blocks(s, 2) for s in (1, 2, 3, 4, 10)] == [1, 1, 1, 2, 2]
    assert [mnist._seed_blocks(s, 4) for s in (6, 8, 10, 12)] == [3, 4, 2, 4]
    assert mnist._seed_blocks(10, 1) == 1


def _fake_npz(path, seed):
    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.integers(0, 256, (300, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, 300).astype(np.uint8),
             x_test=rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
             y_test=rng.integers(0, 10, 60).astype(np.uint8))


def test_command_smoke_run(tmp_path, capsys):
    _fake_npz(tmp_path / "digits.npz", 0)
    _fake_npz(tmp_path / "clothes.npz", 1)
    out = tmp_path / "out"
    code = cli.main([
        "mnist", "--config", "configs/mnist_table1.yaml", "--data", str(tmp_path / "digits.npz"),
        "--ood-data", str(tmp_path / "clothes.npz"), "--out", str(out), "--widths", "[3]",
        "--methods", "[mfvi, sgm3]", "--num-seeds", "2", "--num-train", "200", "--num-test", "40",
        "--num-epochs", "2", "--num-eval-samples", "8", "--eval-chunk-size", "4",
        "--mi-num-permutations", "6", "--mi-num-samples", "2", "--eval-xla-optimization-level", "1",
    ])
    assert code == 0, capsys.readouterr().err
    payload = json.loads((out / "results.json").read_text())
    assert payload["config"]["widths"] == [3] and payload["config"]["methods"] == ["mfvi", "sgm3"]
    assert payload["config"]["eval_xla_optimization_level"] == 1
    rows = payload["rows"]
    assert len(rows) == 4
    required = {"width", "method", "K", "seed", "test_accuracy", "test_nll", "ece", "elbo", "elbo_symmetrized",
                "mi_estimate", "saturation", "collapsed_units", "ood_auroc"}
    for row in rows:
        assert required <= set(row)
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["test_nll"] > 0 and 0.0 <= row["ood_auroc"] <= 1.0
        assert len(row["saturation"]) == 2 and all(0.0 <= s <= 1.0 + 1e-6 for s in row["saturation"])
        assert row["mi_estimate"] <= np.log(6) + 1e-5
        np.testing.assert_allclose(row["elbo_symmetrized"] - row["elbo"], row["mi_estimate"], rtol=1e-6)
    assert [r["K"] for r in rows] == [None, None, 3, 3]
    text = (out / "results.md").read_text()
    assert "SGM - MFVI" in text and "Wall time" in text
    assert (out / "accuracy_vs_width.png").stat().st_size > 0


def test_command_missing_data_says_where_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SYMVI_JAX_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    from symvi_jax import data as data_module

    monkeypatch.setitem(data_module.DEBIAN_DIRS, "fashion_mnist", ())
    assert cli.main(["mnist", "--out", str(tmp_path / "out"), "--dataset", "fashion_mnist"]) == 2
    assert "symvi-jax data fetch fashion_mnist" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist.npz").exists(),
                    reason="../shared/data/mnist.npz not present")
def test_local_predictive_agrees_with_weight_sampling_on_mnist():
    """At full scale (1000 draws, the 10k MNIST test images): the two predictives' accuracy and NLL
    agree within Monte Carlo error for a briefly trained width-10 MFVI posterior."""
    from symvi_jax import data as data_module

    mnist_data = data_module.load("mnist", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist.npz")
    config = mnist.Config(widths=(10,), methods=("mfvi",), num_seeds=1, num_epochs=1, ood=False)
    x_train = jnp.asarray(mnist_data.x_train.reshape(60000, -1))  # uint8, as mnist._load hands the program
    train_fn, apply_fn, group = mnist._train_program(config, 10, x_train.shape[0], x_train.shape[1], [(20, 0.0)])
    q, _ = train_fn(jax.random.split(jax.random.key(0), 1), x_train, jnp.asarray(mnist_data.y_train.astype(np.int32)))
    q = jax.tree.map(lambda x: x[0], q)
    x_test, y_test = jnp.asarray(data_module.as_inputs(mnist_data.x_test)), jnp.asarray(mnist_data.y_test.astype(np.int32))
    local = jax.jit(lambda q: mnist.local_predictive_probs(jax.random.key(1), q, x_test, num_samples=1000,
                                                           chunk_size=50, layer_names=group.layer_names))(q)
    weights = jax.jit(lambda q: predict.predictive_probs(jax.random.key(2), q, apply_fn, x_test, num_samples=1000,
                                                         chunk_size=50))(q)
    acc_local, acc_weights = float(predict.accuracy(local, y_test)), float(predict.accuracy(weights, y_test))
    nll_local, nll_weights = float(predict.nll(local, y_test)), float(predict.nll(weights, y_test))
    print(f"local: accuracy {acc_local:.4f} NLL {nll_local:.4f}; weights: accuracy {acc_weights:.4f} NLL {nll_weights:.4f}")
    # Every predictive probability is a mean of 1000 values in [0, 1]: variance <= p (1 - p) / 1000.
    local, weights = np.asarray(local), np.asarray(weights)
    p_bar = np.clip((local + weights) / 2, 1e-3, 1)
    assert np.all(np.abs(local - weights) < 5.5 * np.sqrt(2 * p_bar * (1 - p_bar) / 1000))


@pytest.mark.slow  # 20-30 s on the shared 2-core CPU; keeps the CI suite near 10 minutes
def test_resume_skips_finished_widths(tmp_path, capsys, monkeypatch):
    _fake_npz(tmp_path / "digits.npz", 0)
    args = ["mnist", "--config", "configs/mnist_table1.yaml", "--data", str(tmp_path / "digits.npz"),
            "--ood", "false", "--out", str(tmp_path / "out"), "--methods", "[mfvi, sgm3]", "--num-seeds", "2",
            "--num-train", "200", "--num-test", "40", "--num-epochs", "1", "--num-eval-samples", "4",
            "--eval-chunk-size", "4", "--mi-num-permutations", "3", "--mi-num-samples", "2"]
    assert cli.main([*args, "--widths", "[2]"]) == 0, capsys.readouterr().err
    first = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert (tmp_path / "out" / "checkpoints" / "width_2.json").exists()

    built = []
    original = mnist._train_program
    monkeypatch.setattr(mnist, "_train_program", lambda config, width, *a: built.append(width) or original(config, width, *a))
    assert cli.main([*args, "--widths", "[2, 3]", "--resume"]) == 0, capsys.readouterr().err
    assert built == [3]  # width 2 was read back, not trained again
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert [r for r in rows if r["width"] == 2] == first and {r["width"] for r in rows} == {2, 3}

    # a changed config under the same --out is refused, not mixed in
    assert cli.main([*args, "--widths", "[2]", "--num-epochs", "2", "--resume"]) == 2
    assert "another config" in capsys.readouterr().err
