"""Datasets and the generators of the paper's experiments.

A :class:`Dataset` holds inputs ``X`` of shape ``(n, d_in)`` and targets ``Y`` of shape
``(n, d_out)``; with a leading run axis ``(runs, n, d)`` it is a batch of datasets that
:func:`gfsim.simulate` pairs with a batch of nets. An optional 0/1 ``mask`` (shape of ``Y``) says
which target entries enter the loss (matrix completion).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from . import _check


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


class Dataset(eqx.Module):
    """Inputs and targets of a regression or classification problem.

    **Arguments:**

    - ``X``: inputs, ``(n, d_in)``, or ``(runs, n, d_in)`` for a batch of datasets.
    - ``Y``: targets, ``(n, d_out)`` (a 1-D ``(n,)`` is taken as ``(n, 1)``); labels in
      {-1, +1} for the exponential and logistic losses.
    - ``mask``: optional 0/1 array shaped like ``Y``; only entries with mask 1 enter the loss.
    """

    X: Float[Array, "*runs n d_in"]
    Y: Float[Array, "*runs n d_out"]
    mask: Float[Array, "*runs n d_out"] | None = None

    def __init__(self, X, Y, mask=None):
        X = _check.real_array(X, "X")
        Y = _check.real_array(Y, "Y")
        if Y.ndim == X.ndim - 1:
            Y = Y[..., None]
        self.X = X
        self.Y = Y.astype(X.dtype)
        self.mask = None if mask is None else _check.real_array(mask, "mask").astype(X.dtype)

    def __check_init__(self):
        X, Y = self.X, self.Y
        if X.ndim not in (2, 3):
            raise ValueError(
                f"X must have shape (n, d_in) or (runs, n, d_in); got shape {tuple(X.shape)}."
            )
        if Y.ndim != X.ndim:
            raise ValueError(
                f"Y must have shape (n, d_out) matching X {tuple(X.shape)}; got {tuple(Y.shape)}."
            )
        if X.shape[:-1] != Y.shape[:-1]:
            raise ValueError(
                f"X and Y must agree on the leading (runs,) n axes; got X {tuple(X.shape)} and "
                f"Y {tuple(Y.shape)}."
            )
        if X.shape[-2] < 1:
            raise ValueError("X must hold at least one data point (n >= 1).")
        if X.shape[-1] < 1 or Y.shape[-1] < 1 or (X.ndim == 3 and X.shape[0] < 1):
            raise ValueError(
                f"X {tuple(X.shape)} and Y {tuple(Y.shape)} have an empty axis; allowed: "
                "d_in >= 1, d_out >= 1 and, for a batch, runs >= 1.")
        if self.mask is not None:
            if self.mask.shape != Y.shape:
                raise ValueError(
                    f"mask must have Y's shape {tuple(Y.shape)}; got {self.mask.shape}."
                )
            if _is_concrete(self.mask) and not bool(
                jnp.all((self.mask == 0) | (self.mask == 1))
            ):
                raise ValueError("mask must hold only 0 (unobserved) and 1 (observed).")
        for name, a in (("X", X), ("Y", Y)):
            if _is_concrete(a) and not bool(jnp.all(jnp.isfinite(a))):
                raise ValueError(
                    f"{name} contains non-finite values (NaN or inf); all must be finite."
                )

    @property
    def n(self) -> int:
        return self.X.shape[-2]

    @property
    def d_in(self) -> int:
        return self.X.shape[-1]

    @property
    def d_out(self) -> int:
        return self.Y.shape[-1]

    @property
    def runs(self) -> int | None:
        return self.X.shape[0] if self.X.ndim == 3 else None

    @property
    def is_batched(self) -> bool:
        return self.runs is not None

    def __getitem__(self, index) -> Dataset:
        if not self.is_batched:
            raise TypeError("Only a batch of datasets (leading run axis) can be indexed.")
        index = _check.run_index(index, self.runs, "a batch of datasets")
        return jax.tree_util.tree_map(lambda a: a[index], self)


def stack(items) -> Dataset:
    """Stack single datasets (same shapes) into a batch with a leading run axis."""
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *items)


def _batched(fn, key, runs):
    _check.prng_key(key)
    if runs is None:
        return fn(key)
    return jax.vmap(fn)(jax.random.split(key, runs))


# ----------------------------------------------------------------------------------------------
# The paper's size-2 dataset


def paper_angle() -> float:
    """Angle between the two points of the authors' dataset (1, 0.99) and (-1, 0.99)."""
    return 2.0 * math.atan2(1.0, 0.99)


def pair_points(angle: float, dim: int = 2, dtype=None) -> Float[Array, "2 dim"]:
    """Two unit vectors at ``angle`` (radians), symmetric about the second axis:
    x1 = (sin(a/2), cos(a/2), 0, ...), x2 = (-sin(a/2), cos(a/2), 0, ...)."""
    _check.real(angle, "angle")
    if not (0 < angle < math.pi):
        raise ValueError(f"angle={angle!r} must lie strictly between 0 and pi.")
    _check.integer(dim, "dim", lo=2)
    dtype = _check.float_dtype(dtype)
    s, c = math.sin(angle / 2), math.cos(angle / 2)
    x = np.zeros((2, dim))
    x[0, :2] = (s, c)
    x[1, :2] = (-s, c)
    return jnp.asarray(x, dtype)


def paper_pair(angle: float | None = None, dim: int = 2, dtype=None) -> Dataset:
    """The paper's size-2 dataset: x1 = (1, 0.99)/norm, x2 = (-1, 0.99)/norm (or two unit points
    at ``angle`` in ``dim`` dimensions), targets y1 = e1, y2 = e2 (two outputs)."""
    X = pair_points(paper_angle() if angle is None else angle, dim, dtype)
    return Dataset(X, jnp.eye(2, dtype=X.dtype))


def random_pairs(key: PRNGKeyArray, runs: int, dim: int = 2, dtype=None) -> Dataset:
    """A batch of ``runs`` size-2 datasets: two independent uniform points on the unit sphere in
    ``dim`` dimensions, targets e1 and e2 (the "most datasets" experiment)."""
    _check.integer(runs, "runs")
    _check.integer(dim, "dim")
    dtype = _check.float_dtype(dtype)

    def one(k):
        g = jax.random.normal(k, (2, dim), dtype)
        return Dataset(g / jnp.linalg.norm(g, axis=1, keepdims=True), jnp.eye(2, dtype=dtype))

    return _batched(one, key, runs)


def pair_angle(data: Dataset) -> Array:
    """Angle between the first two inputs of each dataset (broadcasts over a batch)."""
    x1, x2 = data.X[..., 0, :], data.X[..., 1, :]
    c = jnp.sum(x1 * x2, -1) / (jnp.linalg.norm(x1, axis=-1) * jnp.linalg.norm(x2, axis=-1))
    return jnp.arccos(jnp.clip(c, -1.0, 1.0))


# ----------------------------------------------------------------------------------------------
# General generators


def sphere(
    key: PRNGKeyArray,
    n: int,
    dim: int,
    *,
    d_out: int = 1,
    targets: str = "ones",
    runs: int | None = None,
    dtype=None,
) -> Dataset:
    """``n`` uniform points on the unit sphere in ``dim`` dimensions. ``targets``: ``"ones"``
    (every target 1), ``"gaussian"`` (N(0, 1) entries) or ``"signs"`` (uniform +-1)."""
    if targets not in ("ones", "gaussian", "signs"):
        raise ValueError(f"targets={targets!r}; allowed: ones, gaussian, signs.")
    _check.integer(n, "n")
    _check.integer(dim, "dim")
    _check.integer(d_out, "d_out")
    _check.integer(runs, "runs", none=True)
    dtype = _check.float_dtype(dtype)

    def one(k):
        kx, ky = jax.random.split(k)
        g = jax.random.normal(kx, (n, dim), dtype)
        X = g / jnp.linalg.norm(g, axis=1, keepdims=True)
        if targets == "ones":
            Y = jnp.ones((n, d_out), dtype)
        elif targets == "gaussian":
            Y = jax.random.normal(ky, (n, d_out), dtype)
        else:
            Y = jnp.where(jax.random.bernoulli(ky, 0.5, (n, d_out)), 1.0, -1.0).astype(dtype)
        return Dataset(X, Y)

    return _batched(one, key, runs)


def teacher_student(
    key: PRNGKeyArray,
    n: int = 1000,
    dim: int = 10,
    *,
    teacher_widths: tuple[int, ...] = (10, 1),
    labels: str = "sign",
    runs: int | None = None,
    dtype=None,
) -> Dataset:
    """The paper's experiment B data: inputs uniform in [0, 1]^dim, then normalised to unit norm;
    a bias-free ReLU teacher with widths ``(dim, *teacher_widths)`` whose parameters have total
    Euclidean norm 1; targets ``sign(teacher(x))`` (``labels="sign"``, zeros mapped to +1) or the
    teacher's output itself (``labels="regression"``)."""
    if labels not in ("sign", "regression"):
        raise ValueError(f"labels={labels!r}; allowed: sign, regression.")
    from .nets import MLP, _check_widths

    _check.integer(n, "n")
    _check.integer(dim, "dim")
    _check_widths((dim, *teacher_widths))
    _check.integer(runs, "runs", none=True)
    dtype = _check.float_dtype(dtype)
    widths = (dim, *teacher_widths)

    def one(k):
        kx, kt = jax.random.split(k)
        X = jax.random.uniform(kx, (n, dim), dtype)
        X = X / jnp.linalg.norm(X, axis=1, keepdims=True)
        teacher = MLP(widths, "relu", key=kt, init="normal", dtype=dtype)
        norm = jnp.sqrt(sum(jnp.sum(w**2) for w in teacher.weights))
        # All parameters divided jointly by their total norm: the teacher's theta has norm 1.
        out = MLP.from_weights([w / norm for w in teacher.weights])(X)
        if labels == "sign":
            out = jnp.where(out >= 0, 1.0, -1.0).astype(dtype)
        return Dataset(X, out)

    return _batched(one, key, runs)


def whitened_regression(
    key: PRNGKeyArray,
    n: int,
    d_in: int,
    d_out: int,
    singular_values,
    dtype=None,
) -> Dataset:
    """Linear regression with whitened inputs (Saxe et al. 2014): ``X`` has orthonormal columns
    (sum_i x_i x_i^T = I, needs n >= d_in) and ``Y = X A^T`` for a target map A (d_out, d_in) with
    the given singular values and random singular vectors. Then the input-output correlation
    sum_i y_i x_i^T equals A, which fixes the closed-form mode dynamics of a linear net."""
    _check.prng_key(key)
    for field, v in (("n", n), ("d_in", d_in), ("d_out", d_out)):
        _check.integer(v, field)
    dtype = _check.float_dtype(dtype)
    s = _check.real_array(singular_values, "singular_values", ndims=(1,)).astype(dtype)
    _check.finite(s, "singular_values")
    r = s.shape[0]
    if n < d_in:
        raise ValueError(f"n={n} must be >= d_in={d_in} for whitened inputs.")
    if r > min(d_in, d_out):
        raise ValueError(f"{r} singular values given; at most min(d_in, d_out)={min(d_in, d_out)}.")
    kx, ku, kv = jax.random.split(key, 3)
    from .nets import _orthonormal_columns

    X = _orthonormal_columns(kx, n, d_in, dtype)
    U = _orthonormal_columns(ku, d_out, r, dtype)
    V = _orthonormal_columns(kv, d_in, r, dtype)
    A = (U * s) @ V.T
    return Dataset(X, X @ A.T)


def matrix_completion(
    key: PRNGKeyArray,
    rows: int,
    cols: int,
    rank: int,
    *,
    observed: float = 0.3,
    runs: int | None = None,
    dtype=None,
) -> Dataset:
    """Low-rank matrix completion for deep linear nets (Arora et al. 2019): a target
    M = U V^T / sqrt(rank) of shape (rows, cols) with Gaussian factors; a net of widths
    (cols, ..., rows) maps e_j to column j, so its end-to-end product estimates M. ``X`` is the
    (cols x cols) identity, ``Y = M^T`` and ``mask`` marks the observed entries (each kept with
    probability ``observed``)."""
    _check.real(observed, "observed")
    if not (0 < observed <= 1):
        raise ValueError(f"observed={observed!r} must be in (0, 1].")
    _check.integer(rows, "rows")
    _check.integer(cols, "cols")
    _check.integer(rank, "rank", lo=0)
    if not (1 <= rank <= min(rows, cols)):
        raise ValueError(f"rank={rank!r} must be between 1 and min(rows, cols).")
    _check.integer(runs, "runs", none=True)
    dtype = _check.float_dtype(dtype)

    def one(k):
        ku, kv, km = jax.random.split(k, 3)
        M = jax.random.normal(ku, (rows, rank), dtype) @ jax.random.normal(kv, (rank, cols), dtype)
        M = M / math.sqrt(rank)
        mask = jax.random.bernoulli(km, observed, (cols, rows)).astype(dtype)
        return Dataset(jnp.eye(cols, dtype=dtype), M.T, mask)

    return _batched(one, key, runs)
