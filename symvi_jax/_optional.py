"""Optional dependencies: imported only by the feature that needs them, with the extra to install.

``import symvi_jax`` imports none of blackjax, orbax-checkpoint, tqdm or matplotlib (pyyaml comes
with flax). Each is named in an extra of ``pyproject.toml``; ``pip install 'symvi-jax[all]'``
installs them all.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["available", "require"]


def available(module_name: str) -> bool:
    """Whether ``module_name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def require(module_name: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module_name``, or raise an ImportError naming ``feature`` and the extra to install."""
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(
            f"{feature} needs {module_name.split('.')[0]}, which is not installed: "
            f"pip install 'symvi-jax[{extra}]' (or 'symvi-jax[all]')"
        ) from err
