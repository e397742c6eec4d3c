"""symvi-jax: permutation-invariant variational inference for Bayesian neural networks."""

from symvi_jax import likelihoods, meanfield, nets, objectives, orbits, predict, prng, symmetry, units, vi
from symvi_jax.jaxpr_symmetry import infer_symmetry
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.nets import MLP
from symvi_jax.objectives import ObjectiveInfo, elbo, symmetrized_elbo
from symvi_jax.orbits import mutual_information, symmetrized_log_prob
from symvi_jax.symmetry import PermutationGroup, WeightSymmetry
from symvi_jax.vi import VIAlgorithm, VIInfo, VIState, build, fit

__version__ = "0.1.0"

# Submodules imported on first attribute access (``symvi_jax.hmc``), so that ``import symvi_jax``
# imports no optional dependency: hmc needs blackjax, checkpoint orbax-checkpoint (pyproject extras).
_LAZY_SUBMODULES = ("checkpoint", "compilation", "data", "diagnostics", "hmc", "parallel", "posterior_grid")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")  # also binds it on the package
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


__all__ = [
    "MLP",
    "MeanFieldState",
    "ObjectiveInfo",
    "PermutationGroup",
    "VIAlgorithm",
    "VIInfo",
    "VIState",
    "WeightSymmetry",
    "build",
    "elbo",
    "fit",
    "infer_symmetry",
    "likelihoods",
    "meanfield",
    "mutual_information",
    "nets",
    "objectives",
    "orbits",
    "predict",
    "prng",
    "symmetrized_elbo",
    "symmetrized_log_prob",
    "symmetry",
    "units",
    "vi",
]
