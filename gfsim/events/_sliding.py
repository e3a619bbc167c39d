"""The sliding field: the gradient projected onto the tangent space of the held kinks.

While a set K of pairs is held on its kinks (z_K = 0), the Filippov field is
``F = -P grad L`` with ``P = I - J^T (J J^T)^-1 J`` and ``J = dz_K/dtheta``; the projection
coefficients ``m`` give the multipliers (the generalized slopes) ``lambda_k = left + m_k / c_k``
with ``c_k = dL/dh_k``. After a sliding step the state is put back onto {z_K = 0} by
Gauss-Newton steps along the rows of J.

The rows of J have structure, and the solve uses it:

- a FIRST-layer pair (unit u, point i) has ``z = w_u . x_i (+ b_u)``: its row is ``x_i`` (and 1)
  in unit u's own columns and zero elsewhere. Rows of different units are orthogonal, so the
  first layer's part of J J^T is block diagonal, one ``s1 x s1`` block per unit, with
  ``s1 = d_in (+1 with biases)``: more held points than that at one unit are linearly dependent
  (generic data: the unit's weights would be zero). The cost is that of a gradient plus
  ``h1 * s1^3``, whatever the number held, and a depth-2 net needs nothing else.
- a DEEPER pair's row is dense in every layer below it. These occupy ``slots`` dense rows (a
  static count, at least the number held; unused rows are zero and masked out), built by one
  backward pass each, and are solved against the first layer's blocks by elimination: with P1
  the projection off the first layer's rows, the deep rows are replaced by ``J2 P1`` and a
  ``slots x slots`` Gram solve finishes the minimum-norm solution.
"""

from __future__ import annotations

from typing import NamedTuple

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


def _jittered(G, valid):
    """Gram matrices (last two axes) with a relative jitter on the valid rows' diagonal and
    unused rows made identity rows. The jitter is 1e-13 of the largest diagonal entry, and at
    least 100 ulps (under float32 1e-13 would be none, and an inverse of a clamped pivot
    overflows); its floor: a held pair whose input has died has a zero row, and so may all."""
    tiny = jnp.finfo(G.dtype).tiny
    diag = jnp.diagonal(G, axis1=-2, axis2=-1)
    scale = jnp.maximum(jnp.max(diag, axis=-1, keepdims=True), tiny)
    rel = max(1e-13, 100.0 * float(jnp.finfo(G.dtype).eps))
    jitter = jnp.maximum(rel * scale, tiny)
    return G + jnp.where(valid, jitter, 1.0)[..., None] * jnp.eye(G.shape[-1], dtype=G.dtype)


def _cholesky_solve(G, valid, rhs):
    """G^-1 rhs over the valid rows of a Gram matrix (last two axes; Cholesky, with
    :func:`_jittered`'s jitter; unused rows are identity rows)."""
    G = _jittered(G, valid)
    # Cholesky, not LU: jaxlib's thread-pooled batched LU deadlocked at 64 slots
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(G), rhs[..., None])[..., 0]


# blocks up to this size are factorised with the loop over columns unrolled (a loop iteration
# per column rewrote the whole batch of factors; unrolled, each column is its own small array);
# larger ones in a loop; so are their inverses (:func:`_blocks_inverse`), from which each
# solve is one batched product.
_UNROLL_BLOCK = 16


def _blocks_factor(G, valid):
    """The Cholesky factors (..., s, s) of a batch of small Gram blocks, with a relative jitter
    (unused rows: identity rows), in plain array operations: no LAPACK call. (jaxlib 0.10.2's
    thread-pooled batched LAPACK kernels deadlocked on LU before; a batch of many tiny
    Cholesky factorisations, one per unit and lane, coincided with worker segfaults in the
    test suite.)"""
    s = G.shape[-1]
    G = _jittered(G, valid)
    rows = jnp.arange(s)
    tiny = jnp.finfo(G.dtype).tiny
    if s <= _UNROLL_BLOCK:
        cols = []  # column j of L, entries i >= j (zero above)
        for j in range(s):
            v = G[..., :, j]
            for c in cols:
                v = v - c * c[..., j:j + 1]
            d = jnp.sqrt(jnp.maximum(v[..., j], tiny))
            cols.append(jnp.where(rows >= j, v / d[..., None], 0.0))
        return jnp.stack(cols, axis=-1)

    def column(j, L):  # the j-th column of the Cholesky factor L (G = L L^T)
        Lj = jnp.where(rows < j, jnp.take(L, j, axis=-2), 0.0)  # row j of L, k < j
        v = jnp.take(G, j, axis=-1) - jnp.einsum("...ik,...k->...i", L, Lj)
        d = jnp.sqrt(jnp.maximum(jnp.take(v, j, axis=-1), tiny))
        col = jnp.where(rows >= j, v / d[..., None], 0.0)
        return jnp.where(rows[None, :] == j, col[..., :, None], L)

    return jax.lax.fori_loop(0, s, column, jnp.zeros_like(G))


def _blocks_apply(L, rhs):
    """G^-1 rhs for a batch of blocks G = L L^T (factors from :func:`_blocks_factor`)."""
    s = L.shape[-1]
    Ld = jnp.diagonal(L, axis1=-2, axis2=-1)
    rows = jnp.arange(s)

    def forward(i, y):  # L y = rhs
        acc = jnp.einsum("...k,...k->...", jnp.take(L, i, axis=-2), y)
        yi = (jnp.take(rhs, i, axis=-1) - acc) / jnp.take(Ld, i, axis=-1)
        return jnp.where(rows == i, yi[..., None], y)

    def backward(k, x):  # L^T x = y, from the last row up
        i = s - 1 - k
        acc = jnp.einsum("...k,...k->...", jnp.take(L, i, axis=-1), x)
        xi = (jnp.take(y, i, axis=-1) - acc) / jnp.take(Ld, i, axis=-1)
        return jnp.where(rows == i, xi[..., None], x)

    y = jax.lax.fori_loop(0, s, forward, jnp.zeros_like(rhs))
    return jax.lax.fori_loop(0, s, backward, jnp.zeros_like(rhs))


def _blocks_inverse(L):
    """G^-1 = L^-T L^-1 for a batch of blocks G = L L^T (factors from :func:`_blocks_factor`):
    L^-1 by forward substitution on the identity, unrolled up to ``_UNROLL_BLOCK`` rows."""
    s = L.shape[-1]
    if s > _UNROLL_BLOCK:
        eye = jnp.broadcast_to(jnp.eye(s, dtype=L.dtype), L.shape)
        # (row j of the solves against e_j: G^-1 is symmetric)
        return _blocks_apply(jnp.broadcast_to(L[..., None, :, :], L.shape[:-1] + (s, s)), eye)
    eye = jnp.eye(s, dtype=L.dtype)
    rows = []  # the rows of L^-1
    for i in range(s):
        v = eye[i] + jnp.zeros(L.shape[:-1], L.dtype)
        for k, r in enumerate(rows):
            v = v - L[..., i, k:k + 1] * r
        rows.append(v / L[..., i, i:i + 1])
    Linv = jnp.stack(rows, axis=-2)
    return jnp.einsum("...ki,...kj->...ij", Linv, Linv)


def solve_gram(J: Float[Array, "K p"], valid: Bool[Array, " K"], rhs):
    """(J J^T)^-1 rhs over the valid rows."""
    return _cholesky_solve(J @ J.T, valid, rhs)


class FirstRows(NamedTuple):
    """The first layer's part of the held rows of one run: it depends on the data and the held
    set only (not on the weights), so a step, a search or a projection builds it once for all
    its field evaluations (:func:`first_rows`). Per first-layer unit: the points held
    (``pts``, s1 slots, ``valid1`` in use), their inputs ``Xs``, the flat pair indices, the
    Gram blocks and their inverses (from their Cholesky factors, once per held set: each
    solve is then one batched product, where two triangular solves, loops of s1 steps each,
    cost every field evaluation about a tenth of a sliding iteration's time on W-E)."""

    pts: Array
    valid1: Array
    pair1: Array
    Xs: Array
    G1: Array
    G1inv: Array


def first_rows(model: FrozenPattern, data, held) -> FirstRows:
    """The :class:`FirstRows` of the held set ``held``."""
    n, h1 = data.X.shape[0], model.hidden[0]
    H = held.reshape(n, model.hsum)
    s1 = model.first_block
    counts = jnp.sum(H[:, :h1], axis=0)
    pts = jax.vmap(lambda col: jnp.nonzero(col, size=s1, fill_value=0)[0])(H[:, :h1].T)
    valid1 = jnp.arange(s1)[None, :] < counts[:, None]  # (h1, s1)
    pair1 = pts * model.hsum + jnp.arange(h1)[:, None]  # flat pair indices
    Xs = jnp.where(valid1[..., None], data.X[pts], 0.0)  # (h1, s1, d)
    G1 = jnp.einsum("ukd,uld->ukl", Xs, Xs)
    if model.has_bias:
        G1 = G1 + (valid1[:, :, None] & valid1[:, None, :])
    return FirstRows(pts, valid1, pair1, Xs, G1, _blocks_inverse(_blocks_factor(G1, valid1)))


class HeldRows:
    """The rows of J for the held pairs of one run, in the two structured parts above, with the
    minimum-norm solve of ``J delta = r``. ``first``: the held set's :class:`FirstRows`
    (None: built here). ``deep`` False: the first layer's rows only (a held set with no pair
    below the first hidden layer: the deep rows would all be unused)."""

    def __init__(self, model: FrozenPattern, data, theta, D, held, slots: int, first=None,
                 deep: bool = True):
        self.model, self.theta = model, theta
        self.model_pairs = held.shape[0]
        n, h1 = D.shape[0], model.hidden[0]
        H = held.reshape(n, model.hsum)
        first = first_rows(model, data, held) if first is None else first
        self.pts, self.valid1, self.pair1 = first.pts, first.valid1, first.pair1
        self.Xs, self.G1, self.G1inv = first.Xs, first.G1, first.G1inv
        # deeper layers: dense rows
        self.deep = deep and len(model.hidden) > 1 and slots > 0
        if self.deep:
            deep_held = H.at[:, :h1].set(False).reshape(-1)
            self.idx2, self.valid2 = held_slots(deep_held, slots)
            self.J2 = model.jac_rows(theta, data, D, self.idx2, self.valid2)
            self.J2h = jax.vmap(self.p1)(self.J2)  # J2 P1 (P1 is symmetric)

    # the first layer's rows as a linear map theta -> (h1, s1), its transpose and its solve
    def a1(self, v):
        ws, bs = self.model.layers(v)
        out = jnp.einsum("ukd,ud->uk", self.Xs, ws[0])
        if bs is not None:
            out = out + bs[0][:, None]
        return jnp.where(self.valid1, out, 0.0)

    def a1t(self, m1):
        return jax.linear_transpose(self.a1, self.theta)(m1)[0]

    def solve1(self, r1):
        return jnp.einsum("ukl,ul->uk", self.G1inv, jnp.where(self.valid1, r1, 0.0))

    def p1(self, v):
        """v with its component along the first layer's held rows removed."""
        return v - self.a1t(self.solve1(self.a1(v)))

    def apply(self, v):
        """J v: the first layer's (h1, s1) values and the deep rows' (slots,)."""
        return self.a1(v), (self.J2 @ v if self.deep else None)

    def min_norm(self, r1, r2):
        """The minimum-norm ``delta`` with ``J delta = r`` and its coefficients ``m`` (``delta =
        J^T m``) as a flat (P,) vector over the pairs (zero off the held ones)."""
        m1 = self.solve1(r1)
        d1 = self.a1t(m1)
        P = self.model_pairs
        if not self.deep:
            return d1, self._scatter(m1, None, P)
        q = jnp.where(self.valid2, r2 - self.J2 @ d1, 0.0)
        m2 = solve_gram(self.J2h, self.valid2, q)
        m2 = jnp.where(self.valid2, m2, 0.0)
        delta = d1 + self.J2h.T @ m2
        m1 = self.solve1(r1 - self.a1(self.J2.T @ m2))
        return delta, self._scatter(m1, m2, P)

    def _scatter(self, m1, m2, P):
        out = jnp.zeros(P, self.theta.dtype).at[self.pair1.reshape(-1)].add(
            jnp.where(self.valid1, m1, 0.0).reshape(-1))
        if m2 is not None:
            out = out.at[self.idx2].add(jnp.where(self.valid2, m2, 0.0))
        return out


def overflow(model: FrozenPattern, held: Bool[Array, "*B P"], slots: int) -> Bool[Array, "*B"]:
    """Whether a held set does not fit: more than ``s1`` points held at one first-layer unit
    (degenerate data only), or more deeper pairs than ``slots``."""
    H = held.reshape(held.shape[:-1] + (-1, model.hsum))
    h1 = model.hidden[0]
    over = jnp.any(jnp.sum(H[..., :h1], axis=-2) > model.first_block, axis=-1)
    if len(model.hidden) > 1:
        over = over | (jnp.sum(H[..., h1:], axis=(-2, -1)) > slots)
    return over


def deep_held(model: FrozenPattern, held: Bool[Array, "*B P"]) -> Bool[Array, "*B"]:
    """Whether a held set holds a pair below the first hidden layer. Without one the sliding
    manifold {z_K = 0} is affine (a first-layer pair's z is linear in its unit's row) and the
    projection P a constant: the sliding field -P grad L has the Jacobian -P H, symmetric on
    the tangent space, which the implicit steps' conjugate gradients need."""
    if len(model.hidden) == 1:
        return jnp.zeros(held.shape[:-1], bool)
    H = held.reshape(held.shape[:-1] + (-1, model.hsum))
    return jnp.any(H[..., model.hidden[0]:], axis=(-2, -1))


def field(model: FrozenPattern, data, theta, on, held, slots: int, grad_fn=None, first=None,
          deep: bool = True):
    """The (possibly sliding) field at ``theta`` and the multipliers lambda of the held pairs
    (``(P,)``, zero for free pairs; None without projection).

    ``slots``: 0 for the plain frozen-pattern field -grad L, else the projection is made, with
    that many dense rows for held pairs below the first hidden layer (static, at least the
    number held there; the first layer's held pairs need none). ``grad_fn``:
    ``model.grad_and_c`` (default) or ``model.grad_and_c_aux``, whose extra outputs (z, scales)
    are returned too. ``first``: the held set's :class:`FirstRows` (None: built here).
    ``deep`` False: a held set known to hold no deeper pair (:func:`deep_held`), projected off
    the first layer's rows alone."""
    grad_fn = grad_fn or model.grad_and_c
    D = model.slopes(on, held)
    g, c, *aux = grad_fn(theta, data, D)
    F = -g
    if not slots:
        return (F, None, *aux)
    rows = HeldRows(model, data, theta, D, held, slots, first, deep)
    delta, mcoef = rows.min_norm(*rows.apply(F))
    F = F - delta
    tiny = jnp.finfo(F.dtype).tiny

    def lam_of(c):
        return jnp.where(held, model.left + mcoef * c / (c * c + tiny), 0.0)

    # m_k = (lambda_k - left) c_k(lambda), with c_k(lambda) = dL/dh_k when the held pairs
    # DOWNSTREAM of k at the same point have their slopes lambda (a path through several held
    # pairs carries the product of their lambdas). One backward pass per hidden layer below the
    # last makes it exact, layer by layer from the output.
    lam = lam_of(c)
    for _ in range(len(model.hidden) - 1):
        D_lam = jnp.where(held, lam, D.reshape(-1)).reshape(D.shape)
        lam = lam_of(model.grad_and_c(theta, data, D_lam)[1])
    return (F, lam, *aux)


def project(model: FrozenPattern, data, theta, on, held, slots: int, first=None):
    """``theta`` moved back onto {z_K = 0} (two Gauss-Newton steps along the rows of J). The
    rows of J are orthogonal to the per-neuron rescalings, so balancedness moves only at second
    order."""
    D = model.slopes(on, held)
    first = first_rows(model, data, held) if first is None else first
    for _ in range(2):
        z = model.zflat(theta, data, D)
        rows = HeldRows(model, data, theta, D, held, slots, first)
        r1 = jnp.where(rows.valid1, z[rows.pair1], 0.0)
        r2 = jnp.where(rows.valid2, z[rows.idx2], 0.0) if rows.deep else None
        theta = theta - rows.min_norm(r1, r2)[0]
    return theta
