"""Second-order information at given weights: the extreme eigenvalues of the loss Hessian, and
what kind of point the flow ended at.

The Hessian is never formed: Lanczos iterations with full reorthogonalisation use
Hessian-vector products (``jax.jvp`` of the gradient), so the cost is a few dozen
forward-over-reverse passes per run, batched over runs with ``vmap``. For a ReLU net the
Hessian is that of the current activation pattern (the loss is smooth inside it; JAX's
derivative of relu at 0 is 0).

Arguments are checked in plain Python before anything is traced or compiled: a ``net`` that is
not a :class:`gfsim.MLP` (a Trajectory included), ``data`` that is not a :class:`gfsim.Dataset`
or does not fit the net, NaN or inf weights (the Hessian there is undefined), an unknown loss or
reduction, a ``k`` or ``iters`` that is not an integer in range, a bad ``key`` or a tolerance
that is not a finite number > 0 is one ValueError naming the argument and what is allowed.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _check
from .data import Dataset
from .losses import LOSSES, check_reduction, loss_value
from .nets import MLP


def _flat_loss(net: MLP, data: Dataset, loss: str, reduction: str):
    params, skeleton = eqx.partition(net, eqx.is_array)
    theta, unravel = jax.flatten_util.ravel_pytree(params)

    def f(th):
        n = eqx.combine(unravel(th), skeleton)
        return loss_value(loss, reduction, n(data.X), data.Y, data.mask)

    return f, theta


def _lanczos_extremes(hvp, theta, k: int, iters: int, key):
    """The k smallest and k largest Ritz values of the symmetric operator ``hvp`` after
    ``iters`` Lanczos steps with full reorthogonalisation (exact when iters equals the
    dimension)."""
    p = theta.shape[0]
    v0 = jax.random.normal(key, (p,), theta.dtype)
    v0 = v0 / jnp.linalg.norm(v0)
    Q = jnp.zeros((iters + 1, p), theta.dtype).at[0].set(v0)
    alphas = jnp.zeros((iters,), theta.dtype)
    betas = jnp.zeros((iters,), theta.dtype)

    def step(j, c):
        Q, alphas, betas = c
        q = Q[j]
        w = hvp(q)
        a = jnp.dot(w, q)
        # full reorthogonalisation against all previous vectors (twice: Kahan's rule)
        mask = (jnp.arange(iters + 1) <= j)[:, None]
        for _ in range(2):
            w = w - (mask * Q).T @ ((mask * Q) @ w)
        b = jnp.linalg.norm(w)
        # an invariant subspace found: continue with a fresh vector orthogonal to it
        fresh = jax.random.normal(jax.random.fold_in(key, j), (p,), theta.dtype)
        for _ in range(2):
            fresh = fresh - (mask * Q).T @ ((mask * Q) @ fresh)
        tiny = b <= 1e-12 * jnp.maximum(jnp.abs(a), 1.0)
        nxt = jnp.where(tiny, fresh / jnp.linalg.norm(fresh), w / jnp.where(tiny, 1.0, b))
        return Q.at[j + 1].set(nxt), alphas.at[j].set(a), betas.at[j].set(jnp.where(tiny, 0, b))

    Q, alphas, betas = jax.lax.fori_loop(0, iters, step, (Q, alphas, betas))
    T = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    ev = jnp.linalg.eigvalsh(T)
    return ev[:k], ev[::-1][:k]


def hessian_extremes(
    net: MLP,
    data: Dataset,
    *,
    loss: str = "square",
    reduction: str = "mean",
    k: int = 1,
    iters: int | None = None,
    key=None,
) -> tuple[Float[Array, "*runs k"], Float[Array, "*runs k"]]:
    """The ``k`` smallest and ``k`` largest eigenvalues of the loss Hessian at ``net``'s
    weights, by Lanczos iterations on Hessian-vector products.

    **Arguments:**

    - ``net``, ``data``: as for :func:`gfsim.simulate` (a batch of nets and/or datasets gives a
      leading run axis; one compile for the batch). For a final state use
      ``gfsim.MLP.from_weights(traj.final_weights, net.activation)``.
    - ``loss``, ``reduction``: the loss whose Hessian is wanted (as for ``simulate``).
    - ``k``: how many eigenvalues at each end (default 1).
    - ``iters``: Lanczos steps (default ``min(p, max(4 k + 40, 64))`` for p parameters; with
      ``iters = p`` the result is exact to round-off; the extremes converge first).
    - ``key``: PRNG key of the start vector (default ``jax.random.key(0)``).

    **Returns:** ``(smallest, largest)``, each ``(..., k)``, ascending and descending.
    """
    k, iters, key = _check_arguments(net, data, loss, reduction, k, iters, key)
    return _extremes(net, data, loss, reduction, k, iters, key)


def _check_arguments(net, data, loss, reduction, k, iters, key):
    """Every argument of :func:`hessian_extremes`, in plain Python (nothing is traced or
    compiled before they pass); returns ``k``, ``iters`` and ``key`` resolved."""
    _check.net_and_data(net, data)
    _check.finite_net(net, "the Hessian at NaN or inf weights is undefined; select the finite "
                           "runs, e.g. nets[mask]")
    LOSSES.check(loss, "loss")
    check_reduction(reduction)
    p = sum(math.prod(w.shape[-2:]) for w in net.weights)
    if net.biases is not None:
        p += sum(b.shape[-1] for b in net.biases)
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or not 1 <= k <= p:
        raise ValueError(f"k={_check._line(k)} is not allowed; allowed: an integer from 1 to {p} "
                         "(the number of parameters).")
    k = int(k)
    if iters is None:
        iters = min(p, max(4 * k + 40, 64))
    if isinstance(iters, (bool, np.bool_)) or not isinstance(iters, (int, np.integer)) \
            or not k <= iters <= p:
        raise ValueError(f"iters={_check._line(iters)} is not allowed; allowed: None or an "
                         f"integer from k={k} to {p} (the number of parameters).")
    key = jax.random.key(0) if key is None else _check.prng_key(key)
    return k, int(iters), key


@eqx.filter_jit
def _extremes(net, data, loss, reduction, k, iters, key):
    def one(n, d):
        f, theta = _flat_loss(n, d, loss, reduction)
        g = jax.grad(f)
        return _lanczos_extremes(lambda v: jax.jvp(g, (theta,), (v,))[1], theta, k, iters, key)

    if net.is_batched or data.is_batched:
        one = jax.vmap(one, in_axes=(0 if net.is_batched else None,
                                     0 if data.is_batched else None))
    return one(net, data)


ENDPOINT_KINDS = ("minimum", "degenerate", "strict_saddle", "not_stationary")


def classify_endpoint(
    net: MLP,
    data: Dataset,
    *,
    loss: str = "square",
    reduction: str = "mean",
    grad_tol: float = 1e-6,
    curvature_tol: float = 1e-6,
    key=None,
) -> dict[str, np.ndarray]:
    """What kind of point the weights are, per run.

    - ``"not_stationary"``: ``||grad L|| > grad_tol`` (the flow was still moving);
    - ``"strict_saddle"``: a direction of negative curvature, ``lambda_min < -curvature_tol *
      max(1, lambda_max)``: gradient flow leaves it under any perturbation;
    - ``"minimum"``: ``lambda_min > curvature_tol * max(1, lambda_max)``: a strict local minimum;
    - ``"degenerate"``: stationary with ``|lambda_min|`` within the tolerance: flat directions
      (for positively homogeneous nets every critical point has them, from the rescaling
      symmetries; no negative curvature was found).

    **Returns:** a dict of NumPy arrays: ``kind`` (strings), ``grad_norm``, ``lambda_min``,
    ``lambda_max``.
    """
    _check.real(grad_tol, "grad_tol", lo=0.0, strict=True)
    _check.real(curvature_tol, "curvature_tol", lo=0.0, strict=True)
    _, _, key = _check_arguments(net, data, loss, reduction, 1, None, key)
    lo, hi = hessian_extremes(net, data, loss=loss, reduction=reduction, k=1, key=key)
    gn = np.asarray(_grad_norm(net, data, loss, reduction))
    lmin, lmax = np.asarray(lo[..., 0]), np.asarray(hi[..., 0])
    scale = curvature_tol * np.maximum(1.0, np.abs(lmax))
    kind = np.where(gn > grad_tol, "not_stationary",
                    np.where(lmin < -scale, "strict_saddle",
                             np.where(lmin > scale, "minimum", "degenerate")))
    return dict(kind=kind.astype(object), grad_norm=gn, lambda_min=lmin, lambda_max=lmax)


@eqx.filter_jit
def _grad_norm(net, data, loss, reduction):
    def one(n, d):
        f, theta = _flat_loss(n, d, loss, reduction)
        return jnp.linalg.norm(jax.grad(f)(theta))

    if net.is_batched or data.is_batched:
        one = jax.vmap(one, in_axes=(0 if net.is_batched else None,
                                     0 if data.is_batched else None))
    return one(net, data)
