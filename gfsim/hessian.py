"""Second-order information at given weights: the extreme eigenvalues of the loss Hessian, what
kind of point the flow ended at, and a Newton polish to the stationary point nearby.

The Hessian is never formed: Lanczos iterations with full reorthogonalisation use
Hessian-vector products (``jax.jvp`` of the gradient), so the cost is a few dozen
forward-over-reverse passes per run, batched over runs with ``vmap``. For a ReLU net the
Hessian is that of the current activation pattern (the loss is smooth inside it; JAX's
derivative of relu at 0 is 0).

Arguments are checked in plain Python before anything is traced or compiled: a ``net`` that is
not a :class:`gfsim.MLP` (a Trajectory included), ``data`` that is not a :class:`gfsim.Dataset`
or does not fit the net, NaN or inf weights (the Hessian there is undefined), an unknown loss or
reduction, a ``k``, ``iters`` or ``max_steps`` that is not an integer in range, a bad ``key`` or
a tolerance that is not a finite number > 0 is one ValueError naming the argument and what is
allowed.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
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
    p = net.num_params
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


# -- the Newton polish ----------------------------------------------------------------------------

# Up to this many parameters the Newton step is a dense least-squares solve (the Hessian formed
# from p Hessian-vector products, then its eigendecomposition); above it, matrix-free LSMR. Both
# give the minimum-norm least-squares step, which is what a singular Hessian needs (see polish).
DENSE_MAX_PARAMS = 1024
# Eigenvalues below FLAT * max|lambda| count as flat directions in the dense step. At lineax's
# default cutoff (2 eps p) an eigenvalue of round-off size is kept or dropped by chance, and a
# kept one sends the iterate along the flat manifold by g_i / lambda_i (1e-4 in a test: a
# batch and its single run polished to different points of the manifold). At 1e-10 a plateau
# run of the negative experiment (gradient 3e-10, a curvature pair of +-2.3e-10 beside
# eigenvalues near 1) was sent 0.87 away, where the quadratic model cannot hold: a direction
# that curves by less than 1e-8 of the largest curvature is left alone (the step stays local).
FLAT = 1e-8
# The Newton iteration also stops when a step is this small relative to the weights (with
# ``tol`` as its absolute part): near a flat manifold of stationary points round-off in the
# gradient keeps the iterate wandering along it without improving the gradient.
STEP_RTOL = 1e-12



def polish(
    net: MLP,
    data: Dataset,
    *,
    loss: str = "square",
    reduction: str = "mean",
    tol: float = 1e-10,
    max_steps: int = 50,
) -> tuple[MLP, dict[str, np.ndarray]]:
    """Newton's method on ``grad L = 0`` from ``net``'s weights: the stationary point nearby, per
    run. Newton goes to any stationary point, saddles included; that is its use here: a run that
    sits on a plateau polishes in a few steps to the saddle (or minimum) it is creeping past, a
    run still on its way does not converge, or moves far.

    The step is the minimum-norm least-squares solution of ``H delta = -grad L`` (an optimistix
    Newton root find with a lineax least-squares solver: the dense Hessian's eigendecomposition
    up to ``DENSE_MAX_PARAMS`` = 1024 parameters, matrix-free LSMR on Hessian-vector products
    above; the dense Hessian costs ``p`` Hessian-vector products and ``p^2`` memory per run).
    At the critical points of a positively homogeneous net the Hessian is singular (the
    rescaling symmetries ``W_j -> c W_j``, ``W_{j+1} -> W_{j+1} / c`` are flat directions); the
    least-squares step ignores them instead of dividing by zero, so the polish converges there
    too.

    For a ReLU net the polish is on the activation pattern it starts in (the loss is smooth
    inside it; JAX's derivative of relu at 0 is 0): ``pattern_changed`` says whether a step
    crossed a kink, in which case the point found is stationary for the new pattern.

    **Arguments:**

    - ``net``, ``data``: as for :func:`gfsim.simulate` (a batch of nets and/or datasets gives a
      leading run axis; one compile for the batch). For a final state use
      ``gfsim.MLP.from_weights(traj.final_weights, net.activation)``.
    - ``loss``, ``reduction``: the loss whose stationary point is wanted (as for ``simulate``).
    - ``tol``: the polish has converged when ``||grad L|| <= tol`` (default 1e-10, for float64;
      in float32 round-off stops the gradient near 1e-6 times its scale).
    - ``max_steps``: Newton steps at most (default 50).

    **Returns:** ``(polished, info)``: the net at the polished weights (a :class:`gfsim.MLP`
    like ``net``), and a dict of NumPy arrays, one value per run: ``distance``
    (``||theta_polished - theta||`` over all parameters), ``grad_norm_before``,
    ``grad_norm_after``, ``converged`` (``grad_norm_after <= tol``), ``steps`` (Newton steps
    taken) and ``pattern_changed`` (a hidden pre-activation on a data point changed sign; always
    False for a linear net). A run whose iteration blew up (non-finite weights) keeps its start
    weights, with ``distance`` NaN and ``converged`` False.
    """
    _check.net_and_data(net, data)
    _check.finite_net(net, "Newton's method needs finite start weights; select the finite "
                           "runs, e.g. nets[mask]")
    LOSSES.check(loss, "loss")
    check_reduction(reduction)
    _check.real(tol, "tol", lo=0.0, strict=True)
    max_steps = _check.integer(max_steps, "max_steps", lo=1)
    dense = net.num_params <= DENSE_MAX_PARAMS
    params, info = _polish(net, data, loss, reduction, float(tol), max_steps, dense)
    _, skeleton = eqx.partition(net, eqx.is_array)
    info = {k: np.asarray(v) for k, v in info.items()}
    return eqx.combine(params, skeleton), info


class _SymmetricPinv(lx.AbstractLinearSolver):
    """The minimum-norm least-squares solution of a symmetric system, through the
    eigendecomposition of its matrix: eigenvalues below ``FLAT * max|lambda|`` count as zero.
    It is ``lx.SVD(rcond=FLAT)`` for symmetric matrices; batched over runs on a CPU, ``eigh``
    of 64 x 64 Hessians took 0.06 s where the SVD took 2.5 s."""

    def init(self, operator, options):
        del options
        return jnp.linalg.eigh(operator.as_matrix())

    def compute(self, state, vector, options):
        del options
        lam, V = state
        cut = FLAT * jnp.max(jnp.abs(lam))
        keep = jnp.abs(lam) > cut
        inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
        x = V @ (inv * (V.T @ vector))
        return x, lx.RESULTS.successful, {"rank": keep.sum()}

    def transpose(self, state, options):
        return state, {}

    def conj(self, state, options):
        return state, {}

    def assume_full_rank(self):
        return False


def _pattern(net: MLP, data: Dataset):
    """Signs of the hidden pre-activations on the points that enter the loss."""
    point = (jnp.ones(data.X.shape[:1], bool) if data.mask is None
             else jnp.any(data.mask > 0, axis=-1))
    return [(z > 0) & point[:, None] for z in net.preactivations(data.X)[:-1]]


@eqx.filter_jit
def _polish(net, data, loss, reduction, tol, max_steps, dense):
    def one(n, d):
        f, theta = _flat_loss(n, d, loss, reduction)
        params, skeleton = eqx.partition(n, eqx.is_array)
        _, unravel = jax.flatten_util.ravel_pytree(params)
        g = jax.grad(f)
        linear = (_SymmetricPinv() if dense else
                  lx.LSMR(rtol=1e-14, atol=1e-14, max_steps=10 * theta.shape[0]))
        newton = optx.Newton(rtol=STEP_RTOL, atol=tol, norm=optx.two_norm, linear_solver=linear)
        # symmetric: LSMR applies the transpose, which is the Hessian itself
        sol = optx.root_find(lambda th, _: g(th), newton, theta, max_steps=max_steps,
                             throw=False, tags=frozenset({lx.symmetric_tag}))
        ok = jnp.all(jnp.isfinite(sol.value))
        th = jnp.where(ok, sol.value, theta)
        before, after = jnp.linalg.norm(g(theta)), jnp.linalg.norm(g(th))
        polished = eqx.combine(unravel(th), skeleton)
        changed = jnp.zeros((), bool)
        if n.activation != "linear":
            for a, b in zip(_pattern(n, d), _pattern(polished, d)):
                changed = changed | jnp.any(a != b)
        info = dict(distance=jnp.where(ok, jnp.linalg.norm(th - theta), jnp.nan),
                    grad_norm_before=before, grad_norm_after=after,
                    converged=ok & (after <= tol), steps=sol.stats["num_steps"],
                    pattern_changed=changed)
        return unravel(th), info

    if net.is_batched or data.is_batched:
        one = jax.vmap(one, in_axes=(0 if net.is_batched else None,
                                     0 if data.is_batched else None))
    return one(net, data)
