"""Traced solves kept across processes.

JAX's persistent compilation cache skips XLA's compile in a new process, but not the tracing
that comes before it: for the event-driven ReLU solve (a loop with many branches) tracing takes
2-3 s on a laptop CPU, most of a second process's first call. So gfsim also keeps the TRACED
program: the first call of a solve with a new structure exports it with ``jax.export`` (the
StableHLO of exactly what would have been compiled) into the cache directory, and a later process
with the same structure loads it instead of tracing, then finds the compiled program in the
persistent compilation cache.

The key is everything that shapes the program: the static settings, the non-array parts and tree
structure of the inputs, every input's shape, dtype and weak type, the gfsim, JAX and jaxlib
versions, a digest of gfsim's source files (an edited checkout traces afresh), the backend and
the x64 flag. Calls whose inputs are tracers (under ``jax.grad``,
``jax.vmap`` or a user's ``jit``) take the ordinary path, so differentiation is unaffected.
Anything that cannot be exported, or a key that could not be made stable (an object printed with
its address), also takes the ordinary path. ``GFSIM_TRACE_CACHE=0`` turns this off; it is off
whenever the persistent compilation cache is.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile

import jax
import jaxlib
import numpy as np

from . import _config

_MEMO: dict = {}  # (settings, tree, avals) -> jitted imported call, or None: ordinary path
_SUBDIR = "gfsim-exported"


def cache_dir() -> str | None:
    """Where exported programs go (inside the persistent compilation cache), or None if off."""
    if not _config._truthy(os.environ.get("GFSIM_TRACE_CACHE"), True):
        return None
    base = jax.config.jax_compilation_cache_dir
    return os.path.join(base, _SUBDIR) if base else None


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """A digest of gfsim's own source files: an edited checkout (same version number) must not
    load programs traced from the code before the edit."""
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def _key(static_key, treedef, avals) -> str | None:
    from . import __version__

    desc = repr((
        __version__, _source_digest(), jax.__version__, jaxlib.__version__, jax.default_backend(),
        bool(jax.config.jax_enable_x64), static_key, str(treedef), avals,
    ))
    if " at 0x" in desc:  # a function or object printed by address: not stable across runs
        return None
    return hashlib.sha256(desc.encode()).hexdigest()


def cached_call(fn, args: tuple, static_key):
    """``fn(*args, static_key)`` through a stored export of it, or None when that path does not
    apply (the caller then calls ``fn`` itself)."""
    where = cache_dir()
    if where is None:
        return None
    leaves, treedef = jax.tree_util.tree_flatten(args)
    if not all(isinstance(x, (jax.Array, np.ndarray, np.generic)) for x in leaves) or any(
        isinstance(x, jax.core.Tracer) for x in leaves
    ):
        return None
    avals = tuple((x.shape, str(x.dtype), bool(getattr(x, "weak_type", False))) for x in leaves)
    fast = (static_key, treedef, avals)  # hashable; the file name needs a stable digest
    call = _MEMO.get(fast, False)
    if call is False:
        key = _key(static_key, treedef, avals)
        exp = None if key is None else _load_or_export(fn, where, key, treedef, leaves,
                                                        static_key)
        # jit around the imported call: later calls take JAX's fast dispatch path
        call = None if exp is None else jax.jit(exp.call)
        _MEMO[fast] = call
    if call is None:
        return None
    return call(*leaves)


def _load_or_export(fn, where, key, treedef, leaves, static_key):
    path = os.path.join(where, key + ".jaxexport")
    try:
        with open(path, "rb") as f:
            return jax.export.deserialize(bytearray(f.read()))
    except Exception:  # missing, truncated or foreign: export afresh (and overwrite it)
        pass

    def flat(*lv):
        return fn(*jax.tree_util.tree_unflatten(treedef, lv), static_key)

    structs = [jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=getattr(x, "weak_type", False))
               for x in leaves]
    try:
        exp = jax.export.export(jax.jit(flat))(*structs)
        blob = exp.serialize()
    except Exception:
        return None
    try:
        os.makedirs(where, exist_ok=True)
        # written whole or not at all: a reader never sees half a file
        fd, tmp = tempfile.mkstemp(dir=where, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache costs the next process a trace, nothing else
    return exp
