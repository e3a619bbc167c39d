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

from . import _functions

_ILLINOIS_ITERS = 30
# Reruns of the event search when a function that was not triggered at the step's end is
# negative at the root found (it dipped below zero and back inside the step).
_RELOCATE_ROUNDS = 3
_TAU_TOL = 1e-14  # event location: bracket width, as a fraction of the step
_F_TOL = 1e-12  # ... or |event| at the returned point, relative to its value at the step's end


def illinois(phi, fa, bmax, fb, aux_b):
    """The first root of a scalar function on [0, bmax] with ``fa = phi(0) >= 0 > fb =
    phi(bmax)``: the Illinois variant of regula falsi, until the bracket is ``_TAU_TOL`` wide or
    the function at its right end is within ``_F_TOL * |fb|`` of zero, at most
    ``_ILLINOIS_ITERS`` iterations (a bounded loop: reverse mode goes through it).

    ``phi(tau) -> (value, aux)``: whatever else the evaluation computes (the event values) is
    carried along for the bracket's right end, so the caller needs no evaluation there:
    ``aux_b`` is it at ``bmax``. Returns the right end (where the function has fired; 0 if
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

    start = (jnp.zeros((), dtype), bmax, fa, fb, jnp.zeros((), int), fb, aux_b)
    ftol = _F_TOL * jnp.abs(fb)
    a, b, *_, aux = eqxi.while_loop(
        lambda c: (c[1] - c[0] > _TAU_TOL) & (-c[5] > ftol),
        it,
        start,
        max_steps=_ILLINOIS_ITERS,
        kind="bounded",
    )
    return jnp.where(fa < 0, 0.0, b), aux


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

    def values_at(tau):
        return _functions.values(model, data, interp(tau), on, held, slots) + offsets

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
