"""The one raw result every solver returns, and the one place solver outcomes become a
:class:`~gfsim.trajectory.Status`."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .trajectory import Status, Trajectory


class RawResult(eqx.Module):
    """What a solve of one run (or, with a leading run axis, a batch) produced: the array
    fields of a :class:`~gfsim.trajectory.Trajectory` (see there for their meaning)."""

    loss: Float[Array, "*runs T"]
    weights: tuple[Array, ...]
    biases: tuple[Array, ...] | None
    final_weights: tuple[Array, ...]
    final_loss: Float[Array, "*runs"]
    t_final: Float[Array, "*runs"]
    status: Int[Array, "*runs"]
    num_steps: Int[Array, "*runs"]
    num_accepted: Int[Array, "*runs"]
    num_rejected: Int[Array, "*runs"]
    num_crossings: Int[Array, "*runs"] | None = None
    num_slides: Int[Array, "*runs"] | None = None
    sliding: tuple[Array, ...] | None = None
    loop_steps: Int[Array, ""] | None = None
    t_stiff: Float[Array, "*runs"] | None = None

    def as_dict(self) -> dict:
        """The fields as a plain dict (a compiled program's output: built-in pytree nodes only,
        so a stored export of it can be loaded back, see gfsim._exported)."""
        return {f: getattr(self, f) for f in _FIELDS}

    def trajectory(self, ts, **how) -> Trajectory:
        """The :class:`~gfsim.trajectory.Trajectory` at save times ``ts``; ``how``: its static
        fields (loss_name, reduction, activation, method, lanes)."""
        return Trajectory(ts=ts, **{f: getattr(self, f) for f in _FIELDS}, **how)


_FIELDS = tuple(RawResult.__dataclass_fields__)


_RULES = (Status.STOP_LOSS, Status.STOP_GRAD, Status.PLATEAU)


def status_from_diffrax(result, rules=None, enabled=(True, True, True)) -> Int[Array, "*runs"]:
    """Diffrax's outcome of a ``diffeqsolve`` (its ``RESULTS``) as a Status code. A stop event
    is the first of ``rules = (loss, grad, plateau)`` (booleans: which stop rules hold where
    the run ended) that holds: ``stop_loss``, ``stop_grad``, ``plateau``; if none holds on
    re-evaluation (a round-off away from its threshold), the first rule that was given
    (``enabled``: static booleans)."""
    given = [s for s, on in zip(_RULES, enabled) if on]
    event = given[0] if given else Status.STOP_LOSS
    if rules is not None:
        for hit, s, on in reversed(list(zip(rules, _RULES, enabled))):
            if on:
                event = jnp.where(hit, s, event)
    return jnp.where(
        result == diffrax.RESULTS.successful,
        Status.REACHED_T1,
        jnp.where(
            result == diffrax.RESULTS.event_occurred,
            event,
            jnp.where(result == diffrax.RESULTS.max_steps_reached, Status.MAX_STEPS,
                      Status.FAILED),
        ),
    ).astype(jnp.int32)


def final_status(status, finite: Bool[Array, "*runs"]) -> Int[Array, "*runs"]:
    """``status``, or NONFINITE where the run's final loss or gradient is not finite."""
    return jnp.where(finite, status, Status.NONFINITE).astype(jnp.int32)
