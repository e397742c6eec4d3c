"""symvi-jax: permutation-invariant variational inference for Bayesian neural networks."""

from symvi_jax import likelihoods, meanfield, nets, objectives, orbits, predict, symmetry, units, vi
from symvi_jax.jaxpr_symmetry import infer_symmetry
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.nets import MLP
from symvi_jax.objectives import ObjectiveInfo, elbo, symmetrized_elbo
from symvi_jax.orbits import mutual_information, symmetrized_log_prob
from symvi_jax.symmetry import PermutationGroup, WeightSymmetry
from symvi_jax.vi import VIAlgorithm, VIInfo, VIState, build, fit

__version__ = "0.1.0"

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
    "symmetrized_elbo",
    "symmetrized_log_prob",
    "symmetry",
    "units",
    "vi",
]
