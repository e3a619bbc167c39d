"""How a flow is integrated: methods as typed objects, validated when they are made.

:func:`gfsim.simulate` takes ``method="auto"``, ``"plain"``, ``"events"`` or one of these
objects; :func:`gfsim.gd` uses :class:`GD`. Each object is static (part of the compiled
program's key) and carries only what changes the program.
"""

from __future__ import annotations

import dataclasses

import diffrax
import equinox as eqx
import numpy as np

from ._registry import Registry
from .stiff import Auto

SOLVERS: Registry = Registry("solver")
SOLVERS.register("auto", Auto)
SOLVERS.register("tsit5", diffrax.Tsit5)
SOLVERS.register("dopri5", diffrax.Dopri5)
SOLVERS.register("dopri8", diffrax.Dopri8)
SOLVERS.register("kvaerno5", lambda: diffrax.Kvaerno5())
SOLVERS.register("bosh3", diffrax.Bosh3)
SOLVERS.register("heun", diffrax.Heun)


def resolve_solver(solver) -> diffrax.AbstractSolver:
    """A Diffrax solver instance (or :class:`gfsim.stiff.Auto`) from a name in :data:`SOLVERS`
    or an instance."""
    if isinstance(solver, (diffrax.AbstractSolver, Auto)):
        return solver
    return SOLVERS.get(solver, "solver")()


def _positive_int(value, field: str, *, none: bool = False) -> int | None:
    if none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        allowed = "None or a positive integer" if none else "a positive integer"
        raise ValueError(f"{field}={value!r} is not allowed; allowed: {allowed}.")
    return int(value)


ADJOINTS = ("reverse", "forward")


def resolve_adjoint(adjoint) -> diffrax.AbstractAdjoint:
    """``"reverse"`` (default: Diffrax's checkpointed reverse mode, for ``jax.grad``),
    ``"forward"`` (forward mode, for ``jax.jvp`` / ``jax.jacfwd``: one pass per input
    direction, cheaper for a scalar input such as an init scale) or a Diffrax adjoint object
    (``method="plain"`` takes any; the event solver takes these two)."""
    if isinstance(adjoint, diffrax.AbstractAdjoint):
        return adjoint
    if adjoint == "reverse":
        return diffrax.RecursiveCheckpointAdjoint()
    if adjoint == "forward":
        return diffrax.ForwardMode()
    raise ValueError(f"adjoint={adjoint!r} is not allowed; allowed: 'reverse', 'forward' or a "
                     "diffrax adjoint (e.g. diffrax.ForwardMode()).")


def _check_controller(controller):
    if controller is not None and not isinstance(controller, diffrax.PIDController):
        raise ValueError(
            f"controller={controller!r} is not allowed; allowed: None or a "
            "diffrax.PIDController.")
    return controller


class AbstractMethod(eqx.Module):
    """A way to integrate d(theta)/dt = -grad L(theta): a solver and its budget."""

    solver: diffrax.AbstractSolver | Auto = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    controller: diffrax.PIDController | None = eqx.field(static=True)
    adjoint: diffrax.AbstractAdjoint = eqx.field(static=True)

    @property
    def name(self) -> str:
        raise NotImplementedError

    def label(self) -> str:
        """How the run was made, as recorded in :attr:`gfsim.Trajectory.method`."""
        if isinstance(self.solver, Auto):
            return f"gf:{self.solver.name()}"
        return f"gf:{type(self.solver).__name__.lower()}"


class Plain(AbstractMethod):
    """Diffrax's ``diffeqsolve`` on the field as it is (discontinuous at ReLU kinks: it may
    stall where the flow slides).

    **Arguments:**

    - ``solver``: a name in :data:`SOLVERS` (default ``"auto"``: Tsit5, handing over to an
      implicit Kvaerno5 with Newton iterations where its steps are stability-limited,
      :class:`gfsim.stiff.Auto`) or a Diffrax solver.
    - ``max_steps``: the step budget per run (default 100,000).
    - ``controller``: a :class:`diffrax.PIDController` (its tolerances are then static: a new
      value recompiles); default None: ``PIDController(rtol, atol)`` from
      :func:`gfsim.simulate`'s (traced) tolerances.
    - ``adjoint``: how derivatives go through the solve: ``"reverse"`` (default, Diffrax's
      ``RecursiveCheckpointAdjoint``: ``jax.grad``), ``"forward"`` (``diffrax.ForwardMode``:
      ``jax.jvp``, ``jax.jacfwd``) or any Diffrax adjoint object.
    """

    def __init__(self, solver="auto", max_steps: int = 100_000, controller=None,
                 adjoint="reverse"):
        self.solver = resolve_solver(solver)
        self.max_steps = _positive_int(max_steps, "max_steps")
        self.controller = _check_controller(controller)
        self.adjoint = resolve_adjoint(adjoint)

    @property
    def name(self) -> str:
        return "plain"


class Events(AbstractMethod):
    """The exact piecewise-smooth flow of a net with a kinked activation (ReLU, leaky ReLU):
    steps with the activation pattern frozen, kink crossings and sliding modes as events
    (:mod:`gfsim.events`, docs/nonsmooth.md).

    **Arguments:**

    - ``solver``: ``"auto"`` (default: Tsit5 steps, and where a run that holds no pair below
      the first hidden layer has steps that are stability-limited, with more than
      ``Auto.horizon`` of them still to go, implicit Kvaerno5 steps on its frozen pattern
      (projected while it slides) until its next event; see
      :mod:`gfsim.stiff`; ``gfsim.stiff.Auto(events=False)``: Tsit5 throughout) or an
      explicit Runge-Kutta solver (``"tsit5"``, ...).
    - ``max_steps``: the step budget per run (default 100,000).
    - ``max_sliding``: how many (unit, point) pairs BELOW THE FIRST HIDDEN LAYER may slide at
      once (their projection costs a backward pass each). ``None`` (the default): start with
      :data:`SLIDING_START` and, for a run that needs more, rerun it with four times as many
      (up to every such pair) until it fits; the room each run had is recorded in
      :attr:`gfsim.Trajectory.max_sliding`. An integer fixes it: a run that needs more ends with
      status ``sliding_capacity``. First-layer pairs need no room: their projection is solved
      unit by unit (docs/nonsmooth.md), so a depth-2 net never runs out, whatever ``n``.
    - ``lanes``: how many runs of a batch the loop advances at once (None, the default: all,
      except on the CPU for runs whose work per field evaluation, points x weights, is at least
      :data:`SERIAL_WORK`: one, outside a trace; ``lanes`` = the number of runs is lockstep
      there too); with fewer lanes than runs a lane whose run is done takes the next pending
      run.
    - ``controller``: as for :class:`Plain` (the same controller rule under both methods).
    - ``adjoint``: ``"reverse"`` (default: the loop is checkpointed for ``jax.grad``) or
      ``"forward"`` (a plain loop, for ``jax.jvp`` / ``jax.jacfwd``; reverse mode then fails).
    - ``crossings``: how a step meets the kinks its pairs cross. ``"locate"``: every crossing is
      an event, its time found on the step's dense output and the step cut there (exact to
      the root finder, one loop iteration per crossing). ``"step"``: a step goes through the
      crossings of free pairs with each stage on the side its state is on (on the sliding
      field while the run holds pairs), the error of each kink crossed (the jump of the field
      times the step's quadrature error for a jump at that time) added to the step's error
      estimate; a pair that would slide (its new side pushes it back), releases and kinks that
      make a step fail are located as under ``"locate"``. Derivatives through
      such steps are those of the discrete steps (the crossing times' motion is missed).
      ``"auto"`` (the default): ``"step"`` where ``rtol`` is at least :data:`STEP_RTOL` and
      the runs have at least :data:`STEP_POINTS` points, outside a trace (``jax.grad``,
      ``jit``), else ``"locate"`` (decided by :func:`gfsim.simulate`).
    """

    max_sliding: int | None = eqx.field(static=True)
    lanes: int | None = eqx.field(static=True)
    crossings: str = eqx.field(static=True)

    def __init__(self, solver="auto", max_steps: int = 100_000, max_sliding: int | None = None,
                 lanes: int | None = None, controller=None, adjoint="reverse",
                 crossings: str = "auto"):
        if crossings not in CROSSINGS:
            raise ValueError(f"crossings={crossings!r} is not allowed; allowed: "
                             f"{', '.join(map(repr, CROSSINGS))}.")
        self.crossings = crossings
        self.solver = resolve_solver(solver)
        self.controller = _check_controller(controller)
        self.adjoint = resolve_adjoint(adjoint)
        self.max_steps = _positive_int(max_steps, "max_steps")
        self.max_sliding = _positive_int(max_sliding, "max_sliding", none=True)
        self.lanes = _positive_int(lanes, "lanes", none=True)

    def __check_init__(self):
        if not isinstance(self.adjoint, (diffrax.RecursiveCheckpointAdjoint,
                                         diffrax.ForwardMode)):
            raise ValueError(
                f"adjoint={type(self.adjoint).__name__} cannot be used with method='events'; "
                "allowed: 'reverse' (RecursiveCheckpointAdjoint) or 'forward' (ForwardMode).")
        explicit = self.solver.explicit if isinstance(self.solver, Auto) else self.solver
        if not isinstance(explicit, diffrax.AbstractERK):
            raise ValueError(
                f"solver={type(self.solver).__name__} cannot be used with method='events'; "
                "allowed: explicit Runge-Kutta solvers (tsit5, dopri5, dopri8, bosh3) or "
                "method='plain'.")

    @property
    def name(self) -> str:
        return "events"

    def label(self) -> str:
        return super().label() + "+events" + ("+step" if self.crossings == "step" else "")

    def resolved(self, rtol, points: int) -> Events:
        """This method with ``crossings="auto"`` decided for the tolerance ``rtol`` (a number,
        the method's controller's if it has one; None: inside a trace, so ``"locate"``) and
        ``points`` points per run."""
        if self.crossings != "auto":
            return self
        if rtol is not None and self.controller is not None:
            rtol = self.controller.rtol
        step = rtol is not None and float(rtol) >= STEP_RTOL and points >= STEP_POINTS
        return dataclasses.replace(self, crossings="step" if step else "locate")


METHOD_NAMES = ("auto", "events", "plain")

CROSSINGS = ("auto", "locate", "step")
# Under ``crossings="auto"``, steps go through crossings from this rtol up and with at least
# this many points per run: there crossings are dense and each one's jump of the field small
# (W-E, n = 256: about 80 crossings per unit time, located one per loop iteration they set the
# step count whatever the tolerance); with few points, or at tighter tolerances, most kinks
# fail a step that goes through them and locating them is cheaper.
STEP_RTOL = 1e-5
STEP_POINTS = 64
# Under ``lanes=None`` on the CPU: from this many points x weights per run, the runs of a batch
# go one after another (one refilled lane; W-E quick, 256 x 704: 3.5x faster than lockstep)
SERIAL_WORK = 65_536

# Under ``max_sliding=None``: the room for deeper held pairs a run starts with; a run that needs
# more is rerun with four times as much.
SLIDING_START = 16


def resolve_method(method, activation, *, solver="auto", max_steps=100_000, max_sliding=None,
                   lanes=None, adjoint="reverse") -> AbstractMethod:
    """The method object for ``simulate(..., method=...)``: a string (``"auto"``: events for an
    activation with a kink, plain otherwise) with the other options, or a method object as it
    is. ``activation``: an :class:`~gfsim.activations.Activation`."""
    if isinstance(method, AbstractMethod):
        given = dict(solver=solver, max_steps=max_steps, max_sliding=max_sliding, lanes=lanes,
                     adjoint=adjoint)
        default = dict(solver="auto", max_steps=100_000, max_sliding=None, lanes=None,
                       adjoint="reverse")
        clash = [k for k in given if given[k] is not default[k] and given[k] != default[k]]
        if clash:
            raise ValueError(
                f"{clash[0]}={given[clash[0]]!r} with method={type(method).__name__}(...): the "
                f"method object carries its own {clash[0]}; allowed: pass it to the object, "
                f"e.g. {type(method).__name__}({clash[0]}=...).")
        return method
    if not isinstance(method, str) or method not in METHOD_NAMES:
        raise ValueError(
            f"method={method!r} is not allowed; allowed: {', '.join(METHOD_NAMES)}, or a "
            "gfsim.methods.Plain / Events object.")
    # every option is checked, whichever method it applies to
    solver = resolve_solver(solver)
    max_steps = _positive_int(max_steps, "max_steps")
    max_sliding = _positive_int(max_sliding, "max_sliding", none=True)
    lanes = _positive_int(lanes, "lanes", none=True)
    adjoint = resolve_adjoint(adjoint)
    if method == "auto":
        method = "events" if activation.has_kink else "plain"
    if method == "events":
        return Events(solver, max_steps, max_sliding, lanes, adjoint=adjoint)
    return Plain(solver, max_steps, adjoint=adjoint)
