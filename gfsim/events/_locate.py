"""Event location on a step's dense output: the first root, as a fraction tau of the step.

The functions triggered at the step's end are searched first (Illinois on the minimum of the
triggered functions along the dense output). A function that is negative at the point found
dipped below zero and back inside the step (unseen at the step's end), so its root comes first:
it joins the triggered set and the search reruns on [0, tau], at most ``_RELOCATE_ROUNDS``
times. (Cut at the later root, the pair would sit on the wrong side of its kink with the pattern
unchanged, and the frozen-pattern field would no longer be the gradient.)
"""

from __future__ import annotations

import equinox.internal as eqxi
import jax
import jax.numpy as jnp

from . import _functions, _sliding

_ILLINOIS_ITERS = 30
# Reruns of the event search when a function that was not triggered at the step's end is
# negative at the root found (it dipped below zero and back inside the step).
_RELOCATE_ROUNDS = 3
_TAU_TOL = 1e-14  # event location: bracket width, as a fraction of the step
_F_TOL = 1e-12  # ... or |event| at the returned point, relative to its value at the step's end


def illinois(phi, fa, bmax, fb, aux_b, a0=None):
    """The first root of a scalar function on [a0, bmax] (``a0`` None: 0) with ``fa =
    phi(a0) >= 0 > fb = phi(bmax)``: the Illinois variant of regula falsi, until the bracket
    is ``_TAU_TOL`` wide or the function at its right end is within ``_F_TOL * |fb|`` of
    zero, at most ``_ILLINOIS_ITERS`` iterations (a bounded loop: reverse mode goes through it).

    ``phi(tau) -> (value, aux)``: whatever else the evaluation computes (the event values) is
    carried along for the bracket's right end, so the caller needs no evaluation there:
    ``aux_b`` is it at ``bmax``. Returns the right end (where the function has fired; a0 if
    ``fa < 0``) and its aux. A non-finite ``fa`` or ``fb`` (no function triggered) falls back
    to bisection without producing NaN."""
    dtype = jnp.result_type(bmax)

    def it(c):
        a, b, fa, fb, side, fbt, aux = c
        # secant point; in a run with no triggered event fa, fb are not finite, and the
        # masked-out division must stay finite too (its derivative would turn the run's gradient
        # into NaN: 0 * NaN)
        den = fb - fa
        fine = jnp.isfinite(fa) & jnp.isfinite(fb) & (den != 0)
        x = (a * jnp.where(fine, fb, 1.0) - b * jnp.where(fine, fa, 0.0)) / jnp.where(
            fine, den, 1.0
        )
        x = jnp.where(fine & (x > a) & (x < b), x, 0.5 * (a + b))
        fx, aux_x = phi(x)
        neg = fx < 0
        # Illinois: halve the retained end's value when the same end stays twice
        fa2 = jnp.where(neg, jnp.where(side == 1, fa * 0.5, fa), fx)
        fb2 = jnp.where(neg, fx, jnp.where(side == -1, fb * 0.5, fb))
        a2 = jnp.where(neg, a, x)
        b2 = jnp.where(neg, x, b)
        side2 = jnp.where(neg, 1, -1)
        aux2 = jax.tree_util.tree_map(lambda u, v: jnp.where(neg, u, v), aux_x, aux)
        return a2, b2, fa2, fb2, side2, jnp.where(neg, fx, fbt), aux2

    a0 = jnp.zeros((), dtype) if a0 is None else jnp.asarray(a0, dtype)
    start = (a0, bmax, fa, fb, jnp.zeros((), int), fb, aux_b)
    ftol = _F_TOL * jnp.abs(fb)
    a, b, *_, aux = eqxi.while_loop(
        lambda c: (c[1] - c[0] > _TAU_TOL) & (-c[5] > ftol),
        it,
        start,
        max_steps=_ILLINOIS_ITERS,
        kind="bounded",
    )
    return jnp.where(fa < 0, a0, b), aux


def first_root(model, data, interp, on, held, triggered, start_values, end_values, offsets,
               slots: int):
    """Locate the first event of one run's step.

    ``interp(tau)``: the state on the dense output at the fraction tau of the step;
    ``triggered``: the functions found fired at the step's end; ``start_values``,
    ``end_values``: the event values (with offsets) at the step's start and end. Returns tau,
    the functions that fire by then, and the event values (with offsets) at tau under
    ``slots`` (without a projection the release functions are +inf). The event values are
    evaluated inside the root search only: the search carries them for its bracket's end."""
    P = on.shape[0]
    if not slots:
        end_values = end_values.at[P:].set(jnp.inf)

    # (the held rows' first-layer part, once for the whole search)
    first = _sliding.first_rows(model, data, held) if slots else None

    def values_at(tau):
        return _functions.values(model, data, interp(tau), on, held, slots, first) + offsets

    def search(trig, bmax, e_bmax):
        def phi(tau):
            e = values_at(tau)
            return jnp.min(jnp.where(trig, e, jnp.inf)), e

        fa = jnp.min(jnp.where(trig, start_values, jnp.inf))
        fa = jnp.where(jnp.isfinite(fa), fa, 0.0)
        fb = jnp.min(jnp.where(trig, e_bmax, jnp.inf))
        b, e_b = illinois(phi, fa, bmax, fb, e_bmax)
        return b, jnp.where(fa < 0, start_values, e_b)

    dtype = start_values.dtype

    def round_(c):
        tau, trig, pending, r, e = c
        tau_new, e_new = search(trig, tau, e)
        tau = jnp.where(pending, tau_new, tau)
        e = jnp.where(pending, e_new, e)
        extra = pending & ~trig & (e < 0) & (e < start_values)
        return tau, trig | extra, jnp.any(extra), r + 1, e

    tau, trig, _, _, e = eqxi.while_loop(
        lambda c: c[2] & (c[3] <= _RELOCATE_ROUNDS),
        round_,
        (jnp.ones((), dtype), triggered, jnp.any(triggered), jnp.zeros((), jnp.int32),
         end_values),
        max_steps=_RELOCATE_ROUNDS + 1,
        kind="bounded",
    )
    return tau, trig, e


# -- the search on nodes: every pair's crossing function as a polynomial in tau ---------------
#
# On a step's dense output theta(tau) is a polynomial of the dense output's degree q in tau, so a
# hidden layer j's pre-activations (pattern frozen) are polynomials of degree q j: the values at
# q * depth + 1 Chebyshev-Lobatto nodes determine every pair's crossing function on the whole
# step. One batched forward pass at the nodes replaces the search's forward pass per iteration;
# the root search itself runs on the polynomials of a few candidate pairs.

# the degree in tau of the dense output of the solvers whose degree is known (each checked in
# tests/test_events_parts.py against a fit of the solver's own interpolation)
_DENSE_DEGREE = (("Tsit5", 4), ("Dopri5", 4), ("Dopri8", 6), ("Bosh3", 3))
# more nodes than this (deep nets): the search on the net itself (:func:`first_root`)
MAX_NODES = 17
# fewer points than this: the search on the net itself (its passes cost little there, and the
# search on nodes compiles a second search, for the rounds that leave pairs unexplained)
MIN_POINTS = 64
# pairs whose polynomial roots are searched per round (the earliest by a linear estimate, at
# most one per point)
CANDIDATES = 8


def dense_degree(solver) -> int | None:
    """The degree in tau of ``solver``'s dense output, None where not known."""
    import diffrax

    for name, q in _DENSE_DEGREE:
        if type(solver) is getattr(diffrax, name):
            return q
    return None


def node_count(model, solver, points: int) -> int | None:
    """The number of nodes that determine every crossing function on a step of ``solver``
    (None: the search on nodes is not used: too many nodes, an unknown dense output, or fewer
    than ``MIN_POINTS`` points)."""
    q = dense_degree(solver)
    if q is None or points < MIN_POINTS:
        return None
    K = q * len(model.hidden) + 1
    return K if K <= MAX_NODES else None


def lobatto(K: int, dtype):
    """The K Chebyshev-Lobatto nodes on [0, 1] and their barycentric weights."""
    k = jnp.arange(K)
    nodes = (0.5 * (1.0 - jnp.cos(jnp.pi * k / (K - 1)))).astype(dtype)
    w = jnp.where(k % 2 == 0, 1.0, -1.0) * jnp.where((k == 0) | (k == K - 1), 0.5, 1.0)
    return nodes, w.astype(dtype)


def barycentric(nodes, weights, values, x):
    """The polynomial through (nodes, values) at x (barycentric form; exact at the nodes)."""
    d = x - nodes
    hit = d == 0
    q = weights / jnp.where(hit, 1.0, d)
    p = jnp.sum(q * values) / jnp.sum(q)
    return jnp.where(jnp.any(hit), jnp.sum(jnp.where(hit, values, 0.0)), p)


def _pick(rows, k):
    """``rows[k]`` for an index array ``k`` (over the first axis, K entries, each broadcast
    against ``k``; unrolled selects: a gather or an arg-max over the P pairs is a slow
    reduction on the CPU)."""
    out = jnp.zeros(k.shape, rows.dtype)
    for j in range(rows.shape[0]):
        out = jnp.where(k == j, rows[j], out)
    return out


def first_root_nodes(model, data, interp, on, held, triggered, start_values, end_values,
                     offsets, K: int, candidates: int = CANDIDATES):
    """:func:`first_root` without the release functions (``slots = 0``), on the crossing
    functions' polynomials: their values at K nodes (one batched forward pass at the K - 2 inner
    ones; the step's ends are known) give every free pair's first negative node and a linear
    estimate of its root there; at the ``candidates`` points whose earliest estimate comes
    first, that pair's root is found on its polynomial, and the first of those is checked with
    one evaluation at all pairs. A pair negative there (a second one at the same point, more
    than ``candidates`` points, or a dip between two nodes) starts another round with the root
    found as its bound, at most ``_RELOCATE_ROUNDS`` times. Returns tau, the functions that
    fire by then, the event values at tau and whether pairs negative at tau remained after the
    last round (then the result is not to be used: search with :func:`first_root`)."""
    P = on.shape[0]
    hs = model.hsum
    n = P // hs
    Q = min(candidates, n)
    dtype = start_values.dtype
    end_values = end_values.at[P:].set(jnp.inf)
    free = ~held
    start, off = start_values[:P], offsets[:P]
    live = jnp.any(triggered)  # (a lane without an event searches nothing)
    nodes, weights = lobatto(K, dtype)
    inner = jax.vmap(lambda tau: _functions.crossing(model, data, interp(tau), on, held))(
        nodes[1:-1]) + off
    V = jnp.concatenate([start[None], inner, end_values[None, :P]])  # (K, P)
    V = jnp.where(free, V, 1.0)  # (held pairs: finite, never searched)
    # each pair's first node where it has fired (K: none)
    first = jnp.full(P, K)
    for k in range(K - 1, 0, -1):
        first = jnp.where((V[k] < 0) & (V[k] < start), k, first)

    def bracket(Vr, first_r, ok_r, below, bound, fbound_r):
        """Per pair: its bracket [a, b] (its first negative interval, or [the last node below
        bound, bound] without a negative node before bound; ``fbound_r``: the values at
        bound), fa there and a linear estimate of its root (inf where not ``ok_r``)."""
        inside = first_r <= below
        lo = jnp.where(inside, first_r - 1, below)
        hi = jnp.minimum(first_r, K - 1)
        fa = _pick(Vr, lo)
        fb = jnp.where(inside, _pick(Vr, hi), fbound_r)
        a = _pick(nodes, lo)
        b = jnp.where(inside, _pick(nodes, hi), bound)
        frac = jnp.clip(fa / jnp.where(fa - fb > 0, fa - fb, 1.0), 0.0, 1.0)
        return jnp.where(ok_r, a + (b - a) * frac, jnp.inf), a, b, fa

    def search(cand, bound, fbound):
        """The first root among the pairs ``cand`` on [0, bound] (each is negative at bound
        or has a negative node before it; ``fbound``: every pair's value at bound). Returns
        it and the roots found, at the pairs ``idx``."""
        below = jnp.sum(nodes < bound) - 1  # the last node below bound
        ok = cand & free
        est = bracket(V, first, ok, below, bound, fbound)[0]
        _, pts = jax.lax.top_k(-jnp.min(est.reshape(n, hs), axis=1), Q)
        # the Q points' pairs alone from here
        Vq = V.reshape(K, n, hs)[:, pts]
        est_q, a_q, b_q, fa_q = bracket(Vq, first.reshape(n, hs)[pts],
                                        ok.reshape(n, hs)[pts], below, bound,
                                        fbound.reshape(n, hs)[pts])
        unit = jnp.argmin(est_q, axis=1)
        one = lambda x: jnp.take_along_axis(x, unit[:, None], 1)[:, 0]  # noqa: E731
        valid = jnp.isfinite(one(est_q))
        vals = jnp.take_along_axis(Vq, unit[None, :, None], 2)[:, :, 0].T  # (Q, K)

        def root(vals, s_, a_, b_, fa_):
            fb_ = barycentric(nodes, weights, vals, b_)
            phi = lambda x: (barycentric(nodes, weights, vals, x), jnp.zeros((), dtype))  # noqa: E731
            r, _ = illinois(phi, fa_, b_, jnp.minimum(fb_, 0.0), jnp.zeros((), dtype), a0=a_)
            # a pair already below zero at the step's start fires at once (as in first_root);
            # one the polynomial puts a rounding error above zero at its bound, there
            r = jnp.where(fb_ >= 0, b_, r)
            return jnp.where(s_ < 0, 0.0, r)

        idx = pts * hs + unit
        roots = jax.vmap(root)(vals, start[idx], one(a_q), one(b_q), one(fa_q))
        roots = jnp.where(valid, roots, jnp.inf)
        return jnp.minimum(jnp.min(roots), bound), idx, roots

    def round_(c):
        tau, found, extra, r, e = c
        cand = jnp.where(r == 0, (first < K) & live, extra)
        fbound = jnp.where(r == 0, V[K - 1], jnp.where(free, e[:P], 1.0))
        tau, idx, roots = search(cand, tau, fbound)
        # every root found so far, by pair: pairs whose roots coincide (to the bracket's
        # width) fire together, whichever round found them
        found = found.at[idx].min(roots)
        at_root = found <= tau + _TAU_TOL
        e = _functions.values(model, data, interp(tau), on, held, 0) + offsets
        e = jnp.where(tau >= 1, end_values, jnp.where(tau <= 0, start_values, e))
        extra = live & free & ~at_root & (e[:P] < 0) & (e[:P] < start)
        return tau, found, extra, r + 1, e

    zeros = jnp.zeros(P, bool)
    tau, found, extra, _, e = eqxi.while_loop(
        lambda c: (c[3] == 0) | (jnp.any(c[2]) & (c[3] <= _RELOCATE_ROUNDS)),
        round_,
        (jnp.ones((), dtype), jnp.full(P, jnp.inf, dtype), zeros, jnp.zeros((), jnp.int32),
         end_values),
        max_steps=_RELOCATE_ROUNDS + 1,
        kind="bounded",
    )
    at_root = found <= tau + _TAU_TOL
    trig = jnp.concatenate([at_root | extra, jnp.zeros(2 * P, bool)])
    return tau, trig, e, jnp.any(extra)
