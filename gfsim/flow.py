"""The gradient-flow ODE d(theta)/dt = -grad L(theta), integrated with Diffrax."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from . import _check, _exported
from . import methods as _methods
from . import stiff as _stiff
from ._result import RawResult, final_status, status_from_diffrax
from .data import Dataset
from .losses import LOSSES, check_reduction, loss_value
from .methods import SOLVERS, AbstractMethod, Events, resolve_method
from .methods import resolve_solver as resolve_solver  # noqa: F401  (gfsim.flow's old name)
from .nets import MLP
from .trajectory import Status, Trajectory


def register_solver(name: str, factory: Callable[[], diffrax.AbstractSolver]):
    """Make ``simulate(..., solver=name)`` use ``factory()`` (any adaptive Diffrax solver)."""
    return SOLVERS.register(name, factory)


def log_times(t1, num: int = 64, decades: float = 6.0):
    """Save times ``0`` followed by ``num - 1`` log-spaced times from ``t1 * 10**-decades`` to
    ``t1``. Works on traced ``t1``."""
    _check_save_rule(num, decades)
    check_scalar(t1, "t1", positive=True)
    t1 = jnp.asarray(t1)
    rest = t1 * jnp.logspace(-decades, 0.0, num - 1, dtype=t1.dtype)
    return jnp.concatenate([jnp.zeros((1,), t1.dtype), rest])


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything that changes the compiled program (so it is part of the jit cache key): the
    method object and the call's static facts."""

    method: AbstractMethod
    loss: str
    reduction: str
    num_saves: int
    decades: float
    has_stop: bool
    has_stop_grad: bool
    net_batched: bool
    data_batched: bool
    progress: bool = False
    has_stop_plateau: bool = False
    log_time: bool = False
    # under solver=Auto and the plain method: "both" phases in one program (inside a trace),
    # or the watched explicit phase alone ("explicit") and, for the runs that switched, the
    # implicit phase from their switch ("implicit"), chosen on the host (see _finish_stiff)
    stiff_phase: str = "both"


_TRACES = [0]


def trace_count() -> int:
    """How many times the batched solve has been traced (compiled) in this process."""
    return _TRACES[0]


def objective(net: MLP, data: Dataset, loss: str = "square", reduction: str = "mean"):
    """The training loss L(theta) of one net on one dataset."""
    return loss_value(loss, reduction, net(data.X), data.Y, data.mask)


def _theta_norm(norm):
    """A step-size controller's norm, applied to the parameters of a watched state
    ``(theta, counts)`` only (the counters carry no error)."""
    return lambda y: norm(y[0] if isinstance(y, tuple) else y)


def _with_scan_kind(solver, kind):
    if getattr(solver, "scan_kind", "") is None:
        return eqx.tree_at(lambda s: s.scan_kind, solver, kind, is_leaf=lambda x: x is None)
    return solver


def _solve_one(net, data, t1, ts, rtol, atol, stops, cfg: _Static, start=None):
    """One run's solve. ``start``: under ``cfg.stiff_phase == "implicit"``, where the run's
    explicit phase switched: ``{"theta": flat state, "t": clock time, "loss0": the loss at
    the init}``. Returns the RawResult and, under ``"explicit"``, that dict for every run."""
    stop_loss, stop_grad, stop_plateau = stops
    params0, skeleton = eqx.partition(net, eqx.is_array)
    # The solve runs on one flat parameter vector: the same RMS error norm as on the pytree,
    # but fewer buffers in the step loop (vmapped steps 1.9x cheaper on W-B on the CPU).
    theta0, unravel = jax.flatten_util.ravel_pytree(params0)

    def loss_of(params, data):
        return objective(eqx.combine(params, skeleton), data, cfg.loss, cfg.reduction)

    def flat_loss(theta, data):
        return loss_of(unravel(theta), data)

    grad_fn = jax.grad(flat_loss)
    loss0 = flat_loss(theta0, data) if start is None else start["loss0"]
    # A run whose loss or gradient is already non-finite at t = 0 (an init so large that the
    # loss overflows) would spend its whole step budget there, rejecting every step, and hold
    # a vmapped batch up: its field is zero instead, so it crosses to t1 in a few steps, and
    # ends as nonfinite at t_final = 0 below.
    start_ok = (jnp.isfinite(loss0) & jnp.all(jnp.isfinite(grad_fn(theta0, data)))
                if start is None else jnp.ones((), bool))
    # Log time (cfg.log_time): the solver's clock is s = log(1 + t), the field times dt/ds.
    clock = (lambda t: jnp.log1p(t)) if cfg.log_time else (lambda t: t)  # noqa: E731
    wall = (lambda s: jnp.expm1(s)) if cfg.log_time else (lambda s: s)  # noqa: E731
    S1, S_ts = clock(t1), clock(ts)

    def velocity(s, theta, data):
        f = jnp.where(start_ok, -grad_fn(theta, data), 0.0)
        return jnp.exp(s) * f if cfg.log_time else f

    def rules(s, theta, args):
        """Which stop rules hold at (s, theta): (loss, grad, plateau)."""
        no = jnp.zeros((), bool)
        lval = flat_loss(theta, args) if (cfg.has_stop or cfg.has_stop_plateau) else None
        g2 = (jnp.sum(grad_fn(theta, args) ** 2)
              if (cfg.has_stop_grad or cfg.has_stop_plateau) else None)
        hit_loss = lval < stop_loss if cfg.has_stop else no
        hit_grad = g2 < stop_grad ** 2 if cfg.has_stop_grad else no
        hit_plateau = no
        if cfg.has_stop_plateau:
            # the loss's relative decrease per decade of time, -dlnL/dlog10(t) = ln10 t |g|^2/L,
            # once the loss has come down 1% from its start (so the start, where it is ~0, and
            # the plateau of a small init before its escape do not count)
            rate = math.log(10.0) * wall(s) * g2 / jnp.abs(lval)
            hit_plateau = (lval < 0.99 * loss0) & (rate < stop_plateau)
        return hit_loss, hit_grad, hit_plateau

    has_rules = cfg.has_stop or cfg.has_stop_grad or cfg.has_stop_plateau
    solver = cfg.method.solver
    auto = isinstance(solver, _stiff.Auto)
    controller = (cfg.method.controller if cfg.method.controller is not None
                  else diffrax.PIDController(rtol=rtol, atol=atol))
    adjoint = cfg.method.adjoint
    meter = diffrax.TqdmProgressMeter() if cfg.progress else diffrax.NoProgressMeter()

    def any_rule(s, theta, args):
        a, b, c = rules(s, theta, args)
        return a | b | c

    stop_event = (diffrax.Event(lambda s, y, args, **kw: any_rule(s, y, args))
                  if has_rules else None)

    # Diffrax picks the stage loop's kind for its adjoint on the solver it is given (a
    # custom_vjp loop cannot be jvp'd): the same for the solvers inside an Auto
    kind = ("lax" if isinstance(adjoint, diffrax.ForwardMode) else "bounded"
            if isinstance(adjoint, diffrax.RecursiveCheckpointAdjoint) else None)

    def _implicit(y_switch):
        implicit = solver.implicit(controller.rtol, controller.atol,
                                   controller.norm, scale=jnp.max(jnp.abs(y_switch)))
        return implicit if kind is None else _with_scan_kind(implicit, kind)

    resume = None

    def save_at(ts_):
        # two save streams: the requested times, and the state where the solve ended (t1, a
        # stop event, or the last step before the budget ran out)
        return diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=ts_), diffrax.SubSaveAt(t1=True)])

    if not auto:
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(velocity), solver, t0=jnp.zeros_like(t1), t1=S1, dt0=None,
            y0=theta0, args=data, saveat=save_at(S_ts), stepsize_controller=controller,
            event=stop_event, max_steps=cfg.method.max_steps, adjoint=adjoint,
            progress_meter=meter, throw=False)
        ys_ts, ys_end = sol.ys
        s_end, y_end, result = sol.ts[1][0], ys_end[0], sol.result
        steps = (sol.stats["num_steps"], sol.stats["num_accepted_steps"],
                 sol.stats["num_rejected_steps"])
        s_stiff = None
    elif cfg.stiff_phase == "implicit":
        # the implicit phase alone, from where this run's explicit phase switched
        switch = jnp.ones((), bool)
        s_stiff = start["t"]
        sol2 = diffrax.diffeqsolve(
            diffrax.ODETerm(velocity), _implicit(start["theta"]), t0=s_stiff, t1=S1,
            dt0=None, y0=start["theta"], args=data, saveat=save_at(jnp.clip(S_ts, s_stiff, S1)),
            stepsize_controller=controller, event=stop_event, max_steps=cfg.method.max_steps,
            adjoint=adjoint, progress_meter=meter, throw=False)
        ys_ts, s_end, y_end, result = sol2.ys[0], sol2.ts[1][0], sol2.ys[1][0], sol2.result
        steps = (sol2.stats["num_steps"], sol2.stats["num_accepted_steps"],
                 sol2.stats["num_rejected_steps"])
    else:
        # Phase 1: the explicit solver, watched; it ends at t1, at a stop rule, out of steps,
        # or when its steps have been stability-limited for `patience` steps.
        watched = solver.watched()
        if kind is not None:
            watched = eqx.tree_at(lambda w: w.inner, watched,
                                  _with_scan_kind(watched.inner, kind))
        ctrl = eqx.tree_at(lambda c: c.norm, controller, _theta_norm(controller.norm))

        def cond1(s, y, args, **kw):
            hit = solver.due(y[1], s, S1)
            return (hit | any_rule(s, y[0], args)) if has_rules else hit

        sol1 = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda s, y, a: (velocity(s, y[0], a), jnp.zeros_like(y[1]))),
            watched, t0=jnp.zeros_like(t1), t1=S1, dt0=None,
            y0=(theta0, jnp.zeros((3,), theta0.dtype)), args=data,
            saveat=save_at(S_ts), stepsize_controller=ctrl, event=diffrax.Event(cond1),
            max_steps=cfg.method.max_steps, adjoint=adjoint, progress_meter=meter, throw=False)
        s1 = sol1.ts[1][0]
        y1 = sol1.ys[1][0][0]
        stop1 = any_rule(s1, y1, data) if has_rules else jnp.zeros((), bool)
        event1 = sol1.result == diffrax.RESULTS.event_occurred
        switch = event1 & ~stop1 & solver.due(sol1.ys[1][1][0], s1, S1) & (s1 < S1)
        # the stiffness count may reach its patience on the step that lands on t1: no stop
        result1 = diffrax.RESULTS.where(event1 & ~stop1 & ~switch, diffrax.RESULTS.successful,
                                        sol1.result)
        s_stiff = jnp.where(switch, s1, 0.0)
        if cfg.stiff_phase == "explicit":
            # the host runs the implicit phase for the runs that switched (_finish_stiff)
            resume = {"theta": y1, "t": s1, "loss0": loss0}
            ys_ts, s_end, y_end, result = sol1.ys[0][0], s1, y1, result1
            steps = (sol1.stats["num_steps"], sol1.stats["num_accepted_steps"],
                     sol1.stats["num_rejected_steps"])
    if auto and cfg.stiff_phase == "both":
        # Phase 2: the implicit solver from there to t1 (no steps for a run that did not switch).
        s2_0 = jnp.where(switch, s1, S1)
        sol2 = diffrax.diffeqsolve(
            diffrax.ODETerm(velocity), _implicit(y1), t0=s2_0, t1=S1, dt0=None, y0=y1, args=data,
            saveat=save_at(jnp.clip(S_ts, s2_0, S1)), stepsize_controller=controller,
            event=stop_event, max_steps=cfg.method.max_steps, adjoint=adjoint, throw=False)
        later = switch & (S_ts > s1)
        ys_ts = jnp.where(later[:, None], sol2.ys[0], sol1.ys[0][0])
        s_end = jnp.where(switch, sol2.ts[1][0], s1)
        y_end = jnp.where(switch, sol2.ys[1][0], y1)
        result = diffrax.RESULTS.where(switch, sol2.result, result1)
        steps = tuple(sol1.stats[k] + jnp.where(switch, sol2.stats[k], 0) for k in (
            "num_steps", "num_accepted_steps", "num_rejected_steps"))

    # (a run that reached t1 ends at t1 exactly, not at expm1(log1p(t1)))
    t_final = jnp.where(start_ok, jnp.where(s_end >= S1, t1, wall(s_end)), 0.0)
    # A slot at t0 is the initial state even when the solve stops before its first step;
    # unreached slots come back as inf: make them NaN.
    ys_ts = jnp.where((ts == 0)[:, None], theta0[None], ys_ts)
    ys_ts = jnp.where((S_ts <= jnp.where(start_ok, s_end, 0.0))[:, None], ys_ts, jnp.nan)
    saved = jax.vmap(unravel)(ys_ts)
    final = unravel(y_end)
    losses = jax.vmap(flat_loss, in_axes=(0, None))(ys_ts, data)

    final_loss = flat_loss(y_end, data)
    finite = jnp.isfinite(final_loss) & jnp.all(jnp.isfinite(grad_fn(y_end, data)))
    saved_net = eqx.combine(saved, skeleton)
    which = rules(s_end, y_end, data) if has_rules else None
    return resume, RawResult(
        loss=losses,
        weights=saved_net.weights,
        biases=saved_net.biases,
        final_weights=eqx.combine(final, skeleton).weights,
        final_loss=final_loss,
        t_final=t_final,
        status=final_status(status_from_diffrax(
            result, which, (cfg.has_stop, cfg.has_stop_grad, cfg.has_stop_plateau)), finite),
        num_steps=steps[0],
        num_accepted=steps[1],
        num_rejected=steps[2],
        # (NaN for runs that did not switch, outside expm1: no NaN tangents)
        t_stiff=None if s_stiff is None else jnp.where(switch, wall(s_stiff), jnp.nan),
    )


@eqx.filter_jit
def _run(net, data, t1, ts, rtol, atol, stops, start, cfg: _Static):
    _TRACES[0] += 1
    if ts is None:
        ts = log_times(t1, cfg.num_saves, cfg.decades)
    if isinstance(cfg.method, Events):
        raw, resume = _run_events(net, data, t1, ts, rtol, atol, stops, cfg, start)
        out = raw.as_dict()
        if resume is not None:
            out["_resume"] = resume
        return ts, out
    fn = lambda n, d, st: _solve_one(n, d, t1, ts, rtol, atol, stops, cfg, st)  # noqa: E731
    if cfg.net_batched or cfg.data_batched:
        fn = jax.vmap(fn, in_axes=(0 if cfg.net_batched else None,
                                   0 if cfg.data_batched else None, 0))
    resume, raw = fn(net, data, start)
    out = raw.as_dict()
    if resume is not None:
        out["_resume"] = resume
    return ts, out


def _run_events(net, data, t1, ts, rtol, atol, stops, cfg: _Static, start=None):
    from .events import solve_events

    batched = cfg.net_batched or cfg.data_batched
    if batched:
        runs = net.runs if cfg.net_batched else data.runs

        def tile(tree):
            return jax.tree_util.tree_map(
                lambda a: jnp.broadcast_to(a, (runs,) + a.shape), tree
            )

        net = net if cfg.net_batched else tile(net)
        data = data if cfg.data_batched else tile(data)
    return solve_events(net, data, t1, ts, rtol, atol, stops, cfg.method, loss=cfg.loss,
                        reduction=cfg.reduction, has_stop=cfg.has_stop,
                        has_stop_grad=cfg.has_stop_grad, batched=batched,
                        progress=cfg.progress, has_stop_plateau=cfg.has_stop_plateau,
                        log_time=cfg.log_time, stiff_phase=cfg.stiff_phase, resume=start)


def check_scalar(x, field: str, *, positive: bool):
    """Check a scalar option in plain Python when its value is known (not traced)."""
    if isinstance(x, jax.core.Tracer):
        return
    arr = np.asarray(x) if not isinstance(x, (str, bytes)) else np.asarray(None)
    if arr.shape != () or arr.dtype.kind not in "iuf" or isinstance(x, (bool, np.bool_)):
        raise ValueError(f"{field}={x!r} must be a real scalar.")
    v = float(arr)
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{field}={x!r} must be a finite number{' > 0' if positive else ''}.")


def _check_save_rule(num_saves, decades) -> None:
    """The default save times' options: ``num_saves`` an integer >= 2, ``decades`` a finite
    number >= 0 (a negative one would put save times beyond t1)."""
    if isinstance(num_saves, bool) or not isinstance(num_saves, (int, np.integer)) \
            or num_saves < 2:
        raise ValueError(
            f"num_saves={num_saves!r} is not allowed; allowed: an integer >= 2.")
    _check.real(decades, "decades", lo=0.0)


def _check_start(net) -> None:
    """Refuse non-finite initial weights and biases (a run cannot start there: it would spend
    its whole step budget at t = 0), naming the runs."""
    _check.finite_net(net, "the initial weights must be finite")


def _as_array(x, dtype):
    # An explicit dtype also drops JAX's weak type, which would otherwise retrace.
    return jnp.asarray(x, dtype) if isinstance(x, jax.Array) else np.asarray(x, dtype=dtype)


def _as_dtype(data: Dataset, dtype) -> Dataset:
    """The data in the net's dtype (the one rule for mixed precision: a run computes in the
    dtype of its net's weights; float64 data for a float32 net is rounded to float32)."""
    if data.X.dtype == dtype:
        return data
    return jax.tree_util.tree_map(lambda a: a.astype(dtype), data)


def _check_flag(value, field: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{field}={value!r} is not allowed; allowed: True or False.")
    return bool(value)


def check_problem(net, data) -> None:
    """Raise one clear ValueError if ``net`` and ``data`` do not fit together."""
    if not isinstance(net, MLP):
        raise ValueError(f"net must be a gfsim.MLP; got {type(net).__name__}.")
    if not isinstance(data, Dataset):
        raise ValueError(f"data must be a gfsim.Dataset; got {type(data).__name__}.")
    if net.widths[0] != data.d_in:
        raise ValueError(
            f"widths={net.widths} take inputs of dimension {net.widths[0]}, but the data has "
            f"d_in={data.d_in}."
        )
    if net.widths[-1] != data.d_out:
        raise ValueError(
            f"widths={net.widths} give {net.widths[-1]} outputs, but the targets have "
            f"d_out={data.d_out}."
        )
    if net.is_batched and data.is_batched and net.runs != data.runs:
        raise ValueError(
            f"a batch of {net.runs} nets and a batch of {data.runs} datasets: run axes must "
            "match (use gfsim.grid for every net with every dataset)."
        )


def simulate(
    net: MLP,
    data: Dataset,
    t1,
    *,
    ts=None,
    num_saves: int = 64,
    decades: float = 6.0,
    loss: str = "square",
    reduction: str = "mean",
    solver="auto",
    rtol=1e-8,
    atol=None,
    stop_loss=None,
    stop_grad=None,
    stop_plateau=None,
    clock="auto",
    max_steps: int = 100_000,
    method="auto",
    max_sliding: int | None = None,
    lanes: int | None = None,
    adjoint="reverse",
    progress: bool = False,
) -> Trajectory:
    """Integrate the gradient flow d(theta)/dt = -grad L(theta) from ``net``'s weights.

    A pure JAX function of its array arguments: it may be called under ``jax.jit``,
    ``jax.vmap`` and ``jax.grad`` (reverse mode through Diffrax's checkpointed adjoint). A batch
    of nets and/or datasets (leading run axis) is solved in one vmapped program; tolerances,
    ``t1``, ``stop_loss`` and the data and weight values are traced, so changing them does not
    recompile.

    **Arguments:**

    - ``net``: a :class:`gfsim.MLP` (or a batch of them) giving the initial weights.
    - ``data``: a :class:`gfsim.Dataset` (or a batch, paired run by run with a batch of nets).
    - ``t1``: the end time (> 0).
    - ``ts``: save times in [0, t1], non-decreasing. Default: 0 then ``num_saves - 1``
      log-spaced times over ``decades`` decades up to t1 (:func:`gfsim.log_times`).
    - ``loss``: ``"square"`` (default), ``"exponential"`` or ``"logistic"``.
    - ``reduction``: ``"mean"`` (default; torch MSELoss) or ``"sum"`` (1/2 sum for the square
      loss). It rescales time; see :mod:`gfsim.losses`.
    - ``solver``: ``"auto"`` (default: Tsit5 steps; a run whose steps become
      stability-limited, as in the stiff tail near a minimum, with more than 2000 explicit
      steps still to go, switches to an implicit Kvaerno5 with Newton iterations on
      Hessian-vector products and ``Trajectory.t_stiff`` says when, :mod:`gfsim.stiff`; under
      ``"events"`` a run that holds no pair below the first hidden layer steps implicitly on
      its frozen pattern, projected while it slides, until its next event, outside a trace),
      ``"tsit5"``, ``"dopri5"``, ``"dopri8"``, ``"kvaerno5"``, ``"bosh3"``, ``"heun"``, a
      :class:`gfsim.stiff.Auto` or a Diffrax solver instance.
    - ``rtol``, ``atol``: PID step-size control tolerances; ``atol`` defaults to ``rtol * 1e-3``.
    - ``stop_loss``: stop a run as soon as its loss falls below this value (per run).
    - ``stop_grad``: stop a run as soon as its gradient norm (under ``"events"``, the norm of
      the sliding field while pairs slide) falls below this value: a stationary point, status
      ``stop_grad``. Traced; whether it is given is static.
    - ``stop_plateau``: stop a run once its loss falls by less than this share per decade of
      time, ``-d ln L / d log10 t = ln(10) t |grad L|^2 / L < stop_plateau``, after the loss
      has come down 1% from its start (so neither t ~ 0 nor a small init's plateau before its
      escape counts): status ``plateau``. A run converging to a non-zero minimum ends there
      too; one whose loss decays like 1/t (exponential loss on separable data) never does.
      Under ``"events"`` the norm is that of the field the flow follows (the sliding field
      while pairs slide).
    - ``clock``: the time the solver steps in: ``"linear"`` (t itself), ``"log"`` (s = log(1 +
      t), the field times dt/ds = 1 + t: bounded steps per decade where the flow slows like
      1/t, as under the exponential and logistic losses, whose direction converges like
      1/log t) or ``"auto"`` (default: ``"log"`` for the exponential and logistic losses
      with t1 > 1e3, ``"linear"`` otherwise; so under ``"auto"`` a t1 crossing 1e3 compiles
      another program, and a traced t1 means ``"linear"``). Save times, ``t_final`` and
      every output are in t either way; ``Trajectory.method`` ends in ``"+log"`` under the
      log clock. Under both methods.
    - ``max_steps``: step budget per run (under ``solver="auto"`` and ``"plain"``, per phase: the
      explicit steps before a switch and the implicit ones after it have one each; under
      ``"events"`` the run's, both phases together); a run that exhausts it ends with status
      ``max_steps``.
    - ``method``: ``"auto"`` (default: ``"events"`` for nets whose activation has a kink, such
      as ReLU and leaky ReLU, ``"plain"`` otherwise), ``"events"`` (the exact piecewise-smooth
      flow through kinks and sliding modes, :mod:`gfsim.events`; explicit solvers or
      ``"auto"``) or
      ``"plain"`` (Diffrax's ``diffeqsolve`` on the discontinuous field: it may stall where the
      flow slides); or a method object, :class:`gfsim.methods.Events` or
      :class:`gfsim.methods.Plain`, which carries its own solver, budget and adjoint (giving
      ``solver``, ``max_steps``, ``max_sliding``, ``lanes`` or ``adjoint`` here too is an
      error).
    - ``max_sliding``: under ``"events"``, the room for held (sliding) pairs below the first
      hidden layer (first-layer pairs need none). ``None`` (the default): 16, and a run that
      needs more is rerun with four times as much until it fits (``Trajectory.max_sliding``
      says what each run had); an integer fixes it, and a run that needs more ends with status
      ``sliding_capacity``. See :class:`gfsim.methods.Events`.
    - ``lanes``: under ``"events"``, how many runs of a batch the loop advances at once (None,
      the default: all). With fewer lanes than runs, a lane whose run is done takes the next
      pending run, so lanes do not idle while the longest run finishes (the lockstep waste of a
      vmapped solve). Results are the same (steps, events; values to round-off); only cost
      changes. On the 2-core CPU it does not pay: W-A (288 runs) takes the same time at 36, 72
      or 144 lanes as at 288 with waste 0.14-0.37 instead of 0.50, because a loop iteration has
      a fixed cost that more iterations repeat. It is for batches larger than what a device
      runs in parallel.

    - ``adjoint``: how derivatives go through the solve: ``"reverse"`` (default; ``jax.grad``)
      or ``"forward"`` (``jax.jvp``, ``jax.jacfwd``: cheaper for few inputs, such as an init
      scale); under ``method="plain"`` any Diffrax adjoint object too. See
      docs/differentiation.md.
    - ``progress``: show a progress bar (tqdm, on stderr) while the call runs: the fraction of
      ``t1`` the slowest run has reached. Off by default (and then nothing of it is compiled;
      turning it on is another compiled program).

    **Returns:** a :class:`gfsim.Trajectory`.
    """
    check_problem(net, data)
    _check_start(net)
    data = _as_dtype(data, net.weights[0].dtype)
    LOSSES.check(loss, "loss")
    check_reduction(reduction)
    check_scalar(t1, "t1", positive=True)
    check_scalar(rtol, "rtol", positive=True)
    if atol is not None:
        check_scalar(atol, "atol", positive=True)
    if stop_loss is not None:
        check_scalar(stop_loss, "stop_loss", positive=False)
    if stop_grad is not None:
        check_scalar(stop_grad, "stop_grad", positive=True)
    if stop_plateau is not None:
        check_scalar(stop_plateau, "stop_plateau", positive=True)
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r} is not allowed; allowed: "
                         f"{', '.join(map(repr, CLOCKS))}.")
    method = resolve_method(method, net.activation_fn, solver=solver, max_steps=max_steps,
                            max_sliding=max_sliding, lanes=lanes, adjoint=adjoint)
    _check_save_rule(num_saves, decades)
    runs = net.runs or data.runs or 1
    if isinstance(method.solver, _stiff.Auto) and not method.solver.switches(
            net.activation_fn.has_kink, events=isinstance(method, Events)):
        # the plain field of a kinked activation jumps at every kink (the stiffness watch would
        # read the chatter there as stiffness, and Newton needs a smooth field)
        method = dataclasses.replace(method, solver=method.solver.explicit)
    if isinstance(method, Events):
        if not net.activation_fn.has_kink:
            raise ValueError(
                f"method=Events with activation={net.activation!r}: the event-driven solver is "
                "for activations with a kink (relu, leaky_relu); use method='plain'.")
        traced = _tracing((net, data, t1, ts, rtol, atol))
        if method.lanes is None and runs > 1 and not traced and _serial_runs(net, data):
            method = dataclasses.replace(method, lanes=1)
        elif method.lanes is not None and method.lanes >= runs:
            # as many lanes as runs is the lockstep solve: one compiled program for both
            method = dataclasses.replace(method, lanes=None)
        # (inside a trace, "auto" locates: a step through kinks is smooth in its inputs with
        # the sides fixed, so its derivative misses the crossing times' motion)
        method = method.resolved(None if traced else rtol, int(data.X.shape[-2]))
    dtype = net.weights[0].dtype
    # Host values go in as NumPy arrays (traced by the jit without a device dispatch each).
    log_time = _log_clock(clock, loss, t1)
    t1, rtol, stop, stop_g, stop_p = (_as_array(x, dtype) for x in (
        t1, rtol, -np.inf if stop_loss is None else stop_loss,
        0.0 if stop_grad is None else stop_grad, 0.0 if stop_plateau is None else stop_plateau))
    atol = rtol * 1e-3 if atol is None else _as_array(atol, dtype)
    if ts is not None:
        _check.real_array(ts, "ts")
        ts = _as_array(ts, dtype)
        _check.finite(ts, "ts")
        if ts.ndim != 1 or ts.shape[0] < 1:
            raise ValueError(f"ts must be a 1-D array of save times; got shape {ts.shape}.")
        if not isinstance(ts, jax.core.Tracer) and not isinstance(t1, jax.core.Tracer):
            t = np.asarray(ts)
            if np.any(np.diff(t) < 0) or t[0] < 0 or t[-1] > float(t1):
                raise ValueError("ts must be non-decreasing times within [0, t1].")
    cfg = _Static(
        method=method,
        loss=loss,
        reduction=reduction,
        # Only used to build default save times: fixed when ts is given, so no recompiles.
        num_saves=num_saves if ts is None else 0,
        decades=float(decades) if ts is None else 0.0,
        has_stop=stop_loss is not None,
        has_stop_grad=stop_grad is not None,
        net_batched=net.is_batched,
        data_batched=data.is_batched,
        progress=_check_flag(progress, "progress"),
        has_stop_plateau=stop_plateau is not None,
        log_time=log_time,
    )
    stops = (stop, stop_g, stop_p)

    def solve(net, data, cfg, start=None):
        # a stored export of this solve's traced program, when one applies (gfsim._exported)
        args = (net, data, t1, ts, rtol, atol, stops, start)
        res = _exported.cached_call(_run, args, cfg)
        return res if res is not None else _run(*args, cfg)

    never_stiff = False
    if isinstance(method.solver, _stiff.Auto):
        if not _tracing((net, data, t1, ts, rtol, atol, stops)):
            # outside a trace, the implicit phase is compiled and run only for the runs that
            # switched (most calls never do): see _finish_stiff
            cfg = dataclasses.replace(cfg, stiff_phase="explicit")
        elif isinstance(method, Events):
            # inside one, the event solver steps explicitly throughout (its implicit phase is
            # a continuation the host starts); its t_stiff says never (NaN), as outside
            cfg = dataclasses.replace(cfg, method=dataclasses.replace(
                method, solver=method.solver.explicit))
            never_stiff = True

    def call(net, data, cfg):
        ts_, raw = solve(net, data, cfg)
        if "_resume" in raw:
            raw = dict(raw)
            raw = _finish_stiff(raw, raw.pop("_resume"), ts_, net, data, cfg, solve)
        events = isinstance(cfg.method, Events)
        runs_ = net.runs or data.runs or 1
        traj = RawResult(**raw).trajectory(
            ts_,
            loss_name=loss,
            reduction=reduction,
            activation=net.activation,
            method=cfg.method.label() + ("+log" if cfg.log_time else ""),
            lanes=(cfg.method.lanes or runs_) if events else None,
        )
        if never_stiff:
            traj = eqx.tree_at(lambda t: t.t_stiff, traj,
                               jnp.full(traj.status.shape, jnp.nan, traj.t_final.dtype),
                               is_leaf=lambda x: x is None)
        if events:
            room = cfg.method.max_sliding or _methods.SLIDING_START
            traj = eqx.tree_at(lambda t: t.max_sliding, traj,
                               jnp.full(traj.status.shape, room, jnp.int32),
                               is_leaf=lambda x: x is None)
        return traj

    traj = call(net, data, cfg)
    if isinstance(method, Events) and method.max_sliding is None:
        traj = _rerun_for_room(traj, net, data, cfg, call)
    return traj


CLOCKS = ("auto", "linear", "log")
# clock="auto": log time for these losses when t1 is beyond this
LOG_CLOCK_AFTER = 1e3


def _log_clock(clock, loss, t1) -> bool:
    """Whether a call steps in s = log(1 + t) (see ``simulate(..., clock=...)``)."""
    if clock != "auto":
        return clock == "log"
    if loss not in ("exponential", "logistic") or isinstance(t1, jax.core.Tracer):
        return False
    return float(np.asarray(t1)) > LOG_CLOCK_AFTER


def _serial_runs(net, data) -> bool:
    """Whether the event solver's default (``lanes=None``) advances the runs of a batch one
    after another (one refilled lane) rather than in lockstep: on the CPU, where a run's work
    per field evaluation (points x weights) is at least :data:`gfsim.methods.SERIAL_WORK`.
    There a batch gains next to nothing from being vectorised, and in lockstep every lane pays
    for the iterations of the run with the most events (W-E quick, n = 256, width 64, 4 seeds:
    one lane 22 s against 77 s in lockstep, square loss at rtol 1e-5)."""
    if jax.default_backend() != "cpu":
        return False
    weights = sum(int(np.prod(w.shape[-2:])) for w in net.weights)
    return int(data.X.shape[-2]) * weights >= _methods.SERIAL_WORK


def _tracing(inputs) -> bool:
    """Whether this call is being traced: an input is a tracer (``jax.grad``, ``jax.vmap``, a
    ``jit`` of a function of them), or a trace is open around it (a ``jit`` of a function that
    closes over concrete inputs, ``lax.scan``: new arrays are tracers there)."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(inputs)):
        return True
    return isinstance(jnp.zeros(()) + 0, jax.core.Tracer)


def _bucket(n: int, runs: int) -> int:
    """How many runs the implicit phase is compiled for when ``n`` of ``runs`` switched: the
    next power of two (at most ``runs``), so a call whose switch count changes reuses one of
    a few programs, not one per count."""
    return min(runs, 1 << max(0, int(n - 1).bit_length()))


def _finish_stiff(raw, resume, ts, net, data, cfg, solve):
    """The implicit phase of the runs whose watched explicit phase switched (``t_stiff``
    finite), from their switch to their end, merged into ``raw`` (the explicit phase's
    result). Under the plain method the same arithmetic as the one-program solve inside a
    trace; a call whose runs never switch neither compiles nor runs the implicit phase."""
    batched = cfg.net_batched or cfg.data_batched
    switched = np.atleast_1d(np.isfinite(np.asarray(raw["t_stiff"])))
    rows = np.flatnonzero(switched)
    if rows.size == 0:
        return raw
    events = isinstance(cfg.method, Events)
    lead = (lambda a: a) if batched else (lambda a: a[None])  # noqa: E731
    # the switched runs, padded to a bucket by repeating the first (the copies are dropped)
    padded = np.concatenate([rows, np.full(_bucket(rows.size, switched.size) - rows.size,
                                           rows[0])])
    pick = lambda tree, r=padded: jax.tree_util.tree_map(  # noqa: E731
        lambda a: lead(a)[r], tree)
    sub_net = pick(net) if cfg.net_batched else net
    sub_data = pick(data) if cfg.data_batched else data
    start = pick(resume) if batched else resume
    later_cfg = dataclasses.replace(cfg, stiff_phase="implicit")
    if events:  # (no refill: each lane starts from its own hand-over)
        later_cfg = dataclasses.replace(later_cfg, method=dataclasses.replace(
            cfg.method, lanes=None))
    _, sub = solve(sub_net, sub_data, later_cfg, start)
    loops = sub.pop("loop_steps", None)
    sub = jax.tree_util.tree_map(
        (lambda a: a[: rows.size]) if batched else (lambda a: a[None]), sub)
    clock = jnp.log1p(jnp.asarray(ts)) if cfg.log_time else jnp.asarray(ts)
    later = clock[None, :] > jnp.asarray(pick(resume["t"], rows))[:, None]  # (rows, T)

    def merge(field, old, new):
        if field == "loop_steps":  # the loop's iterations, batch-wide: both phases'
            return old + loops
        old = lead(old)
        if field in ("loss", "weights", "biases", "sliding"):  # (runs, T, ...): after the switch
            keep = old[rows]
            wide = later.reshape(later.shape + (1,) * (new.ndim - 2))
            new = jnp.where(wide, new, keep)
        elif field in ("num_steps", "num_accepted", "num_rejected") and not events:
            new = old[rows] + new  # (the event solver's implicit phase goes on counting)
        elif field == "t_stiff":
            new = old[rows]
        out = old.at[rows].set(new)
        return out if batched else out[0]

    return {f: (v if v is None else jax.tree_util.tree_map(
        lambda o, n, f=f: merge(f, o, n), v, sub.get(f, v))) for f, v in raw.items()}


def _rerun_for_room(traj, net, data, cfg, call):
    """Under ``max_sliding=None``: rerun the runs that ended ``sliding_capacity`` with four times
    the room, until each fits or has room for every pair below the first hidden layer. (Inside
    a trace the outcome is not known: the call keeps its starting room.)"""
    if isinstance(traj.status, jax.core.Tracer):
        return traj
    points = data.X.shape[-2]
    most = points * sum(w.shape[-2] for w in net.weights[1:-1])  # pairs below the first layer
    room = _methods.SLIDING_START
    while room < most:
        over = np.atleast_1d(np.asarray(traj.status)) == Status.SLIDING_CAPACITY
        if not over.any():
            break
        room = min(4 * room, most)
        method = dataclasses.replace(cfg.method, max_sliding=room)
        if not traj.is_batched:
            loops = traj.loop_steps
            traj = call(net, data, dataclasses.replace(cfg, method=method))
            traj = eqx.tree_at(lambda t: t.loop_steps, traj, traj.loop_steps + loops)
            continue
        rows = np.flatnonzero(over)
        pick = lambda tree, batched, rows=rows: (jax.tree_util.tree_map(  # noqa: E731
            lambda a: a[rows], tree) if batched else tree)
        sub_net, sub_data = pick(net, cfg.net_batched), pick(data, cfg.data_batched)
        if method.lanes is not None and method.lanes >= rows.size:
            method = dataclasses.replace(method, lanes=None)
        sub = call(sub_net, sub_data, dataclasses.replace(cfg, method=method))
        traj = _merge_runs(traj, rows, sub)
    return traj


def _merge_runs(traj, rows, sub):
    """``traj`` with its runs ``rows`` replaced by the runs of ``sub`` (the batch-wide fields:
    the save times kept, the loop iterations added up)."""
    keep = lambda t: (t.ts, t.loop_steps)  # noqa: E731
    bare = lambda t: eqx.tree_at(keep, t, (None, None), is_leaf=lambda x: x is None)  # noqa: E731
    sub = dataclasses.replace(sub, lanes=traj.lanes)  # (static: the batch's own count)
    merged = jax.tree_util.tree_map(lambda a, b: a.at[rows].set(b), bare(traj), bare(sub))
    loops = traj.loop_steps + sub.loop_steps
    return eqx.tree_at(keep, merged, (traj.ts, loops), is_leaf=lambda x: x is None)


def grid(nets: MLP, datasets: Dataset) -> tuple[MLP, Dataset]:
    """Every net of a batch with every dataset of a batch: returns a batch of
    ``nets.runs * datasets.runs`` pairs, dataset-major (run = dataset * n_nets + net)."""
    if not (nets.is_batched and datasets.is_batched):
        raise ValueError("grid needs a batch of nets and a batch of datasets.")
    a, b = nets.runs, datasets.runs
    n = jax.tree_util.tree_map(lambda x: jnp.tile(x, (b,) + (1,) * (x.ndim - 1)), nets)
    d = jax.tree_util.tree_map(lambda x: jnp.repeat(x, a, axis=0), datasets)
    return n, d
