"""Spectra, rank measures and conserved quantities of layers along a trajectory.

Every function broadcasts over leading axes: a weight array of shape ``(..., out, in)`` (e.g.
``(runs, T, out, in)`` from a batched :class:`gfsim.Trajectory`) gives results of shape ``(...)``
(or ``(..., k)`` for spectra).

Arguments are checked in plain Python before any computation: a matrix argument must be a real
array (or nested lists) with at least two dims and no empty matrix dim; ``weights`` a list or
tuple of such arrays whose shapes chain (layer j+1's ``in`` is layer j's ``out``); anything else
is one ValueError (a wrong rank or shape) or TypeError (strings, complex numbers, objects)
naming the argument, its shape or type and what is allowed. NaN and inf are data here, not
errors: a trajectory's save slots after an early stop hold NaN, and a matrix with a non-finite
entry gives NaN (or inf, for norms) in its result, never an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _check
from .activations import get_activation


def _brief(value) -> str:
    """A value on one line: an array's shape and dtype, else a short repr."""
    if isinstance(value, (list, tuple)) and any(hasattr(v, "shape") for v in value):
        return f"[{len(value)} items]"
    return " ".join(_check._show(value).split())


_MATRIX = "a real array (..., out, in) with at least 2 dims, out >= 1 and in >= 1"


def _matrix(w, field: str = "w"):
    """``w`` as a real JAX array of at least 2 dims with non-empty matrix dims."""
    if isinstance(w, (str, bytes, dict, set)) or w is None:
        raise TypeError(f"{field}={_brief(w)} ({type(w).__name__}) is not allowed; "
                        f"allowed: {_MATRIX}.")
    w = _check.real_array(w, field)
    if w.ndim < 2 or 0 in w.shape[-2:]:
        raise ValueError(f"{field} has shape {tuple(w.shape)}; allowed: {_MATRIX} (one matrix, "
                         "or a batch of them).")
    return w


def _layers(weights, field: str = "weights", *, min_layers: int = 1, timed: bool = False) -> list:
    """``weights`` as a list of checked matrices whose shapes chain (``timed``: each with the
    same number of dims, at least 3, for functions with a time axis)."""
    if not isinstance(weights, (list, tuple)):
        raise TypeError(
            f"{field}={_brief(weights)} ({type(weights).__name__}) is not allowed; "
            "allowed: a list or tuple of per-layer arrays (..., out, in), e.g. traj.weights.")
    if len(weights) < min_layers:
        raise ValueError(f"{field} has {len(weights)} layers; allowed: at least {min_layers} "
                         "(a balance invariant is between consecutive layers)." if min_layers > 1
                         else f"{field} is empty; allowed: at least one layer.")
    ws = [_matrix(w, f"{field}[{j}]") for j, w in enumerate(weights)]
    if timed:
        if ws[0].ndim < 3:
            raise ValueError(f"{field}[0] has shape {tuple(ws[0].shape)}; allowed: per layer "
                             "(..., T, out, in), with a time axis (e.g. traj.weights).")
        for j, w in enumerate(ws[1:], 1):
            if w.ndim != ws[0].ndim:
                raise ValueError(f"{field}[{j}] has shape {tuple(w.shape)}; allowed: "
                                 f"{ws[0].ndim} dims, like {field}[0] (shape "
                                 f"{tuple(ws[0].shape)}): the same time axis in every layer.")
    for j in range(1, len(ws)):
        if ws[j].shape[-1] != ws[j - 1].shape[-2]:
            raise ValueError(
                f"{field}[{j}] has shape {tuple(ws[j].shape)}; allowed: (..., out, "
                f"{ws[j - 1].shape[-2]}): its inputs are the {ws[j - 1].shape[-2]} outputs of "
                f"{field}[{j - 1}] (shape {tuple(ws[j - 1].shape)}).")
    return ws


def _inputs(X, weights: list, field: str = "X"):
    if isinstance(X, (str, bytes, dict, set)) or X is None:
        raise TypeError(f"{field}={_brief(X)} ({type(X).__name__}) is not allowed; "
                        "allowed: a real array (..., n, d_in) of input points.")
    X = _check.real_array(X, field)
    d_in = weights[0].shape[-1]
    if X.ndim < 2 or X.shape[-1] != d_in or X.shape[-2] == 0:
        raise ValueError(f"{field} has shape {tuple(X.shape)}; allowed: a real array "
                         f"(..., n, {d_in}) with n >= 1 (the first layer takes {d_in} inputs).")
    return X


def _nonneg(value, field: str):
    if value is not None:
        _check.real(value, field, lo=0.0)
    return value


def _time_axis(time_axis, ndim: int) -> int:
    """A time axis of weights with ``ndim`` dims: an integer that is not one of the matrix
    axes."""
    ok = isinstance(time_axis, (int, np.integer)) and not isinstance(time_axis, bool) \
        and -ndim <= time_axis < ndim and time_axis % ndim < ndim - 2
    if not ok:
        raise ValueError(
            f"time_axis={_brief(time_axis)} is not allowed; allowed: an integer axis of "
            f"the weights ({ndim} dims) other than the last two (out, in), e.g. -3.")
    return int(time_axis) % ndim


def singular_values(w: Float[Array, "... out in"]) -> Float[Array, "... k"]:
    """Singular values in descending order, k = min(out, in)."""
    w = _matrix(w)
    return jnp.linalg.svd(w, compute_uv=False)


def frobenius_norm(w):
    """||W||_F over the last two axes."""
    w = _matrix(w)
    return jnp.sqrt(jnp.sum(w**2, axis=(-2, -1)))


def spectral_norm(w):
    """||W||_2, the largest singular value."""
    return singular_values(w)[..., 0]


def stable_rank(w: Float[Array, "... out in"]) -> Float[Array, ...]:
    """||W||_F^2 / ||W||_2^2, in [1, rank W] (the paper's main metric). NaN for W = 0."""
    s = singular_values(w)
    return jnp.sum(s**2, -1) / s[..., 0] ** 2


def spectral_frobenius_ratio(w: Float[Array, "... out in"]) -> Float[Array, ...]:
    """||W||_2 / ||W||_F = 1/sqrt(stable rank), in (0, 1]; 1 iff W has rank one."""
    s = singular_values(w)
    return s[..., 0] / jnp.sqrt(jnp.sum(s**2, -1))


def sigma_ratio(w: Float[Array, "... out in"]) -> Float[Array, ...]:
    """sigma_2 / sigma_1 (0 for a rank-one matrix). Needs min(out, in) >= 2."""
    w = _matrix(w)
    if min(w.shape[-2:]) < 2:
        raise ValueError(f"w has shape {tuple(w.shape)}; allowed: matrices with out >= 2 and "
                         "in >= 2 (sigma_ratio needs two singular values).")
    s = singular_values(w)
    return s[..., 1] / s[..., 0]


def _default_cutoff(w) -> float:
    dtype = w.dtype if jnp.issubdtype(w.dtype, jnp.inexact) else jnp.result_type(float)
    return float(max(w.shape[-2:]) * jnp.finfo(dtype).eps)


def effective_rank(w: Float[Array, "... out in"], *, cutoff: float | None = None):
    """Roy & Vetterli's effective rank exp(H(p)), p_i = s_i / sum_j s_j, in [1, rank W] (NaN for
    W = 0).

    Singular values with s_i <= cutoff * s_max are treated as exactly zero (they contribute
    nothing to the entropy). Default cutoff: max(out, in) * machine epsilon of the dtype, the
    level below which an SVD cannot resolve a singular value."""
    w = _matrix(w)
    cutoff = _default_cutoff(w) if _nonneg(cutoff, "cutoff") is None else cutoff
    s = singular_values(w)
    s = jnp.where(s > cutoff * s[..., :1], s, 0.0)
    p = s / jnp.sum(s, -1, keepdims=True)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    # NaN for W = 0, like stable_rank: no spectrum to take the entropy of.
    return jnp.where(s[..., 0] > 0, jnp.exp(-jnp.sum(plogp, -1)), jnp.nan)


def numerical_rank(w: Float[Array, "... out in"], *, tol: float | None = None):
    """Number of singular values above ``tol * s_max`` (default: the effective-rank cutoff)."""
    w = _matrix(w)
    tol = _default_cutoff(w) if _nonneg(tol, "tol") is None else tol
    s = singular_values(w)
    return jnp.sum(s > tol * s[..., :1], -1)


def end_to_end(weights: Sequence[Float[Array, "... out in"]]) -> Float[Array, "... d_out d_in"]:
    """The product W_k ... W_1 (the map of a linear net)."""
    weights = _layers(weights)
    prod = weights[0]
    for w in weights[1:]:
        prod = w @ prod
    return prod


def neuron_balance(weights: Sequence[Array]) -> list[Array]:
    """Per-neuron invariants of bias-free ReLU / linear nets under gradient flow: for hidden layer
    j (1..k-1), ||W_{j+1}[:, i]||^2 - ||W_j[i, :]||^2 for each neuron i. One array
    ``(..., width_j)`` per hidden layer; constant in time under exact GF (Du, Hu & Lee 2018)."""
    weights = _layers(weights, min_layers=2)
    return [
        jnp.sum(weights[j + 1] ** 2, axis=-2) - jnp.sum(weights[j] ** 2, axis=-1)
        for j in range(len(weights) - 1)
    ]


def layer_balance(weights: Sequence[Array]) -> Array:
    """||W_{j+1}||_F^2 - ||W_j||_F^2 for j = 1..k-1, stacked on the last axis ``(..., k-1)``."""
    weights = _layers(weights, min_layers=2)
    return jnp.stack([jnp.sum(b, -1) for b in neuron_balance(weights)], -1)


def matrix_balance(weights: Sequence[Array]) -> list[Array]:
    """Linear nets: W_{j+1}^T W_{j+1} - W_j W_j^T per hidden layer, each ``(..., h_j, h_j)``;
    constant under GF (Arora et al. 2018). Its diagonal is :func:`neuron_balance`."""
    weights = _layers(weights, min_layers=2)
    return [
        jnp.swapaxes(weights[j + 1], -1, -2) @ weights[j + 1]
        - weights[j] @ jnp.swapaxes(weights[j], -1, -2)
        for j in range(len(weights) - 1)
    ]


def balance_drift(weights: Sequence[Array], *, kind: str = "neuron", time_axis: int = -3):
    """Largest change over time of a balancedness invariant, relative to the scale of the weights.

    ``weights``: per layer ``(..., T, out, in)`` (e.g. ``Trajectory.weights``). ``kind``:
    ``"neuron"`` (per-neuron invariants), ``"layer"`` or ``"matrix"`` (linear nets). Returns, per
    leading index, max over time and over entries of |I(t) - I(0)| divided by
    max over time of sum_j ||W_j(t)||_F^2 (so 1e-12 means conserved to 12 digits). NaN save slots
    (after an early stop) are ignored."""
    if not isinstance(kind, str) or kind not in ("neuron", "layer", "matrix"):
        raise ValueError(f"kind={_brief(kind)} is not allowed; allowed: neuron, layer, "
                         "matrix.")
    weights = _layers(weights, min_layers=2, timed=True)
    ax = _time_axis(time_axis, weights[0].ndim)
    ws = [jnp.moveaxis(w, ax, -3) for w in weights]  # (..., T, out, in)
    if kind == "neuron":
        inv = neuron_balance(ws)  # (..., T, h)
    elif kind == "layer":
        inv = [layer_balance(ws)]  # (..., T, k-1)
    else:
        inv = [m.reshape(*m.shape[:-2], -1) for m in matrix_balance(ws)]
    change = jnp.stack(
        [jnp.nanmax(jnp.abs(i - i[..., :1, :]), axis=(-2, -1)) for i in inv], -1
    ).max(-1)
    scale = jnp.nanmax(sum(jnp.sum(w**2, axis=(-2, -1)) for w in ws), axis=-1)
    return change / scale


# -- activation patterns (where the ReLU flow is non-smooth) -----------------------------------


def preactivations(weights: Sequence[Array], X: Array, *, activation: str = "relu",
                   negative_slope: float = 0.01) -> list[Array]:
    """Pre-activations of every layer, ``(..., n, width_j)``, for weights ``(..., out, in)`` and
    inputs ``X`` ``(..., n, d_in)`` broadcastable against the weights' leading axes (for a
    batched trajectory ``(runs, T, out, in)`` and a batch of datasets, pass ``X[:, None]``)."""
    weights = _layers(weights)
    X = _inputs(X, weights)
    act = get_activation(activation, negative_slope)
    out = []
    h = X
    for j, w in enumerate(weights):
        z = h @ jnp.swapaxes(w, -1, -2)
        out.append(z)
        if j < len(weights) - 1:
            h = act(z)
    return out


def activation_pattern(weights: Sequence[Array], X: Array) -> list[Array]:
    """Which hidden units are active (pre-activation > 0) on which points: one boolean array
    ``(..., n, width_j)`` per hidden layer. Inside one pattern the bias-free ReLU flow is a
    smooth polynomial ODE; it is non-smooth only where the pattern changes."""
    return [z > 0 for z in preactivations(weights, X)[:-1]]


def pattern_changes(weights: Sequence[Array], X: Array, *, time_axis: int = -3) -> Array:
    """Number of (unit, point) activation flips between consecutive save times, summed over
    hidden layers and over time, per leading index. Sampled at the save times, it is a lower
    bound on the pattern changes the flow went through. NaN save slots are skipped.

    ``weights``: per layer ``(..., T, out, in)``; ``X``: ``(n, d_in)``, or ``(runs, n, d_in)``
    for a batch of datasets (no time axis: it is added here)."""
    weights = _layers(weights, timed=True)
    X = _inputs(X, weights)
    ax = _time_axis(time_axis, weights[0].ndim)
    ws = [jnp.moveaxis(w, ax, -3) for w in weights]
    total = 0
    valid = jnp.all(jnp.isfinite(ws[0]), axis=(-2, -1))  # (..., T)
    both = valid[..., 1:] & valid[..., :-1]
    for p in activation_pattern(ws, X[..., None, :, :] if X.ndim >= 2 else X):
        flips = jnp.sum(p[..., 1:, :, :] != p[..., :-1, :, :], axis=(-2, -1))
        total = total + jnp.sum(jnp.where(both, flips, 0), -1)
    return total


def kink_units(weights: Sequence[Array], X: Array, *, rtol: float = 1e-6,
               activation: str = "relu", negative_slope: float = 0.01) -> list[Array]:
    """Hidden (point, unit) pairs of a net with a kinked activation (ReLU, leaky ReLU) that sit
    on a kink: |z| <= rtol * ||w_u|| * ||h||, with w_u the unit's incoming weights and h its
    input. One boolean ``(..., n, width_j)`` per hidden layer. Pairs that stay on a kink over
    time while the flow moves are sliding."""
    weights = _layers(weights)
    X = _inputs(X, weights)
    _nonneg(rtol, "rtol")
    act = get_activation(activation, negative_slope)
    zs = preactivations(weights, X, activation=activation, negative_slope=negative_slope)
    out = []
    h = X
    for j in range(len(weights) - 1):
        h_norm = jnp.linalg.norm(h, axis=-1)[..., :, None]
        w_norm = jnp.linalg.norm(weights[j], axis=-1)[..., None, :]
        out.append(jnp.abs(zs[j]) <= rtol * h_norm * w_norm)
        h = act(zs[j])
    return out


def _sliding_of(traj):
    from .trajectory import Trajectory

    if not isinstance(traj, Trajectory):
        raise TypeError(f"traj={_brief(traj)} ({type(traj).__name__}) is not allowed; "
                        "allowed: a gfsim.Trajectory (what gfsim.simulate returns).")
    if traj.sliding is None:
        raise ValueError(
            f"this trajectory (method={traj.method!r}) has no sliding record; simulate a ReLU net "
            "with method='events' (the default for ReLU nets)."
        )
    return traj.sliding


def sliding_counts(traj) -> list[Array]:
    """How many (unit, point) pairs slide (are held on their kink by the Filippov flow) at each
    save time: one integer array ``(..., T)`` per hidden layer."""
    return [jnp.sum(s, axis=(-2, -1)) for s in _sliding_of(traj)]


def sliding_units(traj) -> list[Array]:
    """Which hidden units slide on at least one point at each save time: one boolean array
    ``(..., T, width)`` per hidden layer."""
    return [jnp.any(s, axis=-2) for s in _sliding_of(traj)]


def event_counts(traj) -> dict[str, Array]:
    """Activation-pattern changes the flow went through: ``crossings`` (a pre-activation changed
    sign), ``slides`` (sliding episodes) and their sum ``changes``, per run. Exact counts from the
    event-driven solver, unlike :func:`pattern_changes`, which samples the save times."""
    _sliding_of(traj)
    return dict(
        crossings=traj.num_crossings,
        slides=traj.num_slides,
        changes=traj.num_crossings + traj.num_slides,
    )


# -- second order (gfsim.hessian) -----------------------------------------------------------------

from .hessian import ENDPOINT_KINDS as ENDPOINT_KINDS  # noqa: E402
from .hessian import classify_endpoint as classify_endpoint  # noqa: E402
from .hessian import hessian_extremes as hessian_extremes  # noqa: E402
from .hessian import polish as polish  # noqa: E402
