"""Fully connected networks N(x) = W_k s(W_{k-1} ... s(W_1 x)) as Equinox modules.

Bias-free by default (the setting of the paper: positively homogeneous in the parameters).
Weights are stored as ``(out, in)`` matrices; a *batch* of nets stores every matrix with a leading
run axis ``(runs, out, in)`` and is what :func:`gfsim.simulate` runs in one vmapped solve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from . import _check
from ._registry import Registry

# Activations live in gfsim.activations (re-exported here: nets.ACTIVATIONS, register_activation).
from .activations import ACTIVATIONS as ACTIVATIONS  # noqa: E402
from .activations import Activation as Activation  # noqa: E402
from .activations import get_activation  # noqa: E402
from .activations import register_activation as register_activation  # noqa: E402

# ----------------------------------------------------------------------------------------------
# Initialisations. Each takes (key, widths, scale, dtype) and returns a list of (out, in) matrices.

INITS: Registry[Callable] = Registry("init")


def register_init(name: str, fn: Callable | None = None):
    """Register ``fn(key, widths, scale, dtype) -> list of (out, in) arrays`` as
    ``MLP(..., init=name)``; usable as a decorator when ``fn`` is omitted."""
    return INITS.register(name, fn)


def _keys(key, n):
    return list(jax.random.split(key, n))


@register_init("gaussian")
def gaussian_init(key, widths, scale, dtype):
    """Entries N(0, scale^2 / fan_in): scale=1 is LeCun-normal. Default scale 1."""
    scale = 1.0 if scale is None else scale
    out = []
    for k, (fi, fo) in zip(_keys(key, len(widths) - 1), zip(widths[:-1], widths[1:])):
        out.append(scale / math.sqrt(fi) * jax.random.normal(k, (fo, fi), dtype))
    return out


@register_init("normal")
def normal_init(key, widths, scale, dtype):
    """Entries N(0, scale^2), independent of the fan-in. Default scale 1."""
    scale = 1.0 if scale is None else scale
    return [
        scale * jax.random.normal(k, (fo, fi), dtype)
        for k, (fi, fo) in zip(_keys(key, len(widths) - 1), zip(widths[:-1], widths[1:]))
    ]


@register_init("xavier")
def xavier_init(key, widths, scale, dtype):
    """Xavier/Glorot normal: entries N(0, scale^2 * 2 / (fan_in + fan_out)). Default scale 1."""
    scale = 1.0 if scale is None else scale
    return [
        scale * math.sqrt(2.0 / (fi + fo)) * jax.random.normal(k, (fo, fi), dtype)
        for k, (fi, fo) in zip(_keys(key, len(widths) - 1), zip(widths[:-1], widths[1:]))
    ]


def _orthonormal_columns(key, rows, cols, dtype):
    """A (rows, cols) matrix with orthonormal columns (rows >= cols), Haar-distributed."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (rows, cols), dtype))
    return q * jnp.sign(jnp.diagonal(r))[None, :]


@register_init("orthogonal")
def orthogonal_init(key, widths, scale, dtype):
    """scale times a Haar (semi-)orthogonal matrix per layer. Default scale 1."""
    scale = 1.0 if scale is None else scale
    out = []
    for k, (fi, fo) in zip(_keys(key, len(widths) - 1), zip(widths[:-1], widths[1:])):
        if fo >= fi:
            out.append(scale * _orthonormal_columns(k, fo, fi, dtype))
        else:
            out.append(scale * _orthonormal_columns(k, fi, fo, dtype).T)
    return out


@register_init("balanced")
def balanced_init(key, widths, scale, dtype):
    """Balanced init (Arora et al. 2018): draw an end-to-end matrix A with N(0, scale^2) entries,
    keep its top r = min(widths) singular values S, and set W_j = Q_j S^(1/k) Q_{j-1}^T with
    orthonormal Q_0 = right and Q_k = left singular vectors of A (random orthonormal Q_j in
    between). Then W_{j+1}^T W_{j+1} = W_j W_j^T exactly: every balancedness invariant starts at
    zero, and the end-to-end product is the rank-r truncation of A. Default scale 1."""
    scale = 1.0 if scale is None else scale
    k = len(widths) - 1
    r = min(widths)
    ka, *kq = _keys(key, k + 1)
    a = scale * jax.random.normal(ka, (widths[-1], widths[0]), dtype)
    u, s, vt = jnp.linalg.svd(a, full_matrices=False)
    qs = [vt[:r].T]
    for j in range(1, k):
        qs.append(_orthonormal_columns(kq[j], widths[j], r, dtype))
    qs.append(u[:, :r])
    root = s[:r] ** (1.0 / k)
    return [qs[j + 1] @ (root[:, None] * qs[j].T) for j in range(k)]


def _uniform_ball_rows(key, rows, dim, radius, dtype):
    kd, kr = jax.random.split(key)
    g = jax.random.normal(kd, (rows, dim), dtype)
    g = g / jnp.linalg.norm(g, axis=1, keepdims=True)
    rad = radius * jax.random.uniform(kr, (rows, 1), dtype) ** (1.0 / dim)
    return g * rad


@register_init("disk")
def disk_init(key, widths, scale, dtype):
    """The paper's init: rows of W_1 (and of any middle layer) uniform in the ball of radius
    ``scale`` (a disk for 2-D inputs), last layer exactly zero. Default radius 1e-4."""
    scale = 1e-4 if scale is None else scale
    keys = _keys(key, len(widths) - 1)
    out = [
        _uniform_ball_rows(k, fo, fi, scale, dtype)
        for k, (fi, fo) in zip(keys[:-1], zip(widths[:-2], widths[1:-1]))
    ]
    out.append(jnp.zeros((widths[-1], widths[-2]), dtype))
    return out


# ----------------------------------------------------------------------------------------------


def _check_widths(widths) -> tuple[int, ...]:
    allowed = "a sequence of at least two positive integers (d_in, ..., d_out)"
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
        raise ValueError(f"widths={widths!r} is not allowed; allowed: {allowed}.")
    widths = tuple(widths)
    for w in widths:
        integral = isinstance(w, (int, np.integer)) or (
            isinstance(w, (np.ndarray, jax.Array)) and w.shape == () and w.dtype.kind in "iu")
        if not integral or isinstance(w, (bool, np.bool_)):
            raise ValueError(
                f"widths={widths!r} is not allowed: {w!r} is not an integer; allowed: {allowed}.")
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or any(w < 1 for w in widths):
        raise ValueError(f"widths={widths!r} is not allowed; allowed: {allowed}.")
    return widths


def _check_layers(arrays, field: str):
    """Given weight (or bias) arrays as real JAX arrays of one floating dtype: integer and
    boolean input becomes the default float dtype; complex, string or object input raises."""
    if isinstance(arrays, (str, bytes, np.ndarray, jax.Array)) or not hasattr(arrays, "__iter__"):
        raise ValueError(
            f"{field}={_check._show(arrays)} is not allowed; allowed: a list of arrays, one per "
            "layer.")
    out = tuple(_check.real_array(a, f"{field}[{j}]") for j, a in enumerate(arrays))
    dtypes = sorted({str(a.dtype) for a in out})
    if len(dtypes) > 1:
        raise TypeError(
            f"{field} mix dtypes {dtypes}; allowed: one floating dtype for the whole net "
            "(cast them, e.g. [w.astype(jnp.float64) for w in ...]).")
    return out


class MLP(eqx.Module):
    """A fully connected network without biases (by default).

    **Arguments:**

    - ``widths``: layer sizes ``(d_in, h_1, ..., d_out)``; the depth is ``len(widths) - 1``.
    - ``activation``: ``"relu"`` (default), ``"linear"`` or ``"leaky_relu"``; the last layer is
      always linear.
    - ``key``: a JAX PRNG key.
    - ``init``: ``"gaussian"`` (default; N(0, scale^2/fan_in)), ``"normal"`` (N(0, scale^2)),
      ``"xavier"``, ``"orthogonal"``, ``"balanced"`` or ``"disk"``. See :data:`INITS`.
    - ``scale``: the init's scale (its meaning is in each init's docstring; default per init).
    - ``runs``: if given, build a batch of that many independent nets (leading run axis), each
      from its own key split off ``key``.
    - ``bias``: add zero-initialised biases to every layer (breaks positive homogeneity and the
      balancedness invariants; off by default).
    - ``negative_slope``: slope of ``"leaky_relu"`` for negative inputs (default 0.01).
    - ``dtype``: float64 when x64 is on (gfsim's default), else float32.
    """

    weights: tuple[Array, ...]
    biases: tuple[Array, ...] | None
    activation: str = eqx.field(static=True)
    negative_slope: float = eqx.field(static=True)

    def __init__(
        self,
        widths: Sequence[int] | None = None,
        activation: str = "relu",
        *,
        key: PRNGKeyArray | None = None,
        init: str = "gaussian",
        scale: float | None = None,
        runs: int | None = None,
        bias: bool = False,
        negative_slope: float = 0.01,
        dtype=None,
        weights: Sequence[Array] | None = None,
        biases: Sequence[Array] | None = None,
    ):
        ACTIVATIONS.check(activation, "activation")
        self.activation = activation
        _check.real(negative_slope, "negative_slope")
        self.negative_slope = float(negative_slope)
        if weights is not None:
            self.weights = _check_layers(weights, "weights")
            self.biases = None if biases is None else _check_layers(biases, "biases")
            return
        widths = _check_widths(widths)
        init_fn = INITS.get(init, "init")
        if key is None:
            raise ValueError("key must be a JAX PRNG key (e.g. jax.random.key(0)) to initialise.")
        _check.prng_key(key)
        if scale is not None:
            _check.real(scale, "scale", lo=0.0)
        runs = _check.integer(runs, "runs", none=True)
        if not isinstance(bias, (bool, np.bool_)):
            raise ValueError(f"bias={bias!r} is not allowed; allowed: True or False.")
        dtype = _check.float_dtype(dtype)

        def make(k):
            return tuple(init_fn(k, widths, scale, dtype))

        if runs is None:
            self.weights = make(key)
        else:
            self.weights = jax.vmap(make)(jax.random.split(key, int(runs)))
        if bias:
            lead = () if runs is None else (int(runs),)
            self.biases = tuple(jnp.zeros(lead + (w,), dtype) for w in widths[1:])
        else:
            self.biases = None

    def __check_init__(self):
        ws = self.weights
        if len(ws) < 1:
            raise ValueError("weights must hold at least one matrix.")
        if any(0 in w.shape for w in ws):
            raise ValueError(
                f"weights have shapes {[tuple(w.shape) for w in ws]}; allowed: no empty axis "
                "(every width and the run count >= 1).")
        nd = {w.ndim for w in ws}
        if nd not in ({2}, {3}):
            raise ValueError(
                "weights must all be 2-D (out, in) matrices, or all 3-D (runs, out, in) for a "
                f"batch; got ndims {[w.ndim for w in ws]}."
            )
        if nd == {3} and len({w.shape[0] for w in ws}) != 1:
            raise ValueError(f"weights: run axes differ: {[w.shape[0] for w in ws]}.")
        for j in range(1, len(ws)):
            if ws[j].shape[-1] != ws[j - 1].shape[-2]:
                raise ValueError(
                    f"weights[{j}] takes {ws[j].shape[-1]} inputs but weights[{j - 1}] gives "
                    f"{ws[j - 1].shape[-2]} outputs; shapes {[tuple(w.shape) for w in ws]}."
                )
        if self.biases is not None:
            if len(self.biases) != len(ws):
                raise ValueError("biases must have one vector per layer.")
            for j, (b, w) in enumerate(zip(self.biases, ws)):
                if b.shape != w.shape[:-1]:
                    raise ValueError(
                        f"biases[{j}] has shape {b.shape}; expected {w.shape[:-1]}."
                    )

    @classmethod
    def from_weights(
        cls,
        weights: Sequence[Float[Array, "... out in"]],
        activation: str = "relu",
        *,
        biases: Sequence[Array] | None = None,
        negative_slope: float = 0.01,
    ) -> MLP:
        """Build a net from given matrices (each ``(out, in)``, or ``(runs, out, in)`` for a
        batch). Use it for exact initial conditions."""
        return cls(
            activation=activation, weights=weights, biases=biases, negative_slope=negative_slope
        )

    # -- shape facts ---------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.weights[0].shape[-1],) + tuple(w.shape[-2] for w in self.weights)

    @property
    def runs(self) -> int | None:
        """Size of the leading run axis, or None for a single net."""
        return self.weights[0].shape[0] if self.weights[0].ndim == 3 else None

    @property
    def is_batched(self) -> bool:
        return self.runs is not None

    @property
    def num_params(self) -> int:
        """Parameters (weights and biases) of one run."""
        p = sum(math.prod(w.shape[-2:]) for w in self.weights)
        return p + sum(b.shape[-1] for b in (self.biases or ()))

    def __getitem__(self, index) -> MLP:
        """Select runs of a batch (``net[3]``, ``net[:8]``)."""
        if not self.is_batched:
            raise TypeError("Only a batch of nets (leading run axis) can be indexed.")
        index = _check.run_index(index, self.runs, "a batch of nets")
        return jax.tree_util.tree_map(lambda a: a[index], self)

    # -- evaluation ----------------------------------------------------------------------------
    @property
    def activation_fn(self) -> Activation:
        """The :class:`~gfsim.activations.Activation` (function and kink) of the hidden layers."""
        return get_activation(self.activation, self.negative_slope)

    def act(self, z):
        return self.activation_fn(z)

    def preactivations(self, x: Float[Array, "n d_in"]) -> list[Array]:
        """Pre-activations ``W_j h_{j-1} (+ b_j)`` of every layer for inputs ``x`` (n, d_in) of a
        single (unbatched) net, each ``(n, width_j)``."""
        out = []
        h = x
        for j, w in enumerate(self.weights):
            z = h @ w.T
            if self.biases is not None:
                z = z + self.biases[j]
            out.append(z)
            h = self.act(z)
        return out

    def __call__(self, x: Float[Array, "n d_in"]) -> Float[Array, "n d_out"]:
        """Outputs for inputs ``x`` of shape ``(n, d_in)`` (or ``(d_in,)``) of a single net."""
        if self.is_batched:
            raise TypeError("Call a single net; for a batch use jax.vmap or index it (net[i]).")
        single = x.ndim == 1
        x = x[None] if single else x
        y = self.preactivations(x)[-1]
        return y[0] if single else y
