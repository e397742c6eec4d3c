"""Paired confidence intervals for experiments that compare methods on the same seeds.

For paired differences d_i = b_i - a_i over n seeds the 95% interval is

    mean(d) +- t_{0.975, n-1} * std(d, ddof=1) / sqrt(n).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["t_quantile", "paired_ci", "mean_ci"]

_T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
          10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
          18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042}


def t_quantile(df: int) -> float:
    """Two-sided 95% Student-t quantile t_{0.975, df} (tabulated; conservative between entries)."""
    if df in _T_975:
        return _T_975[df]
    usable = [k for k in _T_975 if k <= df]
    return _T_975[max(usable)] if df < 30 else 1.96 + 2.4 / df


def paired_ci(a, b) -> tuple[float, float, float]:
    """Mean of b - a over paired seeds with a 95% t-interval (NaN interval for one seed)."""
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    mean = float(diff.mean())
    if len(diff) < 2:
        return mean, float("nan"), float("nan")
    half = t_quantile(len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
    return mean, mean - half, mean + half


def mean_ci(values) -> tuple[float, float, float]:
    """Mean of ``values`` over seeds with a 95% t-interval, mean +- t_{0.975, n-1} std / sqrt(n) (NaN for one)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = t_quantile(len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half
