"""symvi-jax sign-flips: exact I under permutations and signed permutations on a tiny config."""

import math

from symvi_jax.experiments import base, sign_flips


def test_signed_mi_is_at_least_the_permutation_mi_and_within_the_orders():
    config = base.config_from_dict(sign_flips.Config, dict(widths=[3], num_epochs=50, num_mi_samples=64))
    result = sign_flips.run(config)
    assert len(result.rows) == 2
    for row in result.rows:
        # I_G >= I_H for a subgroup H (the log-ratio is H-invariant, so E_q = E_{q^H} of a KL >= 0)
        assert row["mi_signed"] >= row["mi_permutations"] - 3 * (row["se_signed"] + row["se_permutations"])
        assert 0.0 <= row["mi_permutations"] <= math.lgamma(row["width"] + 1) + 1e-4
        assert row["mi_signed"] <= row["log_order_signed"] + 1e-4
    assert "I_signed - I_perm" in result.markdown
