"""Spectra, rank measures and conserved quantities of layers along a trajectory.

Every function broadcasts over leading axes: a weight array of shape ``(..., out, in)`` (e.g.
``(runs, T, out, in)`` from a batched :class:`gfsim.Trajectory`) gives results of shape ``(...)``
(or ``(..., k)`` for spectra).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jaxtyping import Array, Float

from .activations import get_activation


def singular_values(w: Float[Array, "... out in"]) -> Float[Array, "... k"]:
    """Singular values in descending order, k = min(out, in)."""
    return jnp.linalg.svd(w, compute_uv=False)


def frobenius_norm(w):
    return jnp.sqrt(jnp.sum(w**2, axis=(-2, -1)))


def spectral_norm(w):
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
    s = singular_values(w)
    if s.shape[-1] < 2:
        raise ValueError("sigma_ratio needs a matrix with at least two singular values.")
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
    cutoff = _default_cutoff(w) if cutoff is None else cutoff
    s = singular_values(w)
    s = jnp.where(s > cutoff * s[..., :1], s, 0.0)
    p = s / jnp.sum(s, -1, keepdims=True)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    # NaN for W = 0, like stable_rank: no spectrum to take the entropy of.
    return jnp.where(s[..., 0] > 0, jnp.exp(-jnp.sum(plogp, -1)), jnp.nan)


def numerical_rank(w: Float[Array, "... out in"], *, tol: float | None = None):
    """Number of singular values above ``tol * s_max`` (default: the effective-rank cutoff)."""
    tol = _default_cutoff(w) if tol is None else tol
    s = singular_values(w)
    return jnp.sum(s > tol * s[..., :1], -1)


def end_to_end(weights: Sequence[Float[Array, "... out in"]]) -> Float[Array, "... d_out d_in"]:
    """The product W_k ... W_1 (the map of a linear net)."""
    prod = weights[0]
    for w in weights[1:]:
        prod = w @ prod
    return prod


def neuron_balance(weights: Sequence[Array]) -> list[Array]:
    """Per-neuron invariants of bias-free ReLU / linear nets under gradient flow: for hidden layer
    j (1..k-1), ||W_{j+1}[:, i]||^2 - ||W_j[i, :]||^2 for each neuron i. One array
    ``(..., width_j)`` per hidden layer; constant in time under exact GF (Du, Hu & Lee 2018)."""
    return [
        jnp.sum(weights[j + 1] ** 2, axis=-2) - jnp.sum(weights[j] ** 2, axis=-1)
        for j in range(len(weights) - 1)
    ]


def layer_balance(weights: Sequence[Array]) -> Array:
    """||W_{j+1}||_F^2 - ||W_j||_F^2 for j = 1..k-1, stacked on the last axis ``(..., k-1)``."""
    return jnp.stack([jnp.sum(b, -1) for b in neuron_balance(weights)], -1)


def matrix_balance(weights: Sequence[Array]) -> list[Array]:
    """Linear nets: W_{j+1}^T W_{j+1} - W_j W_j^T per hidden layer, each ``(..., h_j, h_j)``;
    constant under GF (Arora et al. 2018). Its diagonal is :func:`neuron_balance`."""
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
    if kind not in ("neuron", "layer", "matrix"):
        raise ValueError(f"kind={kind!r}; allowed: neuron, layer, matrix.")
    ax = time_axis % weights[0].ndim
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
    ax = time_axis % weights[0].ndim
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
