"""The sliding field: the gradient projected onto the tangent space of the held kinks.

While a set K of pairs is held on its kinks (z_K = 0), the Filippov field is
``F = -P grad L`` with ``P = I - J^T (J J^T)^-1 J`` and ``J = dz_K/dtheta``; the projection
coefficients ``m`` give the multipliers (the generalized slopes) ``lambda_k = left + m_k / c_k``
with ``c_k = dL/dh_k``. After a sliding step the state is put back onto {z_K = 0} by
Gauss-Newton steps along the rows of J.

Held pairs occupy ``slots`` rows (a static count, at least the number held); unused rows are
zero and masked out of the Gram solve.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg
from jaxtyping import Array, Bool, Float, Int

from ._model import FrozenPattern


def held_slots(held: Bool[Array, " P"], slots: int) -> tuple[Int[Array, " K"], Bool[Array, " K"]]:
    """The indices of the held pairs in ``slots`` rows, and which rows are in use."""
    (idx,) = jnp.nonzero(held, size=slots, fill_value=0)
    valid = jnp.arange(slots) < jnp.sum(held)
    return idx, valid


def solve_gram(J: Float[Array, "K p"], valid: Bool[Array, " K"], rhs):
    """(J J^T)^-1 rhs over the valid rows (Cholesky, with a relative jitter; unused rows are
    identity rows)."""
    G = J @ J.T
    scale = jnp.maximum(jnp.max(jnp.diag(G)), jnp.finfo(J.dtype).tiny)
    # (the floor: a held pair whose input has died has a zero row, and so may all of them)
    jitter = jnp.maximum(1e-13 * scale, jnp.finfo(J.dtype).tiny)
    G = G + jnp.diag(jnp.where(valid, jitter, 1.0))
    # Cholesky, not LU: jaxlib's thread-pooled batched LU deadlocked at 64 slots
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(G), rhs)


def field(model: FrozenPattern, data, theta, on, held, slots: int, grad_fn=None):
    """The (possibly sliding) field at ``theta`` and the multipliers lambda of the held pairs
    (``(P,)``, zero for free pairs; None without projection).

    ``slots``: 0 for the plain frozen-pattern field -grad L, else the number of rows for held
    pairs (static, at least the number held). ``grad_fn``: ``model.grad_and_c`` (default) or
    ``model.grad_and_c_aux``, whose extra outputs (z, scales) are returned too."""
    grad_fn = grad_fn or model.grad_and_c
    D = model.slopes(on, held)
    g, c, *aux = grad_fn(theta, data, D)
    F = -g
    if not slots:
        return (F, None, *aux)
    idx, valid = held_slots(held, slots)
    J = model.jac_rows(theta, data, D, idx, valid)
    mcoef = solve_gram(J, valid, J @ F)
    F = F - J.T @ mcoef
    tiny = jnp.finfo(F.dtype).tiny

    def lam_of(c):
        ck = c[idx]
        lam = model.left + mcoef * ck / (ck * ck + tiny)
        return jnp.zeros(held.shape, F.dtype).at[idx].add(jnp.where(valid, lam, 0.0))

    # m_k = (lambda_k - left) c_k(lambda), with c_k(lambda) = dL/dh_k when the held pairs
    # DOWNSTREAM of k at the same point have their slopes lambda (a path through several held
    # pairs carries the product of their lambdas). One backward pass per hidden layer below the
    # last makes it exact, layer by layer from the output.
    lam = lam_of(c)
    for _ in range(len(model.hidden) - 1):
        D_lam = jnp.where(held, lam, D.reshape(-1)).reshape(D.shape)
        lam = lam_of(model.grad_and_c(theta, data, D_lam)[1])
    return (F, lam, *aux)


def project(model: FrozenPattern, data, theta, on, held, slots: int):
    """``theta`` moved back onto {z_K = 0} (two Gauss-Newton steps along the rows of J). The
    rows of J are orthogonal to the per-neuron rescalings, so balancedness moves only at second
    order."""
    D = model.slopes(on, held)
    idx, valid = held_slots(held, slots)
    for _ in range(2):
        z = model.zflat(theta, data, D)[idx]
        J = model.jac_rows(theta, data, D, idx, valid)
        theta = theta - J.T @ solve_gram(J, valid, jnp.where(valid, z, 0.0))
    return theta
