"""Stiff tails, long horizons and the plateau rule (issue 16), against independent truths: the
least-squares solution a linear net converges to, the explicit solver at the same tolerance,
finite differences, and the direction of the max-margin limit at two tolerances."""

from __future__ import annotations

import re

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gfsim
from gfsim.stiff import Auto, stability_boundary

# A depth-2 linear net on 10 generic points in 3-D with 2-D targets: the product W2 W1 can fit
# at best the least-squares map, and the loss stays above zero (an unfittable target).
X = jax.random.normal(jax.random.key(0), (10, 3))
Y = jax.random.normal(jax.random.key(1), (10, 2))
DATA = gfsim.Dataset(X, Y)
NETS = gfsim.MLP((3, 4, 2), activation="linear", key=jax.random.key(2), runs=3)
W_LSTSQ = np.linalg.lstsq(np.asarray(X), np.asarray(Y), rcond=None)[0].T
L_LSTSQ = float(np.mean((np.asarray(X) @ W_LSTSQ.T - np.asarray(Y)) ** 2))


def e2e(traj):
    return np.asarray(traj.final_weights[1] @ traj.final_weights[0])


def test_tsit5_stability_boundary():
    # |R(z)| <= 1 on [-3.5, 0] for Tsitouras 5(4) (the figure of his paper), 3.3 for DOPRI5
    assert stability_boundary(diffrax.Tsit5.tableau) == pytest.approx(3.5, abs=0.01)
    assert stability_boundary(diffrax.Dopri5.tableau) == pytest.approx(3.3, abs=0.01)


@pytest.fixture(scope="module")
def unfittable():
    return gfsim.simulate(NETS, DATA, 1e4, rtol=1e-8)


def test_unfittable_target_switches_to_implicit_and_ends_at_least_squares(unfittable):
    tr = unfittable
    assert tr.method == "gf:auto(tsit5>kvaerno5)"
    assert np.all(tr.status_labels() == "reached_t1")
    # the acceptance case: t1 = 1e4 at rtol 1e-8 in at most 300 steps
    assert np.all(np.asarray(tr.num_steps) <= 300), tr.num_steps
    t_stiff = np.asarray(tr.t_stiff)
    assert np.all(np.isfinite(t_stiff)) and np.all((t_stiff > 0) & (t_stiff < 1e4))
    err = np.abs(e2e(tr) - W_LSTSQ[None]).max() / np.abs(W_LSTSQ).max()
    assert err < 1e-8, err
    np.testing.assert_allclose(np.asarray(tr.final_loss), L_LSTSQ, rtol=1e-10)


def test_newton_systems_by_conjugate_gradients_match_dense_lu(unfittable):
    # the default solves the implicit stages' Newton systems matrix-free (CG on I + gamma h H);
    # dense LU of the materialised Jacobian takes the same steps to the same end
    lu = gfsim.simulate(NETS, DATA, 1e4, rtol=1e-8, solver=Auto(linear_solver="dense"))
    assert np.abs(np.asarray(lu.num_steps) - np.asarray(unfittable.num_steps)).max() <= 2
    np.testing.assert_allclose(e2e(lu), e2e(unfittable), atol=1e-10)
    np.testing.assert_allclose(np.asarray(lu.t_stiff), np.asarray(unfittable.t_stiff),
                               rtol=1e-6)


def test_a_net_of_many_parameters_switches_too():
    # matrix-free Newton systems: no size limit on the switch (a net of 1,120 parameters, which
    # no longer stays explicit), and the end is the least-squares map
    k = jax.random.split(jax.random.key(5), 3)
    X, Y = jax.random.normal(k[0], (60, 20)), jax.random.normal(k[1], (60, 8))
    net = gfsim.MLP((20, 40, 8), activation="linear", key=k[2])
    assert net.num_params == 1120
    tr = gfsim.simulate(net, gfsim.Dataset(X, Y), 1e4, rtol=1e-8, num_saves=2)
    assert tr.method == "gf:auto(tsit5>kvaerno5)" and np.isfinite(float(tr.t_stiff))
    assert tr.status_labels() == "reached_t1" and int(tr.num_steps) <= 400, int(tr.num_steps)
    W = np.linalg.lstsq(np.asarray(X), np.asarray(Y), rcond=None)[0].T
    err = np.abs(np.asarray(tr.final_weights[1] @ tr.final_weights[0]) - W).max()
    assert err < 1e-8 * np.abs(W).max(), err


def test_the_explicit_solver_alone_is_stability_limited_there(unfittable):
    # the same runs on Tsit5 throughout: the same end, at many times the steps (the tail is
    # stiff: what the switch is for)
    one = gfsim.simulate(NETS[0], DATA, 1e4, rtol=1e-8, solver="tsit5", max_steps=50_000)
    assert one.t_stiff is None
    assert int(one.num_steps) > 20 * int(unfittable.num_steps[0])
    np.testing.assert_allclose(e2e(one), e2e(unfittable)[0], atol=1e-8)


def test_saves_across_the_switch_agree_with_the_explicit_solver(unfittable):
    # every save time, before and after the switch, against Tsit5 at a tighter tolerance
    ref = gfsim.simulate(NETS, DATA, 1e4, rtol=1e-11, solver="tsit5", max_steps=50_000)
    for a, b in zip(unfittable.weights, ref.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
    np.testing.assert_allclose(np.asarray(unfittable.loss), np.asarray(ref.loss), rtol=1e-6)


def test_a_stiff_start_gets_through_where_tsit5_runs_out_and_matches_radau():
    # a linear net with weights x 1e3 (tests/test_failing_runs.py: on Tsit5 alone, 2000 steps
    # reach t = 0.005): stiff from its first steps; the end against scipy's Radau at rtol 1e-11
    from helpers import scipy_flow

    key = jax.random.key(0)
    data = gfsim.data.sphere(key, 3, 2)
    w = [1e3 * np.asarray(a)[1] for a in gfsim.MLP((2, 3, 1), "linear", key=key,
                                                     runs=3).weights]
    net = gfsim.MLP.from_weights(w, "linear")
    tr = gfsim.simulate(net, data, 10.0, num_saves=2, max_steps=2000)
    assert tr.status_labels() == "reached_t1" and int(tr.num_steps) < 500
    assert float(tr.t_stiff) < 1e-2
    ref, unravel = scipy_flow(net, data, [0.0, 10.0], reduction="mean", rtol=1e-11,
                              atol=1e-11, method="Radau")
    end = unravel(jnp.asarray(ref[-1]))
    for a, b in zip(tr.final_weights, end):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_a_flow_that_is_not_stiff_never_switches():
    # t1 = 1: the escape from the init, steps limited by accuracy, not stability
    tr = gfsim.simulate(NETS[0], DATA, 1.0, rtol=1e-8)
    assert np.isnan(float(tr.t_stiff)) and tr.status_labels() == "reached_t1"


def test_gradients_through_a_switched_run_match_finite_differences():
    # d/dc of |W1|^2 at the end, from the init c * W: it depends on c at convergence too (the
    # flow conserves W1 W1^T - W2^T W2, so where on the manifold of minima it ends does), and
    # goes through both phases (the switch time is a discrete choice the trajectory does not
    # depend on, up to the tolerance). Reverse and forward mode.
    # (horizon=0: a switch however few explicit steps are left before t1 = 200)
    net, eager = NETS[0], Auto(horizon=0)

    def end_norm(c, adjoint="reverse"):
        n = gfsim.MLP.from_weights([c * w for w in net.weights], "linear")
        tr = gfsim.simulate(n, DATA, 200.0, rtol=1e-10, num_saves=2, adjoint=adjoint,
                            solver=eager)
        return jnp.sum(tr.final_weights[0] ** 2)

    probe = gfsim.simulate(net, DATA, 200.0, rtol=1e-10, num_saves=2, solver=eager)
    assert float(probe.t_stiff) < 200.0  # the switch happens inside [0, t1]
    # (by default it does not: fewer than Auto.horizon explicit steps are left at t ~ 56)
    default = gfsim.simulate(net, DATA, 200.0, rtol=1e-10, num_saves=2)
    assert np.isnan(float(default.t_stiff)) and int(default.num_steps) > int(probe.num_steps)
    np.testing.assert_allclose(e2e(default), e2e(probe), atol=1e-8)
    g = float(jax.grad(end_norm)(1.0))
    jvp = float(jax.jvp(lambda c: end_norm(c, "forward"), (1.0,), (1.0,))[1])
    eps = 1e-4
    fd = (float(end_norm(1.0 + eps)) - float(end_norm(1.0 - eps))) / (2 * eps)
    assert abs(fd) > 1e-2  # not a derivative that is ~0 anyway
    assert g == pytest.approx(fd, rel=1e-5)
    assert jvp == pytest.approx(fd, rel=1e-5)


def test_a_batch_of_switched_and_unswitched_runs_is_each_run_alone():
    # run 1 starts at zero weights (a stationary point: no steps to speak of, never stiff)
    zero = gfsim.MLP.from_weights([0.0 * w for w in NETS[0].weights], "linear")
    both = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), NETS[0], zero)
    tr = gfsim.simulate(both, DATA, 1e4, rtol=1e-8)
    assert np.isfinite(float(tr.t_stiff[0])) and np.isnan(float(tr.t_stiff[1]))
    for i, one in enumerate((NETS[0], zero)):
        alone = gfsim.simulate(one, DATA, 1e4, rtol=1e-8)
        assert int(alone.num_steps) == int(tr.num_steps[i])
        np.testing.assert_allclose(np.asarray(tr.loss[i]), np.asarray(alone.loss), rtol=1e-12)
        for u, v in zip(tr.weights, alone.weights):
            np.testing.assert_allclose(np.asarray(u[i]), np.asarray(v), atol=1e-12)
    # and the store keeps when each run switched
    ds = gfsim.store.to_xarray(tr)
    np.testing.assert_array_equal(ds["t_stiff"].values, np.asarray(tr.t_stiff))


def test_relu_under_the_plain_method_stays_explicit():
    # the plain field of a ReLU net jumps at its kinks: no stiffness watch, no Newton there
    relu = gfsim.MLP((3, 4, 2), key=jax.random.key(9))
    tr = gfsim.simulate(relu, DATA, 1.0, method="plain", num_saves=2)
    assert tr.method == "gf:tsit5" and tr.t_stiff is None


# -- long horizons: the exponential loss on separable data, to t1 = 1e20 ------------------------

XS = jax.random.normal(jax.random.key(3), (12, 3))
YS = jnp.sign(XS @ jnp.array([1.0, -0.5, 0.3]))[:, None]
SEPARABLE = gfsim.Dataset(XS, YS)
CLASSIFIER = gfsim.MLP((3, 4, 1), activation="linear", key=jax.random.key(4), scale=0.5)


def _direction(tr):
    w = e2e(tr).ravel()
    return w / np.linalg.norm(w)


def test_log_clock_bounded_steps_per_decade_and_the_direction_at_two_tolerances():
    steps, dirs = {}, {}
    for rtol in (1e-6, 1e-8):
        for k in (12, 20):
            tr = gfsim.simulate(CLASSIFIER, SEPARABLE, 10.0 ** k, num_saves=2, rtol=rtol,
                                loss="exponential")
            assert tr.status_labels() == "reached_t1"
            assert float(tr.t_final) == pytest.approx(10.0 ** k, rel=1e-12)
            steps[rtol, k] = int(tr.num_steps)
        dirs[rtol] = _direction(tr)
    # the last 8 decades, 1e12 -> 1e20: a bounded number of steps each
    per_decade = {r: (steps[r, 20] - steps[r, 12]) / 8 for r in (1e-6, 1e-8)}
    assert per_decade[1e-8] <= 30 and per_decade[1e-6] <= 30, per_decade
    assert np.abs(dirs[1e-6] - dirs[1e-8]).max() < 1e-6


def test_log_clock_equals_the_linear_one_at_the_save_times():
    ts = jnp.concatenate([jnp.zeros(1), jnp.logspace(-2, 4, 13)])
    a = gfsim.simulate(CLASSIFIER, SEPARABLE, 1e4, ts=ts, rtol=1e-10, loss="exponential",
                       clock="log")
    b = gfsim.simulate(CLASSIFIER, SEPARABLE, 1e4, ts=ts, rtol=1e-10, loss="exponential",
                       clock="linear")
    np.testing.assert_allclose(np.asarray(a.ts), np.asarray(ts))
    np.testing.assert_allclose(np.asarray(a.loss), np.asarray(b.loss), rtol=1e-7)
    for u, v in zip(a.weights, b.weights):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-7)


# -- the event solver: the same clock and plateau rule ------------------------------------------

RELU_DATA = gfsim.data.teacher_student(jax.random.key(7), n=16, dim=3)
RELU = gfsim.MLP((3, 8, 8, 1), key=jax.random.key(8), scale=0.5)


def test_events_log_clock_equals_the_linear_one_through_its_crossings():
    # (num_saves=2: the log-clock program is the one the next test uses)
    a = gfsim.simulate(RELU, RELU_DATA, 1e3, num_saves=2, loss="exponential", clock="log",
                       rtol=1e-10)
    b = gfsim.simulate(RELU, RELU_DATA, 1e3, num_saves=2, loss="exponential", clock="linear",
                       rtol=1e-10)
    assert a.status_labels() == b.status_labels() == "reached_t1"
    assert float(a.t_final) == 1e3
    assert int(a.num_crossings) == int(b.num_crossings) > 0
    np.testing.assert_allclose(float(a.final_loss), float(b.final_loss), rtol=1e-7)
    for u, v in zip(a.final_weights, b.final_weights):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-7)
    # fewer steps in log time, even over three decades
    assert int(a.num_steps) < int(b.num_steps)


def test_events_exponential_loss_to_1e20_bounded_steps_per_decade():
    steps, dirs = {}, {}
    for rtol in (1e-6, 1e-8):
        for k in (12, 20):
            tr = gfsim.simulate(RELU, RELU_DATA, 10.0 ** k, num_saves=2, rtol=rtol,
                                loss="exponential")
            assert tr.status_labels() == "reached_t1"
            steps[rtol, k] = int(tr.num_steps)
        v = np.concatenate([np.asarray(w).ravel() for w in tr.final_weights])
        dirs[rtol] = v / np.linalg.norm(v)
    per_decade = {r: (steps[r, 20] - steps[r, 12]) / 8 for r in (1e-6, 1e-8)}
    assert max(per_decade.values()) <= 10, per_decade
    assert np.abs(dirs[1e-6] - dirs[1e-8]).max() < 1e-6


def test_events_plateau_rule_on_labels_no_net_can_fit():
    # four points repeated with the opposite label: at each pair the best output is 0, so the
    # mean square loss is at least 4 * 2 / 20 = 0.4, whatever the net
    X = jnp.concatenate([RELU_DATA.X, RELU_DATA.X[:4]])
    Y = jnp.concatenate([RELU_DATA.Y, -RELU_DATA.Y[:4]])
    tr = gfsim.simulate(RELU, gfsim.Dataset(X, Y), 1e4, num_saves=2, stop_plateau=1e-3)
    assert tr.status_labels() == "plateau" and float(tr.t_final) < 1e4
    assert 0.4 <= float(tr.final_loss) < 0.41
    assert float(tr.final_loss) < 0.99 * float(tr.loss[0])  # armed: it came down first


# -- the plateau rule --------------------------------------------------------------------------

def test_plateau_rule_stops_at_the_unfittable_minimum():
    tr = gfsim.simulate(NETS[0], DATA, 1e4, rtol=1e-8, stop_plateau=1e-6)
    assert tr.status_labels() == "plateau"
    assert float(tr.t_final) < 1e4
    # it fired in the explicit phase (before the steps became stability-limited, t ~ 47)
    assert np.isnan(float(tr.t_stiff))
    # a far smaller tolerance waits into the implicit phase: the stop is found there
    late = gfsim.simulate(NETS[0], DATA, 1e4, rtol=1e-8, stop_plateau=1e-20)
    assert late.status_labels() == "plateau"
    assert float(late.t_stiff) < float(late.t_final) < 1e4
    # at the stop the loss decreases by < 1e-6 of itself per decade: it is at L* to ~1e-7
    assert float(tr.final_loss) == pytest.approx(L_LSTSQ, rel=1e-6)
    # later save slots are NaN, like any early stop
    assert np.isnan(np.asarray(tr.loss)[-1])


def test_plateau_rule_lets_a_small_init_escape_and_never_stops_a_1_over_t_decay():
    small = gfsim.MLP((3, 4, 2), activation="linear", key=jax.random.key(5), scale=1e-4)
    tr = gfsim.simulate(small, DATA, 1e4, rtol=1e-8, stop_plateau=1e-6)
    # the saddle at the origin holds it for a while: not a plateau by the rule (the loss has
    # not come down 1% yet), so the run escapes and ends at the least-squares minimum
    assert tr.status_labels() == "plateau"
    assert float(tr.final_loss) == pytest.approx(L_LSTSQ, rel=1e-6)
    exp = gfsim.simulate(CLASSIFIER, SEPARABLE, 1e8, num_saves=2, loss="exponential",
                         stop_plateau=1e-3)
    assert exp.status_labels() == "reached_t1"  # -dlnL/dlog10 t -> ln 10 under 1/t decay


# -- arguments ---------------------------------------------------------------------------------

def test_steps_to_go_counts_steps_like_the_present_one():
    from gfsim.stiff import steps_to_go
    assert float(steps_to_go(2.0, 0.5, 10.0)) == pytest.approx(16.0)
    assert float(steps_to_go(10.0, 0.5, 10.0)) == 0.0
    assert float(steps_to_go(0.0, 0.0, 10.0)) > 1e300  # (a zero step: huge or inf, not NaN)
    # under the log clock, in s = log(1 + t): steps of a fixed wall-time length would be at
    # least as many (a lower bound, so no switch for steps a run may not need)
    s, h, s1 = np.log1p(1e3), 0.5, np.log1p(1e20)
    in_s = float(steps_to_go(s, h, s1))
    assert in_s == pytest.approx((s1 - s) / h)
    assert in_s < (1e20 - 1e3) / (np.expm1(s + h) - 1e3)


@pytest.mark.parametrize("kw, field", [
    (dict(stop_plateau=0.0), "stop_plateau"),
    (dict(stop_plateau=-1.0), "stop_plateau"),
    (dict(stop_plateau=float("nan")), "stop_plateau"),
    (dict(stop_plateau="1e-3"), "stop_plateau"),
    (dict(clock="logarithmic"), "clock"),
    (dict(clock=None), "clock"),
    (dict(solver="implicit"), "solver"),
])
def test_bad_stiff_and_clock_arguments_fail_before_tracing(kw, field):
    before = gfsim.flow.trace_count()
    with pytest.raises(ValueError, match=field):
        gfsim.simulate(NETS[0], DATA, 1.0, **kw)
    assert gfsim.flow.trace_count() == before


@pytest.mark.parametrize("kw, field", [
    (dict(explicit=diffrax.Bosh3()), "explicit"),
    (dict(explicit=diffrax.Kvaerno5()), "explicit"),
    (dict(patience=0), "patience"),
    (dict(patience=2.0), "patience"),
    (dict(threshold=0.0), "threshold"),
    (dict(threshold=1.5), "threshold"),
    (dict(linear_solver="lu"), "linear_solver"),
    (dict(events=1), "events"),
    (dict(horizon=-1.0), "horizon"),
    (dict(horizon=float("inf")), "horizon"),
    (dict(horizon="2000"), "horizon"),
])
def test_auto_arguments(kw, field):
    with pytest.raises(ValueError, match=field):
        Auto(**kw)


def test_the_host_side_switch_is_the_one_program_solve(unfittable):
    # outside a trace the implicit phase runs on the host's say, for the runs that switched
    # only (gfsim.flow._finish_stiff); inside one (a user's jit) both phases are one program:
    # the same runs, the same steps, the same numbers
    traced = jax.jit(lambda n: gfsim.simulate(n, DATA, 1e4, rtol=1e-8))(NETS)
    for f in ("num_steps", "num_rejected", "status"):
        np.testing.assert_array_equal(np.asarray(getattr(unfittable, f)),
                                      np.asarray(getattr(traced, f)))
    for f in ("loss", "final_loss", "t_final", "t_stiff"):
        np.testing.assert_allclose(np.asarray(getattr(unfittable, f)),
                                   np.asarray(getattr(traced, f)), rtol=1e-12)
    for a, b in zip(unfittable.weights + unfittable.final_weights,
                    traced.weights + traced.final_weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)


# -- stiff steps between events (the event solver) ---------------------------------------------

# A ReLU net whose units stay active on every point (inputs in the positive orthant, positive
# first-layer weights): no event, and its flow is the linear net's from the same weights, so it
# ends at the least-squares map of its targets (unfittable: 12 points, 3 inputs), in a stiff tail.
_K = jax.random.split(jax.random.key(3), 4)
POS = gfsim.Dataset(jnp.abs(jax.random.normal(_K[0], (12, 3))) + 0.5,
                    jax.random.normal(_K[1], (12, 2)))
POS_W = [jnp.abs(jax.random.normal(_K[2], (4, 3))) * 0.5 + 0.3,
         0.3 * jax.random.normal(_K[3], (2, 4))]
# a solver="auto" that switches however few explicit steps are left before t1 (horizon=0)
EAGER = Auto(horizon=0)
POS_LSTSQ = np.linalg.lstsq(np.asarray(POS.X), np.asarray(POS.Y), rcond=None)[0].T


@pytest.fixture(scope="module")
def relu_tail():
    return gfsim.simulate(gfsim.MLP.from_weights(POS_W, "relu"), POS, 1e4, num_saves=8,
                          rtol=1e-8)


def test_events_stiff_tail_steps_implicitly_and_ends_at_least_squares(relu_tail):
    tr = relu_tail
    assert tr.method == "gf:auto(tsit5>kvaerno5)+events"
    assert tr.status_labels() == "reached_t1" and int(tr.num_crossings) == 0
    assert 0 < float(tr.t_stiff) < 1e4
    # Tsit5 throughout takes 110,374 steps here (measured; too slow for the suite)
    assert int(tr.num_steps) <= 1000, int(tr.num_steps)
    e2e_ = np.asarray(tr.final_weights[1] @ tr.final_weights[0])
    assert np.abs(e2e_ - POS_LSTSQ).max() < 1e-8 * np.abs(POS_LSTSQ).max()
    # the linear net from the same weights, under the plain method: the same flow, at every
    # save time (both phases)
    lin = gfsim.simulate(gfsim.MLP.from_weights(POS_W, "linear"), POS, 1e4, num_saves=8,
                         rtol=1e-8)
    assert np.isfinite(float(lin.t_stiff))
    np.testing.assert_allclose(np.asarray(tr.loss), np.asarray(lin.loss), rtol=1e-7)
    for a, b in zip(tr.weights, lin.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_events_stiff_batch_and_refilled_lanes_are_each_run_alone(relu_tail):
    # run 0 turns stiff; run 1 (weights x 0.1, on the same data) too, later; with one lane
    # the runs go through it one after the other and are handed over from the refill record
    ws = [jnp.stack([w, 0.1 * w]) for w in POS_W]
    nets = gfsim.MLP.from_weights(ws, "relu")
    both = gfsim.simulate(nets, POS, 1e4, num_saves=8, rtol=1e-8)
    one_lane = gfsim.simulate(nets, POS, 1e4, num_saves=8, rtol=1e-8, lanes=1)
    # (a batched Newton solve rounds differently from a single one, and its lockstep CG
    # iterations depend on the other run, which slides here (15 slides: its steps follow the
    # sliding rule): a few steps may move; measured 4 of 604, and 5 between the batched and the
    # one-lane solve)
    assert abs(int(both.num_steps[0]) - int(relu_tail.num_steps)) <= 6
    np.testing.assert_allclose(np.asarray(both.loss[0]), np.asarray(relu_tail.loss), rtol=1e-9)
    np.testing.assert_array_equal(both.status_labels(), one_lane.status_labels())
    assert np.abs(np.asarray(both.num_steps) - np.asarray(one_lane.num_steps)).max() <= 6
    np.testing.assert_allclose(np.asarray(both.loss), np.asarray(one_lane.loss), rtol=1e-9)
    # (the switch is a discrete choice: where h rho hovers at the stability boundary, a
    # rounding may move it by a step)
    np.testing.assert_allclose(np.asarray(both.t_stiff), np.asarray(one_lane.t_stiff),
                               rtol=1e-2)
    assert np.all(np.isfinite(np.asarray(both.t_stiff)))
    assert float(both.t_stiff[1]) > float(both.t_stiff[0])


def test_events_inside_a_trace_step_explicitly():
    # the implicit phase is a continuation the host starts: under jit, Tsit5 throughout (the
    # same flow to the tolerance; t1 = 200 is past the switch at t ~ 41), and t_stiff says so
    relu = gfsim.MLP.from_weights(POS_W, "relu")
    host = gfsim.simulate(relu, POS, 200.0, num_saves=4, rtol=1e-8, solver=EAGER)
    traced = jax.jit(lambda n: gfsim.simulate(n, POS, 200.0, num_saves=4, rtol=1e-8,
                                              solver=EAGER))(relu)
    assert np.isfinite(float(host.t_stiff)) and np.isnan(float(traced.t_stiff))
    assert traced.method == "gf:tsit5+events"
    assert int(traced.num_steps) > int(host.num_steps)
    np.testing.assert_allclose(np.asarray(host.loss), np.asarray(traced.loss), rtol=1e-6)


def test_events_default_switches_only_with_enough_explicit_steps_to_go(relu_tail):
    # by default a stiff run switches only while more than Auto.horizon explicit steps are
    # left to t1: this one does to t1 = 1e4 (relu_tail), and not to t1 = 200, where it ends
    # with Tsit5's steps (a switch at t ~ 41 would have saved fewer than that)
    relu = gfsim.MLP.from_weights(POS_W, "relu")
    short = gfsim.simulate(relu, POS, 200.0, num_saves=4, rtol=1e-8)
    traced = jax.jit(lambda n: gfsim.simulate(n, POS, 200.0, num_saves=4, rtol=1e-8))(relu)
    assert short.method == "gf:auto(tsit5>kvaerno5)+events" and np.isnan(float(short.t_stiff))
    assert int(short.num_steps) == int(traced.num_steps)
    # (it is stiff there: without the horizon it switches)
    eager = gfsim.simulate(relu, POS, 200.0, num_saves=4, rtol=1e-8, solver=EAGER)
    assert 0 < float(eager.t_stiff) < 200.0
    assert np.isfinite(float(relu_tail.t_stiff))


def test_progress_bar_of_a_switching_run_reads_where_it_was_handed_over(relu_tail, capfd):
    # two bars, one per phase: the explicit one stops at the hand-over (not at 100%), the
    # implicit one ends at t1; the run is the run without a bar
    capfd.readouterr()
    shown = gfsim.simulate(gfsim.MLP.from_weights(POS_W, "relu"), POS, 1e4, num_saves=8,
                           rtol=1e-8, progress=True)
    pct = [float(x) for x in re.findall(r"(\d+\.\d+)%\|", capfd.readouterr().err)]
    # (every refresh of either bar, in order: the second bar starts where the reading drops)
    starts = [i for i in range(1, len(pct)) if pct[i] < pct[i - 1]]
    assert len(starts) == 1, pct
    pct = [pct[:starts[0]], pct[starts[0]:]]
    share = 100 * float(relu_tail.t_stiff) / 1e4
    assert max(pct[0]) < 100 and pct[0][-1] == pytest.approx(share, abs=0.01)
    assert pct[1][-1] == 100
    assert int(shown.num_steps) == int(relu_tail.num_steps)
    assert float(shown.final_loss) == float(relu_tail.final_loss)


def test_events_step_budget_is_the_runs_across_both_phases(relu_tail):
    # max_steps is each run's budget: the implicit phase goes on counting from the explicit
    # phase's steps
    budget = int(relu_tail.num_steps) - 50
    tr = gfsim.simulate(gfsim.MLP.from_weights(POS_W, "relu"), POS, 1e4, num_saves=8,
                        rtol=1e-8, max_steps=budget)
    assert np.isfinite(float(tr.t_stiff))  # the budget ran out in the implicit phase
    assert tr.status_labels() == "max_steps" and int(tr.num_steps) == budget


def test_a_jit_that_closes_over_its_inputs_is_a_trace_too(unfittable):
    # no input is a tracer, but the call is traced: both phases in one program
    traced = jax.jit(lambda: gfsim.simulate(NETS, DATA, 1e4, rtol=1e-8))()
    np.testing.assert_array_equal(np.asarray(traced.num_steps), np.asarray(unfittable.num_steps))
    np.testing.assert_allclose(np.asarray(traced.final_loss), np.asarray(unfittable.final_loss),
                               rtol=1e-12)


def test_switch_counts_share_a_few_implicit_programs():
    # the implicit phase is compiled for the switched runs padded to a power of two: 1 and 2
    # switched runs of 3 (and 3 of 3, the whole batch) trace at most three programs, and a
    # second call with the same count traces nothing
    zero = gfsim.MLP.from_weights([0.0 * w for w in NETS[0].weights], "linear")
    stack = lambda *ns: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ns)  # noqa: E731
    one = stack(NETS[0], zero, zero)
    two = stack(NETS[0], NETS[1], zero)
    a = gfsim.simulate(one, DATA, 1e4, rtol=1e-8)
    b = gfsim.simulate(two, DATA, 1e4, rtol=1e-8)
    assert np.isfinite(np.asarray(a.t_stiff)).sum() == 1
    assert np.isfinite(np.asarray(b.t_stiff)).sum() == 2
    before = gfsim.flow.trace_count()
    c = gfsim.simulate(stack(zero, NETS[2], zero), DATA, 1e4, rtol=1e-8)
    assert gfsim.flow.trace_count() == before  # the one-switch program again
    alone = gfsim.simulate(NETS[2], DATA, 1e4, rtol=1e-8)
    np.testing.assert_allclose(np.asarray(c.final_loss[1]), float(alone.final_loss), rtol=1e-12)
    for u, v in zip(c.final_weights, alone.final_weights):
        np.testing.assert_allclose(np.asarray(u[1]), np.asarray(v), atol=1e-12)


def test_events_after_the_switch_are_located_as_accurately_as_by_explicit_steps():
    # a ReLU net whose pattern changes after its first switch to implicit steps (at t ~ 380;
    # pattern changes at t ~ 385 and 400): the implicit step that would cross is taken back and
    # explicit steps locate the event; against Tsit5 at rtol 1e-11, the same events and the
    # states at the save times after the switch to the tolerance
    k = jax.random.split(jax.random.key(11), 4)
    X = jnp.abs(jax.random.normal(k[0], (12, 3))) + 0.3
    data = gfsim.Dataset(X, jax.random.normal(k[1], (12, 2)))
    net = gfsim.MLP.from_weights([0.6 * jax.random.normal(k[2], (16, 4, 3))[15],
                                  0.6 * jax.random.normal(k[3], (16, 2, 4))[15]], "relu")
    ts = np.array([0.0, 300.0, 382.0, 550.0, 700.0, 1000.0])
    tr = gfsim.simulate(net, data, 1e3, ts=ts, rtol=1e-8)
    ref = gfsim.simulate(net, data, 1e3, ts=ts, rtol=1e-11, solver="tsit5")
    t_stiff = float(tr.t_stiff)
    assert 0 < t_stiff < 382
    on = np.einsum("tuk,nk->tun", np.asarray(tr.weights[0]), np.asarray(X)) > 0
    held = np.transpose(np.asarray(tr.sliding[0]), (0, 2, 1))
    # (the pattern changes between save times both after the switch: a free pair's side, or
    # the held set; a held pair's sign is the projection's rounding)
    changed = [((on[i] != on[i - 1]) & ~held[i] & ~held[i - 1]) | (held[i] != held[i - 1])
               for i in range(1, len(ts))]
    assert any(c.any() for c, t0 in zip(changed, ts[:-1]) if t0 > t_stiff)
    assert int(tr.num_crossings) == int(ref.num_crossings) > 0
    assert int(tr.num_slides) == int(ref.num_slides) > 0
    after = ts > t_stiff
    for a, b in zip(tr.weights, ref.weights):
        np.testing.assert_allclose(np.asarray(a)[after], np.asarray(b)[after], atol=1e-6)


def test_events_a_tail_sliding_on_first_layer_kinks_steps_implicitly():
    # a depth-2 ReLU net on the plateau case's labels (four points repeated with the opposite
    # label): from t ~ 500 it slides on first-layer kinks (5-8 pairs held) in a stiff tail.
    # Those kinks are affine in the weights, so the implicit steps run on the sliding field
    # (a constant projection); against Tsit5 at rtol 1e-10, the same crossings and slides, the
    # same held sets, and the states at every save time to the tolerance
    X = jnp.concatenate([RELU_DATA.X, RELU_DATA.X[:4]])
    data = gfsim.Dataset(X, jnp.concatenate([RELU_DATA.Y, -RELU_DATA.Y[:4]]))
    net = gfsim.MLP((3, 8, 1), key=jax.random.key(8), scale=0.5)
    ts = np.array([0.0, 500.0, 1000.0, 2000.0, 3000.0])
    tr = gfsim.simulate(net, data, 3000.0, ts=ts)
    ref = gfsim.simulate(net, data, 3000.0, ts=ts, rtol=1e-10, solver="tsit5")
    assert tr.method == "gf:auto(tsit5>kvaerno5)+events"
    assert tr.status_labels() == ref.status_labels() == "reached_t1"
    held = np.asarray(tr.sliding[0])
    # (held from before the switch, t = 500, to the end)
    assert 500.0 < float(tr.t_stiff) < 1000.0 and held[1:].sum(axis=(1, 2)).min() >= 5
    np.testing.assert_array_equal(held, np.asarray(ref.sliding[0]))
    # (Tsit5 at the same tolerance takes 8252 steps here, measured)
    assert int(tr.num_steps) <= 5000, int(tr.num_steps)
    assert int(tr.num_crossings) == int(ref.num_crossings) > 0
    assert int(tr.num_slides) == int(ref.num_slides) > 0
    for a, b in zip(tr.weights, ref.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)
    np.testing.assert_allclose(float(tr.final_loss), float(ref.final_loss), rtol=1e-9)
    # the held pairs on their kinks at the end (the projection back after each step)
    z = np.asarray(X) @ np.asarray(tr.weights[0][-1]).T  # (no biases)
    assert np.abs(z[held[-1]]).max() < 1e-9 * np.abs(z).max()
