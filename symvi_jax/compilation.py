"""XLA compilation: a persistent cache, and counts of what was compiled and what came from the cache.

JAX can keep compiled programs on disk (``jax_compilation_cache_dir``); a second run of the same
program then loads it instead of compiling. :func:`enable_cache` turns that on for every program
(no minimum compile time or size), and :class:`CompileStats` listens to JAX's monitoring events to
report the seconds spent in XLA compilation and the persistent cache's hits and misses. The CLI
uses both: it prints a line like ``compile: 12.3 s for 8 programs; persistent cache: 8 hits, 0
misses (~/.cache/symvi-jax/jax)``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional, Union

import jax
from jax._src import monitoring  # the listener registry; jax.monitoring re-exports registration only
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

__all__ = ["default_cache_dir", "enable_cache", "persistent_cache", "CompileStats"]

_CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_CACHE_MISS = "/jax/compilation_cache/cache_misses"


def default_cache_dir() -> Optional[Path]:
    """``$SYMVI_JAX_CACHE`` (``off``: None), else ``$XDG_CACHE_HOME/symvi-jax/jax``, else ``~/.cache/symvi-jax/jax``."""
    if os.environ.get("SYMVI_JAX_CACHE") == "off":
        return None
    if os.environ.get("SYMVI_JAX_CACHE"):
        return Path(os.environ["SYMVI_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "symvi-jax" / "jax"


def enable_cache(directory: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Cache every compiled program in ``directory`` (default :func:`default_cache_dir`).

    Raises:
      ValueError: if the directory cannot be created or written.
    """
    path = Path(directory) if directory is not None else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"compile cache directory {path}: cannot create it ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"compile cache directory {path}: not writable")
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _jax_cache.reset_cache()  # JAX opens its cache once per process: drop one opened at another directory
    return path


@contextlib.contextmanager
def persistent_cache(directory: Optional[Union[str, os.PathLike]] = None):
    """:func:`enable_cache` for the duration of a ``with`` block, then JAX's previous settings.

    ``directory="off"`` (or ``$SYMVI_JAX_CACHE=off`` with no directory) leaves the cache off and
    yields None.
    """
    if directory == "off" or (directory is None and default_cache_dir() is None):
        yield None
        return
    previous = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
    try:
        yield enable_cache(directory)
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        _jax_cache.reset_cache()  # the next compile opens the previous directory's cache, if any


class CompileStats:
    """Counts XLA compilations, their seconds and persistent-cache hits while it is listening.

    Use as a context manager; the counts stay readable afterwards.
    """

    def __init__(self):
        self.compile_seconds = 0.0
        self.compilations = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self._listening = False

    def _on_event(self, event: str, **kwargs) -> None:
        if not self._listening:
            return
        if event == _CACHE_HIT:
            self.cache_hits += 1
        elif event == _CACHE_MISS:
            self.cache_misses += 1

    def _on_duration(self, event: str, duration: float, **kwargs) -> None:
        if self._listening and event == _BACKEND_COMPILE:
            self.compile_seconds += duration
            self.compilations += 1

    def __enter__(self) -> "CompileStats":
        self._listening = True
        monitoring.register_event_listener(self._on_event)
        monitoring.register_event_duration_secs_listener(self._on_duration)
        return self

    def __exit__(self, *exc) -> None:
        self._listening = False
        for name, fn in (("unregister_event_listener", self._on_event),
                         ("unregister_event_duration_listener", self._on_duration)):
            unregister = getattr(monitoring, name, None)
            if unregister is not None:
                try:
                    unregister(fn)
                except (AssertionError, ValueError, KeyError):
                    pass  # already gone

    def summary(self, cache_dir: Optional[Path] = None) -> str:
        where = f" ({cache_dir})" if cache_dir is not None else " (off)"
        return (f"compile: {self.compile_seconds:.1f} s for {self.compilations} programs; persistent cache: "
                f"{self.cache_hits} hits, {self.cache_misses} misses{where}")
