"""Process-wide JAX settings gfsim applies on import.

Float64: small-initialisation plateaus (loss changes far below float32 resolution) need double
precision, so gfsim turns on ``jax_enable_x64`` when it is imported. Set the environment variable
``GFSIM_X64=0`` before importing gfsim to leave JAX's default (float32) alone, e.g. on a GPU where
float64 is slow; arrays then follow whatever dtype you pass in.

Persistent compilation cache: JAX compiles are the slow part of a first call, so gfsim caches
compiled programs across processes, by default in ``~/.cache/gfsim/jax``. ``GFSIM_CACHE_DIR``
moves it; ``GFSIM_CACHE_DIR=0`` turns it off. If ``JAX_COMPILATION_CACHE_DIR`` is set, JAX's own
setting is used for the directory. Either way small programs are cached too. So that the
compiled solve can be cached at all, gfsim sets ``EQX_ON_ERROR=nan`` unless it is already set
(Equinox's runtime checks otherwise use host callbacks, which JAX does not cache); import gfsim
before equinox for it to take effect. The traced solves themselves are kept beside the cache
(``gfsim._exported``; ``GFSIM_TRACE_CACHE=0`` turns that off).
"""

from __future__ import annotations

import os

import jax


def _truthy(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def configure() -> None:
    # Equinox's runtime checks (error_if) default to host callbacks, and JAX never writes a
    # program with host callbacks to the persistent cache: every process would recompile the
    # solve. With "nan" a failed check poisons the output instead (the run's status becomes
    # "nonfinite"). Must be set before equinox is first imported; an explicit setting wins.
    os.environ.setdefault("EQX_ON_ERROR", "nan")
    if _truthy(os.environ.get("GFSIM_X64"), True):
        jax.config.update("jax_enable_x64", True)
    cache_dir = os.environ.get("GFSIM_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "gfsim", "jax"
    )
    if _truthy(cache_dir, True):
        if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            jax.config.update("jax_compilation_cache_dir", cache_dir)
        # Cache even small programs: a test suite is made of them.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def default_dtype():
    """float64 when x64 is on, float32 otherwise."""
    import jax.numpy as jnp

    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
