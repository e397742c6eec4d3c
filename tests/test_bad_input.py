"""Bad input at the public boundary: a ValueError that names the argument and what is allowed,
and nothing written to the output directory.

Complements the checks in test_vi.py, test_objectives.py, test_likelihoods.py, test_meanfield.py,
test_symmetry.py, test_nets.py, test_predict.py, test_cli.py and test_checkpoint.py.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from symvi_jax import MLP, PermutationGroup, cli, likelihoods, meanfield, nets, predict, vi
from fixtures import make_mlp


@pytest.fixture(scope="module")
def setup():
    model, params = make_mlp(jax.random.key(0), 3, (4, 3))
    loglik = likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=16)
    x = jax.random.normal(jax.random.key(1), (16, 3))
    y = jax.random.randint(jax.random.key(2), (16,), 0, 3)
    return dict(params=params, loglik=loglik, algorithm=algorithm, state=algorithm.init(params), x=x, y=y,
                group=PermutationGroup.from_params(params))


# ---- vi.fit: data, sizes, keys, checkpoint options -----------------------------------------------

FIT_CASES = [
    ("strings as inputs", dict(data=lambda x, y: (np.array([["a"] * 3] * 16), y)), "numeric"),
    ("NaN in the inputs", dict(data=lambda x, y: (x.at[3, 1].set(jnp.nan), y)), "NaN or inf"),
    ("inf in the inputs", dict(data=lambda x, y: (x.at[0, 0].set(jnp.inf), y)), "NaN or inf"),
    ("a scalar target", dict(data=lambda x, y: (x, jnp.int32(1))), "leading example axis"),
    ("float labels", dict(data=lambda x, y: (x, y.astype(jnp.float32))), "labels must be integers"),
    ("negative labels", dict(data=lambda x, y: (x, y.at[0].set(-1))), r"labels must lie in \[0, 3\)"),
    ("inputs of the wrong width", dict(data=lambda x, y: (x[:, :2], y)), "expects 3"),
    ("no data at all", dict(data=lambda x, y: ()), "data must hold"),
    ("batch_size 0", dict(batch_size=0), "batch_size must be a positive int"),
    ("batch_size 2.5", dict(batch_size=2.5), "batch_size must be a positive int"),
    ("batch_size True", dict(batch_size=True), "batch_size must be a positive int"),
    ("num_epochs -1", dict(num_epochs=-1), "num_epochs must be a positive int"),
    ("an int as rng_key", dict(rng_key=0), "rng_key must be a single key"),
    ("a batch of keys", dict(rng_key=jax.random.split(jax.random.key(0), 2)), "rng_key must be a single key"),
    ("checkpoint_every 0", dict(checkpoint_dir="ckpt", checkpoint_every=0), "checkpoint_every must be a positive int"),
    ("checkpoint_every without a folder", dict(checkpoint_every=5), "checkpoint_every needs checkpoint_dir"),
    ("resume without a folder", dict(resume=True), "resume=True needs checkpoint_dir"),
    ("resume 'yes'", dict(checkpoint_dir="ckpt", resume="yes"), "resume must be True or False"),
    ("checkpoint_metadata with NaN", dict(checkpoint_dir="ckpt", checkpoint_metadata={"lr": float("nan")}),
     "checkpoint_metadata must be JSON"),
    ("a checkpoint folder under a file", dict(checkpoint_dir="file/ckpt"), "is a file, not a directory"),
    ("not an algorithm", dict(algorithm=lambda a: a.step), "algorithm must be a VIAlgorithm"),
    ("data of another size than data_size", dict(data=lambda x, y: (x[:8], y[:8])),
     "data_size mismatch: the algorithm was built with data_size=16 but data holds 8 examples"),
    ("allow_data_size_mismatch 'yes'", dict(allow_data_size_mismatch="yes"),
     "allow_data_size_mismatch must be True or False"),
    ("labels past the classes, with checkpoints", dict(data=lambda x, y: (x, y.at[5].set(3)), checkpoint_dir="ckpt"),
     r"labels must lie in \[0, 3\)"),
]


@pytest.mark.parametrize("case, change, message", FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_fit_rejects(tmp_path, setup, case, change, message):
    (tmp_path / "file").write_text("not a folder")
    kwargs = dict(num_epochs=1, batch_size=4, progress_bar=False)
    change = dict(change)
    data = change.pop("data", lambda x, y: (x, y))(setup["x"], setup["y"])
    algorithm = change.pop("algorithm", lambda a: a)(setup["algorithm"])
    rng_key = change.pop("rng_key", jax.random.key(0))
    if "checkpoint_dir" in change:
        change["checkpoint_dir"] = tmp_path / change["checkpoint_dir"]
    kwargs.update(change)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match=message):
        vi.fit(rng_key, algorithm, setup["state"], data, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no checkpoint folder was created


# ---- vi.build: the symmetrized objective's preconditions, checked before anything is traced -----


def test_build_rejects_k_larger_than_the_group_with_the_exact_estimator(setup):
    with pytest.raises(ValueError, match=r"sums over all \|G\| = 24 elements; num_permutations must be None"):
        vi.build(setup["loglik"], optax.adam(1e-2), data_size=16, objective="symmetrized_elbo", group=setup["group"],
                 estimator="exact", num_permutations=25)
    vi.build(setup["loglik"], optax.adam(1e-2), data_size=16, objective="symmetrized_elbo", group=setup["group"],
             estimator="exact")  # None (or 24) is fine


def test_build_rejects_a_non_invariant_prior(setup):
    prior = jax.tree.map(jnp.ones_like, setup["params"])
    prior["Dense_0"]["kernel"] = prior["Dense_0"]["kernel"].at[0, 1].set(2.0)  # unit 1 gets its own scale
    with pytest.raises(ValueError, match="prior_scale is not invariant"):
        vi.build(setup["loglik"], optax.adam(1e-2), data_size=16, objective="symmetrized_elbo", group=setup["group"],
                 num_permutations=3, prior_scale=prior)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(chunk_size=0), "chunk_size must be a positive int"),
        (dict(skip_nonfinite="yes"), "skip_nonfinite must be True or False"),
        (dict(init_scale=float("inf")), "init_scale must be finite and > 0"),
        (dict(prior_scale="wide"), "prior_scale must be a positive number"),
        (dict(data_size=0), "data_size must be a positive int"),
        (dict(loglikelihood_fn="categorical"), "loglikelihood_fn must be callable"),
    ],
)
def test_build_rejects_bad_options(setup, kwargs, message):
    kwargs = {"loglikelihood_fn": setup["loglik"], "optimizer": optax.adam(1e-2), "data_size": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        vi.build(kwargs.pop("loglikelihood_fn"), kwargs.pop("optimizer"), **kwargs)


def test_init_scale_at_or_below_the_floor_is_rejected(setup):
    algorithm = vi.build(setup["loglik"], optax.adam(1e-2), data_size=16, init_scale=meanfield.SCALE_FLOOR / 2)
    with pytest.raises(ValueError, match="init_scale must exceed SCALE_FLOOR"):
        algorithm.init(setup["params"])


# ---- groups, networks and metrics -------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PermutationGroup(widths=(2.5,), layer_names=("Dense_0", "Dense_1")), "widths must be a tuple of positive ints"),
        (lambda: PermutationGroup(widths=(-2,), layer_names=("Dense_0", "Dense_1")), "widths must be positive"),
        (lambda: PermutationGroup(widths=(2,), layer_names=("Dense_0", "Dense_0")), "layer_names must be distinct"),
        (lambda: PermutationGroup.from_params({"Dense_0": {"kernel": np.zeros((2, 3))}, "Dense_01": {"kernel": np.zeros((3, 1))}}),
         "not named 'Dense_<i>'"),
        (lambda: PermutationGroup.from_params({"Dense_0": {"kernel": [[1.0, 2.0]]}}), "kernel must be an array"),
        (lambda: PermutationGroup.from_params({"Dense_0": {"kernel": np.zeros((2, 0))}}), "zero width"),
        (lambda: MLP(features=(4, 0)).init(jax.random.key(0), jnp.zeros((1, 2))), "positive int widths"),
        (lambda: MLP(features=(4.5, 2)).init(jax.random.key(0), jnp.zeros((1, 2))), "positive int widths"),
        (lambda: MLP(features=(4, 2), use_bias="no").init(jax.random.key(0), jnp.zeros((1, 2))), "use_bias must be a bool"),
        (lambda: nets.partition({"Dense_0": {"kernel": np.zeros((2, 2))}}, "Dense_0"), "frozen must be a list"),
        (lambda: predict.accuracy(jnp.full((4, 3), 1 / 3), jnp.zeros(5, jnp.int32)), "labels must have shape"),
        (lambda: predict.ece(jnp.full((4, 3), 1 / 3), jnp.zeros(4, jnp.int32), num_bins=0), "num_bins must be a positive int"),
        (lambda: predict.auroc(np.array([]), np.array([0.5])), "at least one negative and one positive"),
    ],
    ids=["group widths 2.5", "group widths -2", "duplicate layer names", "layer Dense_01", "list kernel",
         "zero-width layer", "MLP zero width", "MLP width 4.5", "use_bias 'no'", "frozen as a string",
         "accuracy label shape", "ece num_bins 0", "auroc without negatives"],
)
def test_constructors_and_metrics_reject(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_act_rejects_an_element_of_the_wrong_shape_or_not_a_permutation(setup):
    group, params = setup["group"], setup["params"]
    with pytest.raises(ValueError, match=r"g for factor .Dense_0. must be one index array of shape \(4,\)"):
        group.act((jnp.arange(3),), params)
    with pytest.raises(ValueError, match=r"g for factor .Dense_0. must be a permutation of 0..3"):
        group.act((jnp.array([0, 1, 1, 3]),), params)


# ---- the CLI: every flag and config key, nothing written -----------------------------------------

QUICK = ["--num-train", "32", "--num-test", "8", "--num-epochs", "1", "--batch-size", "8", "--hidden", "[3]"]

CLI_CASES = [
    (["--num-epochs", "0"], "'num_epochs' must be >= 1"),
    (["--num-train", "0"], "'num_train' must be >= 1"),  # an empty data set
    (["--batch-size", "64"], "'batch_size' (64) must not exceed num_train (32)"),
    (["--learning-rate", "0"], "'learning_rate' must be finite and > 0"),
    (["--learning-rate", ".nan"], "'learning_rate' must be finite and > 0"),
    (["--init-scale", "-1"], "'init_scale' must be finite and > 0"),
    (["--prior-scale", "0"], "'prior_scale' must be finite and > 0"),
    (["--hidden", "[]"], "'hidden' must be a non-empty list of positive widths"),
    (["--hidden", "[3, 0]"], "'hidden' must be a non-empty list of positive widths"),
    (["--hidden", "[3,"], "cannot parse"),
    (["--hidden", "[three]"], "'hidden' must be an integer"),
    (["--num-classes", "1"], "'num_classes' must be >= 2"),
    (["--objective", "elbo_g"], "'objective' must be one of ['elbo', 'symmetrized_elbo']"),
    (["--estimator", "exakt"], "'estimator' must be one of ['exact', 'importance', 'infonce']"),
    (["--num-permutations", "0"], "'num_permutations' must be >= 1 or null"),
    (["--checkpoint-every", "0"], "'checkpoint_every' must be >= 1 or null"),
    (["--seed", "-1"], "'seed' must be in [0, 2**32)"),
    (["--skip-nonfinite", "maybe"], "'skip_nonfinite' must be true or false"),
    (["--num-samples", "1.5"], "'num_samples' must be an integer"),
    (["--estimator", "exact", "--num-permutations", "1000"], "num_permutations must be None (or 6)"),  # K > |G| = 3!
]


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_train_flags_fail_cleanly_and_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert cli.main(["train", *QUICK, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "symvi-jax train: error:" in err and message in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_misspelt_config_keys_and_flags(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("num_epochs: 1\nlearning_rte: 0.1\n")
    assert cli.main(["train", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown config keys ['learning_rte']" in err and "'learning_rate'" in err  # lists the valid keys
    config.write_text("num_epochs: [1\n")
    assert cli.main(["train", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--num-epohcs", "3", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --num-epohcs 3 (did you mean --num-epochs?)" in err
    assert "usage: symvi-jax train" in err and "--learning-rate" in err  # the usage lists every flag
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_output_under_a_regular_file_is_rejected(tmp_path, capsys):
    """A real unwritable location even for root: a path whose parent is a regular file."""
    (tmp_path / "file").write_text("x")
    assert cli.main(["train", *QUICK, "--out", str(tmp_path / "file" / "out")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "x"


def test_unwritable_output_directory_is_rejected(tmp_path, capsys, monkeypatch):
    """Tests run as root, where chmod does not block writes: os.access is made to report the
    folder read-only instead, which is what check_output_dir consults."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if os.path.abspath(path) == str(locked) and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    assert cli.main(["train", *QUICK, "--out", str(locked / "out")]) == 2
    assert f"{locked} is not writable" in capsys.readouterr().err
    assert list(locked.iterdir()) == []


def test_a_vi_state_where_a_mean_field_state_belongs_says_to_pass_state_params():
    model = MLP(features=(3, 2))
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)))["params"]
    algorithm = vi.build(likelihoods.categorical(lambda p, x: model.apply({"params": p}, x)), optax.adam(1e-2),
                         data_size=4)
    state = algorithm.init(params)
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    calls = [
        lambda: meanfield.sample(jax.random.key(0), state, 2),
        lambda: meanfield.log_prob(state, params),
        lambda: meanfield.entropy(state),
        lambda: meanfield.kl_to_normal(state),
        lambda: predict.predictive_probs(jax.random.key(0), state, apply_fn, jnp.zeros((3, 2)), num_samples=2),
        lambda: predict.predictive_mean_and_std(jax.random.key(0), state, apply_fn, jnp.zeros((3, 2)), num_samples=2),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"got a vi\.VIState: pass state\.q"):
            call()
    with pytest.raises(ValueError, match="q must be a meanfield.MeanFieldState"):
        meanfield.entropy(params)
    assert np.isfinite(float(meanfield.entropy(state.q)))
