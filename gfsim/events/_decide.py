"""What happens at an event: cross, slide or release.

At a root the field on both sides decides. For a pair that reached its kink: if the rates
dz/dt with the pair off (``a``) and on (``b``) push the same way, it crosses (its side flips to
the sign of ``a + b``); if both push into the surface (``a >= 0 >= b``, up to ``_GRAZE``) it
SLIDES (the Filippov solution, the lr -> 0 limit of gradient descent) and is held at z = 0. A
held pair whose multiplier left [left, right] is released to the side it points to. A capture
changes the projection and with it the multipliers of the pairs already held, so releases are
repeated until the held set is consistent (the complementarity problem), at most
``_RELEASE_ROUNDS`` times.
"""

from __future__ import annotations

import equinox.internal as eqxi
import jax
import jax.numpy as jnp

from . import _functions, _sliding
from ._model import FrozenPattern

# A pair reaching its kink slides when neither side pushes it away by more than _GRAZE of the
# rates.
_GRAZE = 1e-9
# Passes of "release the held pairs whose multiplier left [left, right]" after a capture.
_RELEASE_ROUNDS = 3


def decide(model: FrozenPattern, data, theta, on, held, hit, slots: int):
    """For the pairs ``hit`` that reached their kink: cross (flip side) or slide (hold).
    ``slots``: room for the held pairs AND the hit ones (0: no projection, nothing held).
    Returns the new ``on``, the new ``held`` and which hit pairs slide."""
    P = held.shape[0]
    zfun = lambda th: model.zflat(th, data, model.slopes(on, held))  # noqa: E731
    first = _sliding.first_rows(model, data, held) if slots else None  # (both sides' held set)

    def rate(side_on):
        on2 = jnp.where(hit, side_on, on)
        F = _sliding.field(model, data, theta, on2, held, slots, first=first)[0]
        return jax.jvp(zfun, (theta,), (F,))[1]

    # dz/dt with the hit pairs off (a) and on (b): one traced field for both sides
    a, b = jax.vmap(rate)(jnp.stack([jnp.zeros(P, bool), jnp.ones(P, bool)]))
    tol = _GRAZE * (jnp.abs(a) + jnp.abs(b))
    slide = hit & (a >= -tol) & (b <= tol)
    new_on = jnp.where(hit & ~slide, a + b > 0, on)
    new_held = held | slide
    if slots:
        new_on, new_held = release(model, data, theta, new_on, new_held, slots)
    return new_on, new_held, slide & new_held


def release(model: FrozenPattern, data, theta, on, held, slots: int):
    """Release the held pairs whose multiplier is outside [left, right] (with the slack), to the
    side it points to, until the held set is consistent (at most ``_RELEASE_ROUNDS`` passes)."""
    ls = _functions._LAMBDA_SLACK * (model.right - model.left)

    def one_pass(c):
        on, held, _ = c
        _, lam = _sliding.field(model, data, theta, on, held, slots)
        lo = held & (lam < model.left - ls)
        hi = held & (lam > model.right + ls)
        return jnp.where(lo | hi, hi, on), held & ~(lo | hi), jnp.any(lo | hi)

    # a loop, not unrolled: one traced projection instead of _RELEASE_ROUNDS; it stops at the
    # first pass that releases nothing (the held set is then consistent)
    on, held, _ = eqxi.while_loop(lambda c: c[2], one_pass, (on, held, jnp.ones((), bool)),
                                  max_steps=_RELEASE_ROUNDS, kind="bounded")
    return on, held


def apply(model: FrozenPattern, data, theta, on, held, triggered, offsets, values, slots: int):
    """The pattern changes of one run at the end of a cut step.

    ``triggered``: the event functions the search found firing; ``values``: the event values at
    ``theta`` with their ``offsets`` (None: evaluate them here under ``slots``). Every
    triggered function that is negative fires (at least the triggering ones). Returns the new
    ``on``, ``held`` and the number of crossings and of captures."""
    P = on.shape[0]
    if values is None:
        values = _functions.values(model, data, theta, on, held, slots) + offsets
    fired = triggered & (values < 0)
    fired = fired | (triggered & ~jnp.any(fired))  # at least the triggering ones
    cross_hit = fired[:P]
    lo_hit = fired[P:2 * P]
    hi_hit = fired[2 * P:]
    # leaving a sliding surface: to the side lambda points to
    released = held & (lo_hit | hi_hit)
    held2 = held & ~released
    on2 = jnp.where(released, hi_hit, on)
    on3, held3, slid = decide(model, data, theta, on2, held2, cross_hit & ~held, slots)
    crossed = cross_hit & ~held & ~slid
    count = lambda m: jnp.sum(m).astype(jnp.int32)  # noqa: E731
    return on3, held3, count(crossed), count(slid)
