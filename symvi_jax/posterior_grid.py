"""Exact posteriors of two-dimensional weight spaces, by numerical integration on a grid.

A model with two free weights (such as the paper's tractable BNN, Gelberg et al. 2024, Section 5)
has a posterior that can be normalised numerically. For an unnormalised log density
log p~(w) = log p(Y | X, w) + log p(w) on a rectangular grid of cells with centres w_c and area
dA, the midpoint rule gives

    Z = int p~(w) dw ~= dA sum_c p~(w_c),      log Z = logsumexp_c log p~(w_c) + log dA,

and with it the KL divergence of any density q to the posterior p = p~ / Z,

    KL(q || p) = int q(w) [log q(w) - log p~(w)] dw + log Z,

where the integral runs on a grid adapted to q (see :func:`gaussian_grid`), so that a q much
narrower than the posterior is still resolved. Since log Z = L(q) + KL(q || p) for every q, this
measures the gap the ELBO L leaves, rather than the ELBO alone.

Reference samples (e.g. from ``symvi_jax.hmc``) are compared with the grid posterior by the total
variation distance between cell masses, TV = (1/2) sum_b |P_b - Q_b| over bins b (blocks of grid
cells), with samples outside the grid counted as mismatch. :func:`sample` draws exact samples from
the grid posterior, to give the Monte Carlo floor that TV has for a finite number of samples.

Points are 2-vectors ``w = (w_1, w_2)``; functions take ``logdensity_fn(w) -> scalar`` and are
vmapped over the grid rows (``chunk_size`` runs the rows through ``lax.map`` instead).
The reductions run in the dtype of the inputs: enable float64 (``jax.enable_x64``) for log Z
and KL values accurate to better than ~1e-4.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import _checks
from symvi_jax.orbits import map_over
from symvi_jax.types import Array, ArrayLike, PRNGKey

__all__ = [
    "Grid",
    "GridPosterior",
    "make_grid",
    "gaussian_grid",
    "points",
    "evaluate",
    "log_cell_masses",
    "integrate",
    "kl_to_posterior",
    "sample",
    "bin_masses",
    "histogram",
    "total_variation",
]

LogDensityFn = Callable[[Array], Array]


class Grid(NamedTuple):
    """A rectangular grid of cells: ``x`` (nx,) and ``y`` (ny,) are equally spaced cell centres."""

    x: Array
    y: Array


class GridPosterior(NamedTuple):
    """An unnormalised log density on a grid and its normaliser.

    Fields:
      grid: the cell centres.
      log_density: log p~ at the cell centres, shape (nx, ny), indexed ``[i, j] <-> (x[i], y[j])``.
      log_normaliser: log Z by the midpoint rule.
    """

    grid: Grid
    log_density: Array
    log_normaliser: Array


def _check_num_points(num_points, name="num_points") -> None:
    if not _checks.is_int(num_points) or num_points < 2:
        raise ValueError(f"{name} must be an int >= 2, got {num_points!r}")


def make_grid(lower: tuple[float, float], upper: tuple[float, float], num_points: int | tuple[int, int]) -> Grid:
    """Cells covering the box [lower_1, upper_1] x [lower_2, upper_2]; centres are cell midpoints.

    Args:
      lower, upper: the corners of the box (``lower < upper`` in both coordinates).
      num_points: cells per axis, one int for both or a pair.
    """
    nx, ny = (num_points, num_points) if np.ndim(num_points) == 0 else tuple(num_points)
    _check_num_points(nx)
    _check_num_points(ny)
    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    if lower.shape != (2,) or upper.shape != (2,):
        raise ValueError(f"lower and upper must be pairs, got {lower.tolist()} and {upper.tolist()}")
    if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper)) and np.all(lower < upper)):
        raise ValueError(f"need finite lower < upper in both coordinates, got lower {lower.tolist()}, upper {upper.tolist()}")

    def centres(lo, hi, n):
        h = (hi - lo) / n
        return jnp.asarray(lo + h * (np.arange(n) + 0.5), dtype=jnp.result_type(float))

    return Grid(centres(lower[0], upper[0], nx), centres(lower[1], upper[1], ny))


def gaussian_grid(loc: ArrayLike, scale: ArrayLike, num_points: int = 201, *, width: float = 8.0) -> Grid:
    """A grid adapted to N(loc, diag(scale^2)): ``loc_i +- width * scale_i`` in each coordinate.

    With ``width = 8`` the mass outside the box is below 1e-14, and the midpoint rule on a
    Gaussian converges geometrically, so ~200 points per axis resolve q to float precision.
    Works under ``jit`` (no eager checks on the values).
    """
    _check_num_points(num_points)
    loc = jnp.asarray(loc)
    scale = jnp.asarray(scale)
    steps = (jnp.arange(num_points) + 0.5) / num_points * 2.0 - 1.0  # cell midpoints in (-1, 1)
    return Grid(loc[0] + width * scale[0] * steps, loc[1] + width * scale[1] * steps)


def _spacing(axis: Array) -> Array:
    return (axis[-1] - axis[0]) / (axis.shape[0] - 1)


def _log_cell_area(grid: Grid) -> Array:
    return jnp.log(_spacing(grid.x)) + jnp.log(_spacing(grid.y))


def points(grid: Grid) -> Array:
    """All cell centres, shape (nx, ny, 2), with ``points[i, j] = (x[i], y[j])``."""
    xx, yy = jnp.meshgrid(grid.x, grid.y, indexing="ij")
    return jnp.stack([xx, yy], axis=-1)


def _on_grid(fn: LogDensityFn, grid: Grid, chunk_size: Optional[int]) -> Array:
    pts = points(grid)
    return map_over(jax.vmap(fn), pts, chunk_size)  # rows of the grid, each vmapped over its cells


def evaluate(logdensity_fn: LogDensityFn, grid: Grid, *, chunk_size: Optional[int] = None) -> GridPosterior:
    """log p~ on every cell and log Z = logsumexp log p~ + log dA (midpoint rule).

    Args:
      logdensity_fn: ``w (2,) -> log p~(w)``, e.g. log-likelihood plus log-prior.
      grid: from :func:`make_grid`; it must hold essentially all the posterior mass.
      chunk_size: rows per ``lax.map`` step (None: vmap all rows at once).
    """
    log_density = _on_grid(logdensity_fn, grid, chunk_size)
    log_normaliser = jax.nn.logsumexp(log_density) + _log_cell_area(grid)
    return GridPosterior(grid, log_density, log_normaliser)


def log_cell_masses(posterior: GridPosterior) -> Array:
    """log P_c = log p~(w_c) + log dA - log Z, the normalised mass of every cell (sums to 1)."""
    return posterior.log_density + _log_cell_area(posterior.grid) - posterior.log_normaliser


def integrate(log_weight_fn: LogDensityFn, fn: Callable[[Array], Array], grid: Grid, *,
              chunk_size: Optional[int] = None) -> tuple[Array, Array]:
    """int exp(log_weight(w)) fn(w) dw and int exp(log_weight(w)) dw on ``grid`` (midpoint rule).

    The second value, the weight's mass on the grid, should be ~1 for a normalised density whose
    support the grid covers; it is a check on the first.
    """
    def both(w):
        return jnp.stack([log_weight_fn(w), fn(w)])

    values = _on_grid(both, grid, chunk_size)
    log_area = _log_cell_area(grid)
    weight = jnp.exp(values[..., 0] + log_area)
    integrand = jnp.where(weight > 0, weight * values[..., 1], 0.0)  # 0 * inf -> 0 far in the tails
    return jnp.sum(integrand), jnp.sum(weight)


def kl_to_posterior(log_q_fn: LogDensityFn, logdensity_fn: LogDensityFn, log_normaliser: ArrayLike, grid: Grid,
                    *, chunk_size: Optional[int] = None) -> tuple[Array, Array]:
    """KL(q || p) = int q (log q - log p~) dw + log Z, integrated on a grid that covers q.

    Args:
      log_q_fn: ``w -> log q(w)`` of a normalised density (a mean-field q, or q^G).
      logdensity_fn: the unnormalised log posterior, ``w -> log p~(w)``.
      log_normaliser: log Z of ``logdensity_fn`` (from :func:`evaluate`).
      grid: a grid holding q's mass, e.g. :func:`gaussian_grid` of q's mean and scale (for q^G of
        a G-invariant posterior, q's own grid suffices: E_{q^G} h = E_q h for invariant h).

    Returns:
      ``(kl, mass)``, with ``mass`` = int_grid q, which should be ~1.
    """
    value, mass = integrate(log_q_fn, lambda w: log_q_fn(w) - logdensity_fn(w), grid, chunk_size=chunk_size)
    return value + jnp.asarray(log_normaliser) * mass, mass


def sample(rng_key: PRNGKey, posterior: GridPosterior, num_samples: int) -> Array:
    """Exact draws from the grid posterior: pick a cell by its mass, then a uniform point in it.

    Returns an array of shape (num_samples, 2).
    """
    _checks.positive_int(num_samples, "num_samples")
    key_cell, key_jitter = jax.random.split(rng_key)
    # Inverse CDF (``jax.random.categorical`` would build a num_samples x num_cells Gumbel array).
    cdf = jnp.cumsum(jnp.exp(log_cell_masses(posterior)).reshape(-1))
    u = jax.random.uniform(key_cell, (num_samples,), dtype=cdf.dtype) * cdf[-1]
    cells = jnp.minimum(jnp.searchsorted(cdf, u, side="right"), cdf.shape[0] - 1)
    ny = posterior.grid.y.shape[0]
    i, j = cells // ny, cells % ny
    spacing = jnp.stack([_spacing(posterior.grid.x), _spacing(posterior.grid.y)])
    jitter = jax.random.uniform(key_jitter, (num_samples, 2), minval=-0.5, maxval=0.5) * spacing
    return jnp.stack([posterior.grid.x[i], posterior.grid.y[j]], axis=-1) + jitter


def _check_factor(posterior: GridPosterior, factor: int) -> None:
    nx, ny = posterior.log_density.shape
    if not _checks.is_int(factor) or factor < 1 or nx % factor or ny % factor:
        raise ValueError(f"factor must be a positive int dividing the grid shape {(nx, ny)}, got {factor!r}")


def bin_masses(posterior: GridPosterior, factor: int) -> Array:
    """Posterior mass of bins made of ``factor x factor`` blocks of cells, shape (nx/f, ny/f)."""
    _check_factor(posterior, factor)
    nx, ny = posterior.log_density.shape
    masses = jnp.exp(log_cell_masses(posterior)).reshape(nx // factor, factor, ny // factor, factor)
    return masses.sum(axis=(1, 3))


def histogram(samples: Array, posterior: GridPosterior, factor: int) -> tuple[Array, Array]:
    """Fractions of ``samples`` (n, 2) in each bin of :func:`bin_masses`, and the fraction outside."""
    _check_factor(posterior, factor)
    samples = jnp.asarray(samples).reshape(-1, 2)
    nx, ny = posterior.log_density.shape

    def bin_index(values, axis):
        h = _spacing(axis)
        return jnp.floor((values - (axis[0] - h / 2)) / (h * factor)).astype(jnp.int32)

    bx = bin_index(samples[:, 0], posterior.grid.x)
    by = bin_index(samples[:, 1], posterior.grid.y)
    inside = (bx >= 0) & (bx < nx // factor) & (by >= 0) & (by < ny // factor)
    flat = jnp.where(inside, bx * (ny // factor) + by, 0)
    hist = jnp.zeros((nx // factor) * (ny // factor)).at[flat].add(inside.astype(jnp.result_type(float)))
    n = samples.shape[0]
    return hist.reshape(nx // factor, ny // factor) / n, 1.0 - jnp.sum(inside) / n


def total_variation(samples: Array, posterior: GridPosterior, factor: int) -> Array:
    """TV = (1/2) [sum_b |P_b - Q_b| + Q_outside] between the grid posterior's bin masses P_b and
    the empirical bin fractions Q_b of ``samples`` (bins of ``factor x factor`` cells).

    TV is biased upward by the finite number of samples: compare it with the TV of as many exact
    draws (:func:`sample`), which has only that bias.
    """
    hist, outside = histogram(samples, posterior, factor)
    return 0.5 * (jnp.sum(jnp.abs(bin_masses(posterior, factor) - hist)) + outside)
