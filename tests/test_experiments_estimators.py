"""A seconds-long run of ``symvi-jax estimators`` on tiny settings, checking what it writes."""

import json
import math
from pathlib import Path

import pytest

from symvi_jax import cli
from symvi_jax.experiments import base, estimators

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist.npz"

TINY = [
    "--num-train", "100", "--batch-size", "50", "--trained-epochs", "1", "--broad-steps", "2",
    "--exact-widths", "[3]", "--num-permutations", "[2]", "--num-samples", "2", "--num-repeats", "1",
    "--wide-widths", "[]",
]


def _data_flag():
    if not DATA.is_file():
        pytest.skip(f"MNIST not found at {DATA}")
    return ["--data-path", str(DATA)]


def test_estimators_command_writes_results(tmp_path):
    out = tmp_path / "run"
    code = cli.main(["estimators", "--out", str(out), "--parts", "[exact, distance]", *TINY, *_data_flag()])
    assert code == 0
    payload = json.loads((out / "results.json").read_text())
    assert payload["config"]["exact_widths"] == [3]
    rows = payload["rows"]
    exact = [r for r in rows if r["part"] == "exact"]
    assert {(r["regime"], r["estimator"], r["K"]) for r in exact} == {
        (g, e, 2) for g in ("trained", "broad") for e in ("uniform", "importance")}
    for r in exact:
        assert set(r) >= {"width", "exact_mi", "exact_se", "log_order", "estimate", "relative_bias", "spread",
                          "fraction_of_exact"}
        assert 0.0 <= r["exact_mi"] <= r["log_order"] + 1e-9
        assert r["estimate"] <= math.log(2) + 1e-6 or r["estimator"] == "importance"
    distance = [r for r in rows if r["part"] == "distance"]
    assert {r["regime"] for r in distance} == {"init", "broad", "trained"}
    assert all(r["distance"] > 0 for r in distance)
    markdown = (out / "results.md").read_text()
    assert "Against the exact I" in markdown and "nearest equivalent mode" in markdown
    assert (out / "exact.png").stat().st_size > 0 and (out / "distance.png").stat().st_size > 0


def test_config_validation_and_missing_data(tmp_path):
    with pytest.raises(ValueError, match="parts"):
        base.config_from_dict(estimators.Config, {"parts": ["nope"]})
    with pytest.raises(ValueError, match="exact_widths"):
        base.config_from_dict(estimators.Config, {"exact_widths": [30]})
    with pytest.raises(ValueError, match="data_path"):
        estimators.run(base.config_from_dict(estimators.Config, {"parts": ["exact"],
                                                                 "data_path": str(tmp_path / "none.npz")}))
    for overrides, message in (({"train_methods": ["uniform", "importance"]}, "train_methods"),
                               ({"train_methods": ["mfvi", "nope"]}, "train_methods"),
                               ({"train_methods": ["mfvi", "exact"], "train_widths": [100]}, "exact"),
                               ({"train_score_correction": "yes"}, "train_score_correction")):
        with pytest.raises(ValueError, match=message):
            base.config_from_dict(estimators.Config, overrides)
    # the shipped config is valid
    config = base.load_config(estimators.Config, str(Path(__file__).resolve().parents[1] / "configs" / "estimators.yaml"))
    assert config.parts == estimators.PARTS


@pytest.mark.slow
def test_train_and_overhead_parts_run(tmp_path):
    out = tmp_path / "train"
    code = cli.main(["estimators", "--out", str(out), "--parts", "[train, overhead]", "--train-widths", "[6]",
                     "--train-num-train", "100", "--batch-size", "50", "--train-epochs", "1", "--train-seeds", "2",
                     "--train-methods", "[mfvi, uniform, importance, exact]",
                     "--eval-num-permutations", "3", "--eval-num-samples", "2", "--predict-num-samples", "10",
                     "--overhead-width", "16", "--overhead-rounds", "1", "--overhead-steps", "2", *_data_flag()])
    assert code == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    train = [r for r in rows if r["part"] == "train"]
    assert {r["method"] for r in train} == {"mfvi", "uniform", "importance", "exact"}
    for r in train:  # d = 6 <= MAX_WIDTH: the exact I on the same draws is reported (float32 permanent: a
        # disjoint-copies q measured 3.4e-4 nats above log 6! here, so the cap is checked to 1e-3)
        assert 0.0 <= r["exact_mutual_information"] <= math.log(720) + 1e-3
    markdown = (out / "results.md").read_text()
    assert "| importance - uniform |" in markdown and "| exact - MFVI |" in markdown
    assert {r["method"] for r in rows if r["part"] == "overhead"} == {"mfvi", "uniform", "importance"}


def test_train_report_gives_paired_intervals_for_every_method():
    """The train part's page: one column per method in ``train_methods`` and each difference row
    equal to ``stats.paired_ci`` over the seeds (here L^G / N with the exact I, width <= MAX_WIDTH)."""
    from symvi_jax.experiments.stats import paired_ci

    config = estimators.Config(parts=("train",), train_widths=(4,), train_seeds=3, train_num_train=100,
                               train_methods=("mfvi", "importance", "exact"))
    rows = []
    for m_index, method in enumerate(config.train_methods):
        for seed in range(3):
            value = -200.0 + 3.0 * m_index + seed * (1.0 + m_index)
            rows.append(dict(part="train", method=method, seed=seed, width=4, elbo=value - 2.0, elbo_symmetrized=value,
                             elbo_symmetrized_exact=value + 0.5, mi_fraction=0.5, test_nll=1.0, test_accuracy=0.9,
                             collapsed_units=seed, exact_mutual_information=2.5))
    markdown = estimators._markdown(config, rows, {"train": 1.0})
    assert "| metric | MFVI | importance | exact |" in markdown
    by = {m: [r["elbo_symmetrized_exact"] / 100 for r in rows if r["method"] == m] for m in config.train_methods}
    for a, b in (("importance", "mfvi"), ("exact", "mfvi"), ("importance", "exact")):
        mean, lo, hi = paired_ci(by[b], by[a])
        line = next(x for x in markdown.splitlines() if x.startswith(f"| {estimators._TRAIN_LABEL[a]} - "
                                                                      f"{estimators._TRAIN_LABEL[b]} |"))
        assert f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]" in line.split(" | ")[3]
