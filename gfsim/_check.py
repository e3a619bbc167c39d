"""Argument checks shared by the public functions, in plain Python, before anything is traced.

Each check raises one error that names the field, shows the value (or an array's shape and
dtype) and says what is allowed:

- ``ValueError``: a value of the wrong kind or out of range (the convention of every option);
- ``TypeError``: an array of a dtype gfsim cannot compute with (complex, strings, objects);
- ``IndexError``: a run index outside a batch.

Values that are being traced (under ``jax.jit``, ``jax.grad``, ``jax.vmap``) are checked for
what is known while tracing (shapes, dtypes) and otherwise let through.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _show(value) -> str:
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) > 0:
        return f"an array of shape {tuple(np.shape(value))} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def integer(value, field: str, *, lo: int = 1, none: bool = False) -> int | None:
    """``value`` as a Python int >= ``lo`` (None passes when ``none``). Booleans and floats are
    refused, even 3.0: a count written as a float is usually a mistake upstream."""
    if none and value is None:
        return None
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or value < lo:
        allowed = f"an integer >= {lo}" + (" or None" if none else "")
        raise ValueError(f"{field}={_show(value)} is not allowed; allowed: {allowed}.")
    return int(value)


def real(value, field: str, *, lo: float | None = None, strict: bool = False) -> None:
    """A finite real scalar (a Python or NumPy number, or a 0-d array), >= ``lo`` (> ``lo`` when
    ``strict``). Booleans, complex numbers and strings are refused. Traced values pass."""
    if is_traced(value):
        return
    arr = np.asarray(value) if isinstance(value, (int, float, np.generic, np.ndarray,
                                                  jax.Array)) else None
    ok = (arr is not None and arr.shape == () and not isinstance(value, (bool, np.bool_))
          and (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)))
    bound = "" if lo is None else f" {'>' if strict else '>='} {lo:g}"
    if ok:
        v = float(arr)
        ok = math.isfinite(v) and (lo is None or (v > lo if strict else v >= lo))
    if not ok:
        raise ValueError(
            f"{field}={_show(value)} is not allowed; allowed: a finite real number{bound}.")


def real_array(x, field: str, *, ndims: tuple[int, ...] | None = None, dtype=None):
    """``x`` as a JAX array of a real floating dtype: integer and boolean input is converted to
    ``dtype`` (default: gfsim's default float dtype), floating input keeps its dtype. Complex,
    string and object input raise TypeError; a rank not in ``ndims`` raises ValueError."""
    if not (isinstance(x, (jax.Array, np.ndarray)) or is_traced(x)):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError):  # ragged nested lists
            raise TypeError(
                f"{field}={_show(x)} is not allowed; allowed: a real array (nested lists of "
                "equal lengths, a NumPy or JAX array).") from None
    kind = np.dtype(x.dtype).kind
    if kind not in "biuf":
        raise TypeError(
            f"{field} has dtype {x.dtype} (shape {tuple(x.shape)}); allowed: real numbers "
            "(floating, or integer/boolean, which are converted to float).")
    if ndims is not None and x.ndim not in ndims:
        shapes = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{field} has shape {tuple(x.shape)}; allowed: a {shapes} array.")
    if kind != "f":
        from ._config import default_dtype

        return jnp.asarray(x, default_dtype() if dtype is None else dtype)
    return jnp.asarray(x)


def finite(x, field: str, what: str = "") -> None:
    """Refuse NaN or inf in a concrete array (traced arrays pass). In NumPy: inside a jit
    trace even a jnp op on a concrete array is staged, and bool() of it would fail."""
    if is_traced(x):
        return
    values = np.asarray(x)
    if np.isfinite(values).all():
        return
    bad = np.argwhere(~np.isfinite(values))
    raise ValueError(
        f"{field} contains non-finite values (NaN or inf) at {len(bad)} entries (first at "
        f"index {tuple(int(i) for i in bad[0])}){what}; all must be finite.")


def float_dtype(dtype, field: str = "dtype"):
    """``dtype`` (None: the default) as a real floating NumPy dtype."""
    if dtype is None:
        from ._config import default_dtype

        return np.dtype(default_dtype())
    try:
        d = np.dtype(dtype)
    except TypeError:
        d = None
    if d is None or d.kind != "f":
        raise ValueError(
            f"{field}={_show(dtype)} is not allowed; allowed: a real floating dtype "
            "(jnp.float32, jnp.float64) or None.")
    return d


def prng_key(key, field: str = "key"):
    """A JAX PRNG key: a typed key (``jax.random.key(0)``) or a raw uint32 ``(2,)`` key
    (``jax.random.PRNGKey(0)``)."""
    if isinstance(key, (jax.Array, np.ndarray)) or is_traced(key):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == np.uint32 and key.shape == (2,):
            return key
    raise ValueError(
        f"{field}={_show(key)} is not allowed; allowed: one JAX PRNG key, e.g. "
        "jax.random.key(0).")


def run_index(index, runs: int, what: str):
    """Check an index that selects runs of a batch of ``runs``: an integer in [-runs, runs), a
    slice, an integer array of such integers, or a boolean mask of length ``runs``. JAX would
    clamp an out-of-range integer to the last run; this raises IndexError instead."""
    allowed = (f"an integer in [-{runs}, {runs}), a slice, an integer array or a boolean mask "
               f"of length {runs}")
    if isinstance(index, slice):
        return index
    if isinstance(index, (bool, np.bool_)) or index is None or index is Ellipsis \
            or isinstance(index, (tuple, str, float, complex)):
        raise IndexError(f"index {_show(index)} cannot select runs of {what}; allowed: {allowed}.")
    if is_traced(index):
        return index
    if isinstance(index, (int, np.integer)):
        if not -runs <= int(index) < runs:
            raise IndexError(
                f"index {int(index)} is out of range for {what} of {runs} runs; allowed: "
                f"{allowed}.")
        return index
    try:
        arr = np.asarray(index)
    except (ValueError, TypeError):
        arr = np.asarray([], dtype=object)
    if arr.dtype == np.bool_:
        if arr.shape != (runs,):
            raise IndexError(
                f"a boolean mask of shape {arr.shape} cannot select runs of {what} of {runs} "
                f"runs; allowed: {allowed}.")
        return arr if isinstance(index, list) else index
    if arr.dtype.kind not in "iu" or arr.ndim > 1:
        raise IndexError(f"index {_show(index)} cannot select runs of {what}; allowed: {allowed}.")
    out = arr[(arr < -runs) | (arr >= runs)]
    if out.size:
        raise IndexError(
            f"index {int(out[0])} is out of range for {what} of {runs} runs; allowed: "
            f"{allowed}.")
    # a list of integers works as an integer array (JAX itself refuses list indices)
    return arr if isinstance(index, (list, range)) else index


def _line(value) -> str:
    return " ".join(_show(value).split())


def net_and_data(net, data) -> None:
    """``net`` a :class:`gfsim.MLP` and ``data`` a :class:`gfsim.Dataset` that fit together
    (widths, run axes), for functions that take both at given weights."""
    from .data import Dataset
    from .nets import MLP
    from .trajectory import Trajectory

    if not isinstance(net, MLP):
        hint = ""
        if isinstance(net, Trajectory):
            hint = ("; for where a run ended, pass gfsim.MLP.from_weights(traj.final_weights, "
                    "traj.activation)")
        raise ValueError(f"net={_line(net)} ({type(net).__name__}) is not allowed; allowed: a "
                         f"gfsim.MLP (one net or a batch){hint}.")
    if not isinstance(data, Dataset):
        raise ValueError(f"data={_line(data)} ({type(data).__name__}) is not allowed; allowed: "
                         "a gfsim.Dataset (one or a batch), e.g. gfsim.Dataset(X, Y).")
    if net.widths[0] != data.d_in:
        raise ValueError(
            f"widths={net.widths} take inputs of dimension {net.widths[0]}, but the data has "
            f"d_in={data.d_in}; allowed: a net whose widths[0] is data.d_in.")
    if net.widths[-1] != data.d_out:
        raise ValueError(
            f"widths={net.widths} give {net.widths[-1]} outputs, but the targets have "
            f"d_out={data.d_out}; allowed: a net whose widths[-1] is data.d_out.")
    if net.is_batched and data.is_batched and net.runs != data.runs:
        raise ValueError(
            f"a batch of {net.runs} nets and a batch of {data.runs} datasets; allowed: equal "
            "run axes (or one of them unbatched; gfsim.grid pairs every net with every dataset).")


def finite_net(net, why: str) -> None:
    """Refuse NaN or inf in concrete weights or biases, naming the layer and (for a batch) the
    runs; ``why`` ends the message. Traced arrays pass."""
    for field, arrays in (("weights", net.weights), ("biases", net.biases or ())):
        for j, a in enumerate(arrays):
            if is_traced(a):
                continue
            bad = ~np.isfinite(np.asarray(a))
            if not bad.any():
                continue
            where = ""
            if net.is_batched:
                runs = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(1))
                where = f" of runs {runs[:8].tolist()}{' ...' if len(runs) > 8 else ''}"
            raise ValueError(
                f"net.{field}[{j}]{where} contains non-finite values (NaN or inf); allowed: "
                f"finite weights ({why}).")
