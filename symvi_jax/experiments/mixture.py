"""Section 3: a single Gaussian fitted by reverse KL to two equal modes interpolates them below a*.

Gelberg et al. (2024, Section 3, Figure 3, Appendix A) fit q = N(mu, Sigma) to

    p_a(x) = 1/2 N(x; 0, s^2 I) + 1/2 N(x; a u, s^2 I),   x in R^d, ||u|| = 1,

by minimising KL(q || p_a) = -H(q) - E_q log p_a(x) with reparameterised samples
x = mu + L eps (Sigma = L L^T, L lower triangular with a positive diagonal exp(r)), starting at
(mu, Sigma) = (0, I). H(q) = d/2 log(2 pi e) + sum_i r_i is closed form; the expectation takes
``num_samples`` fresh draws per Adam step.

Reported per (s, a, seed): the interpolation measure ||mu*|| / a (0 or 1 on a mode, 1/2 midway),
det(Sigma*), and KL(q* || p_a) re-estimated on ``num_eval_samples`` fresh draws. A fit
*interpolates* when | ||mu*|| / a - 1/2 | < 1/4; a* is bracketed by the largest a that
interpolates and the next a in the sweep. The paper finds a* ~ 1.25, 2.5, 5, 10 for
s = 0.25, 0.5, 1, 2. All fits (scales x separations x seeds) run vmapped in one jit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from symvi_jax.experiments import base
from symvi_jax.experiments.base import Result

__all__ = ["Config", "GaussianState", "kl_estimate", "fit", "run", "PAPER_THRESHOLDS"]

#: The paper's thresholds a* per mixture scale s (Section 3).
PAPER_THRESHOLDS = {0.25: 1.25, 0.5: 2.5, 1.0: 5.0, 2.0: 10.0}


@dataclasses.dataclass(frozen=True)
class Config:
    scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    #: the separations a, in units of s: a = s * r for r in separation_ratios
    separation_ratios: tuple[float, ...] = tuple(round(0.25 * i, 2) for i in range(1, 33))
    dim: int = 2
    num_samples: int = 5000
    num_steps: int = 3000
    learning_rate: float = 1e-2
    num_seeds: int = 1
    num_eval_samples: int = 20000
    figure_scale: float = 1.0
    seed: int = 0

    def validate(self):
        if not self.scales or not self.separation_ratios:
            raise ValueError("config keys 'scales' and 'separation_ratios' must be non-empty")
        for key in ("scales", "separation_ratios"):
            for value in getattr(self, key):
                if not math.isfinite(value) or value <= 0:
                    raise ValueError(f"config key {key!r} must hold numbers > 0, got {value}")
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError(f"config key 'learning_rate' must be > 0, got {self.learning_rate}")
        for key in ("dim", "num_samples", "num_steps", "num_seeds", "num_eval_samples"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")
        if self.figure_scale not in self.scales:
            raise ValueError(f"config key 'figure_scale' must be one of scales {list(self.scales)}, got {self.figure_scale}")


class GaussianState(NamedTuple):
    """q = N(loc, L L^T) with L = tril(lower, -1) + diag(exp(log_diag))."""

    loc: jax.Array
    log_diag: jax.Array
    lower: jax.Array


def _cholesky(q: GaussianState) -> jax.Array:
    return jnp.tril(q.lower, -1) + jnp.diag(jnp.exp(q.log_diag))


def _log_mixture(x, a, s, direction):
    """log p_a(x) for x (..., d)."""
    d = x.shape[-1]
    norm = -0.5 * d * math.log(2 * math.pi) - d * jnp.log(s)
    first = norm - 0.5 * jnp.sum(jnp.square(x), axis=-1) / s**2
    second = norm - 0.5 * jnp.sum(jnp.square(x - a * direction), axis=-1) / s**2
    return jnp.logaddexp(first, second) - math.log(2.0)


def kl_estimate(rng_key, q: GaussianState, a, s, direction, num_samples: int) -> jax.Array:
    """KL(q || p_a) = -H(q) - E_q log p_a(x), the expectation over reparameterised draws."""
    d = q.loc.shape[-1]
    eps = jax.random.normal(rng_key, (num_samples, d))
    x = q.loc + eps @ _cholesky(q).T
    entropy = 0.5 * d * math.log(2 * math.pi * math.e) + jnp.sum(q.log_diag)
    return -entropy - jnp.mean(_log_mixture(x, a, s, direction))


def fit(rng_key, a, s, *, dim: int, num_samples: int, num_steps: int, learning_rate: float):
    """Adam on KL(q || p_a) from (0, I); returns the final state and the KL trace."""
    direction = jnp.zeros(dim).at[0].set(1.0)
    q = GaussianState(jnp.zeros(dim), jnp.zeros(dim), jnp.zeros((dim, dim)))
    optimizer = optax.adam(learning_rate)

    def body(carry, key):
        q, opt_state = carry
        value, grads = jax.value_and_grad(lambda q: kl_estimate(key, q, a, s, direction, num_samples))(q)
        updates, opt_state = optimizer.update(grads, opt_state, q)
        return (optax.apply_updates(q, updates), opt_state), value

    (q, _), trace = jax.lax.scan(body, (q, optimizer.init(q)), jax.random.split(rng_key, num_steps))
    return q, trace


def _sweep(config: Config) -> dict:
    scales = np.asarray(config.scales, dtype=np.float32)
    ratios = np.asarray(config.separation_ratios, dtype=np.float32)
    s_grid, r_grid = np.meshgrid(scales, ratios, indexing="ij")
    a_grid = s_grid * r_grid
    direction = jnp.zeros(config.dim).at[0].set(1.0)

    def one(key, a, s):
        key_fit, key_eval = jax.random.split(key)
        q, trace = fit(key_fit, a, s, dim=config.dim, num_samples=config.num_samples, num_steps=config.num_steps,
                       learning_rate=config.learning_rate)
        chol = _cholesky(q)
        return dict(
            loc=q.loc,
            covariance=chol @ chol.T,
            interpolation=jnp.linalg.norm(q.loc) / a,
            det_covariance=jnp.exp(2 * jnp.sum(q.log_diag)),
            kl=kl_estimate(key_eval, q, a, s, direction, config.num_eval_samples),
            final_objective=trace[-1],
        )

    num = a_grid.size
    keys = jax.random.split(jax.random.key(config.seed), num * config.num_seeds).reshape(num, config.num_seeds)
    fn = jax.jit(jax.vmap(jax.vmap(one, in_axes=(0, None, None))))  # fits x seeds
    out = fn(keys, jnp.asarray(a_grid.reshape(-1)), jnp.asarray(s_grid.reshape(-1)))
    out = {k: np.asarray(v).reshape(a_grid.shape + (config.num_seeds,) + np.shape(v)[2:])
           for k, v in jax.device_get(out).items()}
    out["a"], out["s"] = a_grid, s_grid
    return out


def _interpolates(value) -> bool:
    return abs(value - 0.5) < 0.25


def _threshold(config: Config, out: dict, i: int):
    """(largest interpolating a, next a) for scale index i, from the seed-averaged measure."""
    values = out["interpolation"][i].mean(axis=-1)
    a = out["a"][i]
    inside = [j for j, v in enumerate(values) if _interpolates(v)]
    if not inside:
        return None, float(a[0])
    j = max(inside)
    return float(a[j]), (float(a[j + 1]) if j + 1 < len(a) else None)


def _markdown(config: Config, out: dict) -> str:
    lines = [
        "# Section 3: a single Gaussian fitted by reverse KL to two equal Gaussian modes",
        "",
        f"p_a = 1/2 N(0, s^2 I) + 1/2 N(a e_1, s^2 I) in d = {config.dim}; q = N(mu, Sigma) (full covariance) "
        f"from (0, I); {config.num_steps} Adam steps, lr {config.learning_rate:g}, S = {config.num_samples} "
        f"reparameterised draws per step; {config.num_seeds} seed(s). KL(q* || p_a) re-estimated on "
        f"{config.num_eval_samples} fresh draws. A fit interpolates when | \\|\\|mu*\\|\\| / a - 1/2 | < 1/4.",
        "",
        "## Threshold a*",
        "",
        "| s | a* (ours: last interpolating a -> next a) | a* (paper) | a* / s (ours, midpoint) |",
        "| --- | --- | --- | --- |",
    ]
    for i, s in enumerate(config.scales):
        lo, hi = _threshold(config, out, i)
        paper = PAPER_THRESHOLDS.get(float(s))
        if lo is None:
            ours, mid = f"none (first a = {hi:g} already picks a mode)", "-"
        elif hi is None:
            ours, mid = f"> {lo:g} (every a in the sweep interpolates)", "-"
        else:
            ours, mid = f"{lo:g} -> {hi:g}", f"{(lo + hi) / 2 / s:.2f}"
        lines.append(f"| {s:g} | {ours} | {paper if paper is not None else '-'} | {mid} |")
    lines += [
        "",
        "## Per separation (mean over seeds)",
        "",
        "Columns per s: \\|\\|mu*\\|\\| / a, det(Sigma*), KL(q* \\|\\| p_a). log 2 = 0.693 is the KL of q = one component "
        "when the components do not overlap.",
        "",
        "| a / s | " + " | ".join(f"s = {s:g}: \\|\\|mu\\|\\|/a, det, KL" for s in config.scales) + " |",
        "| --- |" + " --- |" * len(config.scales),
    ]
    for j, r in enumerate(config.separation_ratios):
        cells = []
        for i in range(len(config.scales)):
            cells.append(
                f"{out['interpolation'][i, j].mean():.3f}, {out['det_covariance'][i, j].mean():.3g}, "
                f"{out['kl'][i, j].mean():.3f}"
            )
        lines.append(f"| {r:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figures(config: Config, out: dict) -> dict:
    def sweep(path):
        plt = base.pyplot()
        with base.figure(path, 1, 3, figsize=(14, 4), dpi=90) as (fig, axes):
            colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
            for i, s in enumerate(config.scales):
                a = out["a"][i]
                c = colors[i % len(colors)]
                for ax, key in zip(axes, ("interpolation", "det_covariance", "kl")):
                    ax.plot(a, out[key][i].mean(axis=-1), "o-", ms=3, color=c, label=f"s = {s:g}")
                    if float(s) in PAPER_THRESHOLDS:
                        ax.axvline(PAPER_THRESHOLDS[float(s)], color=c, ls=":", lw=1)
            axes[0].set_ylabel("||mu*|| / a")
            axes[1].set_ylabel("det(Sigma*)")
            axes[1].set_yscale("log")
            axes[2].set_ylabel("KL(q* || p_a)")
            axes[2].axhline(math.log(2), color="black", ls="--", lw=0.8, label="log 2")
            for ax in axes:
                ax.set_xscale("log")
                ax.set_xlabel("a (dotted: the paper's a*)")
            axes[0].legend(fontsize=8)
            axes[2].legend(fontsize=8)
            fig.suptitle("Reverse-KL Gaussian fit to 1/2 N(0, s^2 I) + 1/2 N(a u, s^2 I), started at (0, I)")

    def fits(path):
        i = list(config.scales).index(config.figure_scale)
        s = float(config.figure_scale)
        picks = np.unique(np.linspace(0, len(config.separation_ratios) - 1, 6).round().astype(int))
        with base.figure(path, 1, len(picks), figsize=(3.2 * len(picks), 3.2), squeeze=False, dpi=90) as (fig, axes):
            for ax, j in zip(axes[0], picks):
                a = float(out["a"][i, j])
                lo, hi = -3 * s, a + 3 * s
                xs = np.linspace(lo, hi, 200)
                ys = np.linspace(-(hi - lo) / 2, (hi - lo) / 2, 200)
                xx, yy = np.meshgrid(xs, ys, indexing="ij")
                pts = np.stack([xx, yy], -1)
                dens = 0.5 * (np.exp(-0.5 * np.sum(pts**2, -1) / s**2)
                              + np.exp(-0.5 * np.sum((pts - np.array([a, 0.0])) ** 2, -1) / s**2))
                ax.contourf(xx, yy, dens, levels=12, cmap="Greys")
                loc, cov = out["loc"][i, j, 0][:2], out["covariance"][i, j, 0][:2, :2]
                vals, vecs = np.linalg.eigh(cov)
                t = np.linspace(0, 2 * np.pi, 100)
                for k in (1, 2):
                    ellipse = loc[:, None] + vecs @ (k * np.sqrt(vals)[:, None] * np.stack([np.cos(t), np.sin(t)]))
                    ax.plot(ellipse[0], ellipse[1], color="tab:blue", lw=1)
                ax.plot(*loc, "o", color="tab:blue", ms=3)
                ax.set_title(f"a = {a:g}: ||mu||/a = {out['interpolation'][i, j, 0]:.2f}", fontsize=9)
                ax.set_aspect("equal")
            fig.suptitle(f"s = {s:g}: fitted q (1 and 2 sigma) over p_a")

    return {"mixture_sweep.png": sweep, "mixture_fits.png": fits}


def run(config: Config) -> Result:
    out = _sweep(config)
    rows = []
    for i, s in enumerate(config.scales):
        for j, r in enumerate(config.separation_ratios):
            for seed in range(config.num_seeds):
                rows.append(dict(
                    scale=float(s), alpha=float(out["a"][i, j]), separation_ratio=float(r), seed=seed,
                    interpolation=float(out["interpolation"][i, j, seed]),
                    det_covariance=float(out["det_covariance"][i, j, seed]),
                    kl=float(out["kl"][i, j, seed]),
                    final_objective=float(out["final_objective"][i, j, seed]),
                    loc=out["loc"][i, j, seed].tolist(),
                    covariance=out["covariance"][i, j, seed].tolist(),
                ))
    for i, s in enumerate(config.scales):
        lo, hi = _threshold(config, out, i)
        rows.append(dict(scale=float(s), threshold_lower=lo, threshold_upper=hi,
                         threshold_paper=PAPER_THRESHOLDS.get(float(s))))
    return Result(rows=rows, markdown=_markdown(config, out), figures=_figures(config, out))
