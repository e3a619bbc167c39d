"""Event functions: one value per pair and kind, all >= 0 while nothing happens.

For each of the P pairs, three functions side by side (3P values):

- crossing: ``side * z + slack`` for a free pair (side +1 if on, -1 if off); +inf if held. The
  slack ``_Z_SLACK * |w_u| |h_i|`` makes a crossing fire a hair past the kink, so the flipped side
  starts strictly positive and a pair that grazes its kink right after a change is found on its
  way back;
- release low / high, for a held pair: ``lambda - left + slack`` and ``right - lambda + slack``
  (the multiplier leaving [left, right]); +inf for free pairs.

Values are kept with a per-function offset (:func:`rebase`): a function that sits a hair below
zero right after a change starts its next search strictly positive.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _sliding
from ._model import FrozenPattern

# A free pair's crossing fires at side * z = -_Z_SLACK * |w_u| |h_i| (not at 0).
_Z_SLACK = 1e-13
# A sliding pair is released when lambda leaves [left - slack, right + slack] (slack relative to
# right - left). The hysteresis stops grazing exits (lambda touching a bound and returning) from
# cycling between release and capture; it perturbs the flow only at second order in slack.
_LAMBDA_SLACK = 1e-7


def _crossing(z, scale, on, held):
    """The P crossing values from pre-activations ``z`` and their scales (+inf if held)."""
    side = jnp.where(on, 1.0, -1.0)
    return jnp.where(held, jnp.inf, side * z + _Z_SLACK * jax.lax.stop_gradient(scale))


def assemble(model: FrozenPattern, z, scale, on, held, lam):
    """The 3P event values from pre-activations ``z``, their scales, the pattern and the
    multipliers ``lam`` (None: no pair is held, the release functions are +inf)."""
    cross = _crossing(z, scale, on, held)
    if lam is not None:
        ls = _LAMBDA_SLACK * (model.right - model.left)
        lo = jnp.where(held, lam - model.left + ls, jnp.inf)
        hi = jnp.where(held, model.right - lam + ls, jnp.inf)
    else:
        lo = hi = jnp.full(z.shape, jnp.inf, z.dtype)
    return jnp.concatenate([cross, lo, hi])


def crossing(model: FrozenPattern, data, theta, on, held):
    """The P crossing values alone at ``theta`` (+inf for held pairs)."""
    _, z, scale = model.forward(theta, data.X, model.slopes(on, held), scales=True)
    return _crossing(z.reshape(-1), scale.reshape(-1), on, held)


def values(model: FrozenPattern, data, theta, on, held, slots: int, first=None, side=None,
           deep: bool = True):
    """The event values at ``theta`` (``slots``, ``first`` and ``deep`` as for
    :func:`gfsim.events._sliding.field`); the crossing values relative to the sides ``side``
    (default ``on``: a step that went through crossings measures them from its start's)."""
    D = model.slopes(on, held)
    _, z, scale = model.forward(theta, data.X, D, scales=True)
    lam = None
    if slots:
        lam = _sliding.field(model, data, theta, on, held, slots, first=first, deep=deep)[1]
    return assemble(model, z.reshape(-1), scale.reshape(-1), on if side is None else side, held,
                    lam)


def stage_sides(model: FrozenPattern, data, theta, on, held, offsets, adapt):
    """The side of every pair at ``theta`` for a step that goes through crossings
    (``crossings="step"``): a free pair is flipped where its crossing function, with its offset
    (``offsets``: the P crossing offsets), is below zero, exactly where the located search would
    have fired; layer by layer, each layer's pre-activations under the sides found below it.
    ``adapt`` False: ``on`` as it is."""
    n = data.X.shape[0]
    on_r, held_r = on.reshape(n, model.hsum), held.reshape(n, model.hsum)
    off_r = offsets.reshape(n, model.hsum)
    sides = []

    def pick(cols, z, scale):
        o, hl = on_r[:, cols], held_r[:, cols]
        o = o ^ (adapt & ~hl & (_crossing(z, scale, o, hl) + off_r[:, cols] < 0))
        sides.append(o)
        return jnp.where(o & ~hl, model.right, model.left)

    model.forward(jax.lax.stop_gradient(theta), data.X, None, pick=pick)
    return jnp.concatenate(sides, axis=-1).reshape(-1)


def field_and_values(model: FrozenPattern, data, theta, on, held, side=None):
    """The plain field (no projection) and the event values at one point, from one forward
    pass (crossings relative to ``side``, default ``on``, as in :func:`values`)."""
    F, _, z, scale = _sliding.field(model, data, theta, on, held, 0, model.grad_and_c_aux)
    return F, assemble(model, z, scale, on if side is None else side, held, None)


def rebase(raw):
    """Event values with offsets: a negative value gets offset -2 * value (it starts as
    positive as it was negative); returns (values + offsets, offsets)."""
    off = jnp.where(raw < 0, -2.0 * raw, 0.0)
    return raw + off, off
