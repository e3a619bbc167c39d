"""Activations as objects that know their kink.

An :class:`Activation` is an elementwise function plus, for a piecewise-linear one, the slope on
each side of its kink at 0. Networks (:mod:`gfsim.nets`), the analysis layer and the
event-driven solver (:mod:`gfsim.events`) all read the activation from here, so there is one
definition of the forward pass, and a newly registered activation with a kink is integrated by
the event solver like ReLU (``method="auto"`` picks it from :attr:`Activation.has_kink`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax

from ._registry import Registry


class Activation(eqx.Module):
    """An elementwise activation.

    **Arguments:**

    - ``fn``: the function, elementwise and JAX-traceable.
    - ``left``, ``right``: for an activation that is linear on each side of a kink at 0
      (``fn(z) = left * z`` for ``z < 0``, ``right * z`` for ``z > 0``): the two slopes. ``None``
      (the default) for a smooth activation. The event-driven solver freezes ``fn`` to one of the
      two slopes per (unit, point) pair and treats a change of side as an event.
    """

    fn: Callable = eqx.field(static=True)
    left: float | None = eqx.field(static=True, default=None)
    right: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not callable(self.fn):
            raise ValueError(f"fn={self.fn!r} must be callable (an elementwise function).")
        if (self.left is None) != (self.right is None):
            raise ValueError(
                f"left={self.left!r}, right={self.right!r}: give both slopes of the kink or "
                "neither.")
        if self.right is not None and not self.right > self.left:
            raise ValueError(
                f"left={self.left!r}, right={self.right!r}: the slope right of the kink must be "
                "larger than the slope left of it (a convex kink, as ReLU's).")

    def __call__(self, z):
        return self.fn(z)

    @property
    def has_kink(self) -> bool:
        """Whether the activation is piecewise linear with a kink at 0 (non-smooth flow)."""
        return self.left is not None

    def slope(self, on):
        """The frozen-pattern slope: ``right`` where ``on`` (z > 0), else ``left``."""
        import jax.numpy as jnp

        return jnp.where(on, self.right, self.left)


# name -> factory(negative_slope) -> Activation
ACTIVATIONS: Registry[Callable[[float], Activation]] = Registry("activation")
ACTIVATIONS.register("relu", lambda negative_slope: Activation(jax.nn.relu, 0.0, 1.0))
ACTIVATIONS.register("linear", lambda negative_slope: Activation(lambda z: z))
def _leaky(negative_slope: float) -> Activation:
    fn = lambda z: jax.nn.leaky_relu(z, negative_slope)  # noqa: E731
    if float(negative_slope) < 1.0:
        return Activation(fn, float(negative_slope), 1.0)
    # slope 1 is linear; above 1 the kink is concave, which the event solver does not handle:
    # such a net runs the plain solver
    return Activation(fn)


ACTIVATIONS.register("leaky_relu", _leaky)


def register_activation(name: str, fn: Callable | Activation) -> Callable:
    """Make an activation available as ``MLP(..., activation=name)``.

    ``fn``: an :class:`Activation` (give its kink's slopes for a piecewise-linear one, so the
    event solver integrates it exactly), or a plain elementwise JAX-traceable function (taken as
    smooth)."""
    act = fn if isinstance(fn, Activation) else Activation(fn)
    ACTIVATIONS.register(name, lambda negative_slope: act)
    return fn


@functools.cache
def _cached(name: str, negative_slope: float) -> Activation:
    # one object per (name, slope): it is part of compiled programs' static keys
    return ACTIVATIONS.get(name)(negative_slope)


def get_activation(name: str, negative_slope: float = 0.01) -> Activation:
    """The :class:`Activation` registered as ``name`` (leaky ReLU with ``negative_slope``)."""
    ACTIVATIONS.check(name, "activation")
    return _cached(name, float(negative_slope))
