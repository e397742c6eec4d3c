"""Type aliases shared by the package (after ``blackjax/types.py``)."""

from typing import Any, Iterable, Mapping, Union

import jax
from jax.typing import ArrayLike

__all__ = ["Array", "ArrayLike", "ArrayTree", "PRNGKey", "Permutation"]

Array = jax.Array

#: A pytree of arrays, such as a flax ``params`` dict.
ArrayTree = Union[jax.Array, Iterable["ArrayTree"], Mapping[Any, "ArrayTree"]]

#: A typed key from ``jax.random.key``; legacy ``uint32[2]`` keys are accepted too.
PRNGKey = jax.Array

#: A group element: one int32 index array per hidden layer (see ``symmetry.PermutationGroup``).
Permutation = tuple[jax.Array, ...]
