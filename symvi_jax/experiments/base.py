"""What every experiment shares: typed configs from YAML and flags, and atomic result writing.

An experiment is a module with

* ``Config``: a frozen dataclass of plain fields (int, float, str, bool, tuples of those) and an
  optional ``validate(self)`` that raises ``ValueError`` naming the bad key;
* ``run(config) -> Result``: does the work and returns rows, a markdown page and figures.

The CLI turns every config field into a flag (``--num-epochs 3``), reads ``--config FILE.yaml``
(unknown keys are an error that lists the valid ones), and writes ``results.json``
(``{"config": ..., "rows": [...]}``), ``results.md`` and the PNG figures into ``--out DIR``.
Writing is atomic: files go to a temporary folder beside DIR and are moved in only once all of
them exist, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import yaml

__all__ = ["Result", "load_config", "config_from_dict", "parse_value", "check_output_dir", "write_results", "to_jsonable"]


class Result(NamedTuple):
    """What ``run(config)`` returns.

    Fields:
      rows: flat records, one per run or table cell (JSON-serialisable values).
      markdown: the results page (``results.md``).
      figures: ``{"name.png": save_fn}`` where ``save_fn(path)`` writes the figure.
    """

    rows: list
    markdown: str
    figures: Mapping[str, Callable[[str], None]] = {}


def _field_types(config_cls) -> dict:
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


def parse_value(text: str, kind, key: str):
    """Parse a flag value for a field of type ``kind``.

    Values are YAML (``0.1``, ``true``, ``[5, 10]``); for tuple fields a bare comma-separated
    list is accepted too (``5,10`` is ``[5, 10]``), each item parsed as YAML.
    """
    if isinstance(text, str) and _is_sequence_kind(kind) and "," in text and text.strip()[:1] not in ("[", "("):
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise ValueError(
                f"config key {key!r}: {text!r} has an empty item; write a comma-separated list such as "
                "5,10 or a YAML list such as [5, 10]"
            )
        return _coerce([_load_yaml(item, key) for item in items], kind, key)
    value = _load_yaml(text, key) if isinstance(text, str) else text
    return _coerce(value, kind, key)


def _load_yaml(text: str, key: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"config key {key!r}: cannot parse {text!r} ({str(err).splitlines()[0]})") from None


def _is_sequence_kind(kind) -> bool:
    """True for ``tuple[...]``/``list``/``Sequence`` and ``Optional`` of one of them."""
    if typing.get_origin(kind) is typing.Union:
        return any(_is_sequence_kind(a) for a in typing.get_args(kind) if a is not type(None))
    return typing.get_origin(kind) in (tuple, list, Sequence) or kind in (tuple, list)


def _coerce(value, kind, key: str):
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        kind = next(a for a in args if a is not type(None))
        return _coerce(value, kind, key)
    if origin in (tuple, list, Sequence) or kind in (tuple, list):
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else str
        return tuple(_coerce(v, inner, key) for v in value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key {key!r} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"config key {key!r} must be an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ValueError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, (str, int, float)):
            raise ValueError(f"config key {key!r} must be a string, got {value!r}")
        return str(value)
    return value


def config_from_dict(config_cls, values: Mapping[str, Any]):
    """Build and validate a config; unknown keys raise ``ValueError`` listing the valid ones."""
    types = _field_types(config_cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; valid keys are {sorted(types)}")
    coerced = {k: _coerce(v, types[k], k) for k, v in values.items()}
    config = config_cls(**coerced)
    if hasattr(config, "validate"):
        config.validate()
    return config


def load_config(config_cls, path: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None):
    """Defaults of ``config_cls``, then the YAML file at ``path``, then ``overrides``."""
    values: dict = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ValueError(f"--config {path}: cannot read the file ({err.strerror})") from None
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"--config {path}: not valid YAML ({' '.join(str(err).split())})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {path}: expected a mapping of keys to values, got {type(loaded).__name__}")
        values.update(loaded)
    values.update(overrides or {})
    return config_from_dict(config_cls, values)


def to_jsonable(value):
    """Convert numpy/jax scalars and arrays, tuples and dataclasses into JSON values (NaN -> None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def check_output_dir(out_dir: str) -> Path:
    """Fail early, before any work, if ``out_dir`` cannot be created or written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a directory")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise ValueError(f"--out {out_dir}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out_dir}: {parent} is not writable")
    return out


def write_results(out_dir: str, config, result: Result) -> list[Path]:
    """Write results.json, results.md and the figures into ``out_dir`` atomically."""
    out = check_output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        payload = {"config": to_jsonable(config), "rows": to_jsonable(list(result.rows))}
        (staging / "results.json").write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
        (staging / "results.md").write_text(result.markdown.rstrip() + "\n")
        for name, save in result.figures.items():
            save(str(staging / name))
        written = []
        for path in sorted(staging.iterdir()):
            target = out / path.name
            os.replace(path, target)
            written.append(target)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (the ``plots`` extra)."""
    from symvi_jax import _optional

    matplotlib = _optional.require("matplotlib", extra="plots", feature="the experiments' figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def figure(path, *args, dpi: int = 100, **kwargs):
    """``with figure(path, 1, 3, figsize=(9, 3)) as (fig, axes):`` -- ``plt.subplots(*args, **kwargs)``.

    On a normal exit the figure is laid out (``tight_layout``) and saved to ``path`` at ``dpi``;
    it is closed either way.
    """
    plt = pyplot()
    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
