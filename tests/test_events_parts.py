"""The event solver's parts (gfsim.events), each called directly and checked against something
independent: a brute-force root search, a hand-solved kink, a dense least-squares projection,
Diffrax's own solve on a flow that never reaches a kink."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gfsim
from gfsim import Status
from gfsim.activations import Activation, get_activation, register_activation
from gfsim.events import _decide, _functions, _locate, _sliding
from gfsim.events._model import FrozenPattern, flatten
from gfsim.methods import Events, Plain

# -- root finding --------------------------------------------------------------------------------

@pytest.mark.parametrize("root", [0.013, 0.4567, 0.97])
def test_illinois_finds_the_root_of_a_bracketed_function(root):
    f = lambda tau: jnp.tanh(3.0 * (root - tau)) + 0.1 * (root - tau) ** 3  # noqa: E731
    phi = lambda tau: (f(tau), tau)  # noqa: E731  (the carried aux: the point itself)
    one = jnp.asarray(1.0)
    b, at = jax.jit(lambda: _locate.illinois(phi, f(0.0), one, f(one), one))()
    assert float(at) == float(b)  # the aux is the right end's
    phi = f
    assert float(phi(b)) <= 0.0  # the returned end is where phi has fired
    assert abs(float(b) - root) < 1e-12


def _two_unit_path():
    """A net (1, 2, 1) and a path theta(tau) on which unit 0's pre-activation crosses zero at
    tau = 0.7 (negative at the step's end) and unit 1's dips below zero on (0.5, 0.8) and comes
    back (positive at the end): the first root is at 0.5, and the search for unit 0's finds
    unit 1 negative there."""
    net = gfsim.MLP.from_weights([np.array([[1.0], [1.0]]), np.array([[1.0, 1.0]])])
    model = FrozenPattern(net, "square", "sum")
    data = gfsim.Dataset(np.array([[1.0]]), np.array([[0.0]]))
    theta0, unravel, _ = flatten(net)

    def interp(tau):
        w0 = 0.7 - tau
        w1 = 20.0 * (tau - 0.5) * (tau - 0.8)
        return jnp.stack([w0, w1, 1.0, 1.0]).astype(theta0.dtype)

    return model, data, interp


def test_first_root_finds_a_dip_not_seen_at_the_steps_end():
    model, data, interp = _two_unit_path()
    on = jnp.array([True, True])
    held = jnp.zeros(2, bool)
    offsets = jnp.zeros(6)
    start = _functions.values(model, data, interp(0.0), on, held, 0)
    end = _functions.values(model, data, interp(1.0), on, held, 0)
    triggered = end < 0
    assert triggered.tolist() == [True, False, False, False, False, False]
    tau, fired, at = jax.jit(lambda: _locate.first_root(
        model, data, interp, on, held, triggered, start, end, offsets, 0))()
    np.testing.assert_allclose(  # the values carried by the search are those at tau
        np.asarray(at), np.asarray(_functions.values(model, data, interp(tau), on, held, 0)))
    # brute force: the first point of a fine grid where any event value is negative
    grid = jnp.linspace(0.0, 1.0, 1_000_001)
    vals = jax.jit(jax.vmap(
        lambda g: _functions.values(model, data, interp(g), on, held, 0)))(grid)
    brute = float(grid[int(jnp.argmax(jnp.any(vals < 0, axis=1)))])
    assert abs(float(tau) - 0.5) < 1e-10 and brute - 1e-6 <= float(tau) <= brute
    assert bool(fired[1])  # the dipping unit joined the fired set


@pytest.mark.parametrize("name", [n for n, _ in _locate._DENSE_DEGREE])
def test_dense_degrees_are_those_of_the_solvers_own_interpolation(name):
    """The search on nodes is exact only if theta(tau) on a step is a polynomial of the listed
    degree: fit the solver's own dense output on a step of a nonlinear flow."""
    solver = getattr(diffrax, name)()
    q = _locate.dense_degree(solver)
    term = diffrax.ODETerm(lambda t, y, a: jnp.sin(3.0 * y) + jnp.cos(y[::-1]) * t)
    y0 = jnp.array([0.3, -1.1, 0.7])
    state = solver.init(term, 0.0, 0.8, y0, None)
    *_, dense, _, _ = solver.step(term, 0.0, 0.8, y0, None, state, False)
    taus = np.linspace(0.0, 1.0, 41)
    ys = np.stack([np.asarray(solver.interpolation_cls(t0=0.0, t1=0.8, **dense).evaluate(
        0.8 * t)) for t in taus])

    def misfit(deg):
        V = np.vander(taus, deg + 1)
        coef = np.linalg.lstsq(V, ys, rcond=None)[0]
        return np.max(np.abs(V @ coef - ys)) / np.max(np.abs(ys))

    assert misfit(q) < 1e-13 < 1e-5 < misfit(q - 1)  # (the least degree that fits)


def _random_path(depth, n, seed, width=5, dim=3):
    """A ReLU net, data, its pattern at theta0 and a degree-4 polynomial path theta(tau) on
    which many pairs cross (the shape of a Tsit5 step's dense output)."""
    key = jax.random.key(seed)
    kn, kx, kc = jax.random.split(key, 3)
    net = gfsim.MLP((dim,) + (width,) * (depth - 1) + (1,), key=kn, scale=1.0)
    data = gfsim.Dataset(jax.random.normal(kx, (n, dim)), jnp.zeros((n, 1)))
    model = FrozenPattern(net, "square", "mean")
    theta0 = flatten(net)[0]
    coef = 0.6 * jax.random.normal(kc, (4,) + theta0.shape)

    def interp(tau):
        return theta0 + sum(tau ** (j + 1) * coef[j] for j in range(4))

    on = jnp.concatenate(net.preactivations(data.X)[:-1], axis=-1).reshape(-1) > 0
    return model, data, interp, on


@pytest.mark.parametrize("depth,seed", [(2, 0), (2, 1), (3, 2), (3, 3)])
def test_the_search_on_nodes_finds_the_first_root_of_all_pairs(depth, seed):
    """The crossing functions' polynomials (first_root_nodes) against a brute-force grid over
    the whole step and against the search on the net itself (first_root): the same first
    root, the same fired pair, on paths where many pairs cross (depth 3: the second layer's
    polynomials have degree 8)."""
    model, data, interp, on = _random_path(depth, 70, seed)
    P = on.shape[0]
    held = jnp.zeros(P, bool)
    offsets = jnp.zeros(3 * P)
    start = _functions.values(model, data, interp(0.0), on, held, 0)
    end = _functions.values(model, data, interp(1.0), on, held, 0)
    triggered = (end < 0) & (end < start)
    assert int(jnp.sum(triggered)) >= 5  # many pairs cross on this step
    K = _locate.node_count(model, diffrax.Tsit5(), 70)
    assert K == 4 * (depth - 1) + 1
    tau, fired, at, over = jax.jit(lambda: _locate.first_root_nodes(
        model, data, interp, on, held, triggered, start, end, offsets, K))()
    tau_net, fired_net, _ = jax.jit(lambda: _locate.first_root(
        model, data, interp, on, held, triggered, start, end, offsets, 0))()
    assert not bool(over)
    assert abs(float(tau) - float(tau_net)) < 1e-11
    # the values returned are those at tau, every fired one is negative there
    np.testing.assert_allclose(np.asarray(at), np.asarray(
        _functions.values(model, data, interp(tau), on, held, 0)), rtol=1e-12)
    assert bool(jnp.all(at[:P][fired[:P]] <= 1e-12))
    # the pairs the search on the net fires (negative at its tau) are the ones fired here
    at_net = _functions.values(model, data, interp(tau_net), on, held, 0)
    assert set(np.flatnonzero(np.asarray(fired_net & (at_net < 0)))) <= set(
        np.flatnonzero(np.asarray(fired)))
    # brute force: the first grid point where any crossing value is negative
    grid = jnp.linspace(0.0, 1.0, 200_001)
    vals = jax.jit(jax.vmap(lambda g: _functions.values(model, data, interp(g), on, held, 0)[:P]))(
        grid)
    brute = float(grid[int(jnp.argmax(jnp.any(vals < 0, axis=1)))])
    assert brute - 1e-5 <= float(tau) <= brute


def test_the_search_on_nodes_orders_many_late_roots_and_fires_ties_together():
    """40 points whose first-layer pairs all cross in the step's last node interval, in the
    reverse order of their indices, and a duplicated point (two pairs with the same root): the
    first root, both copies fired, no fallback to the search on the net."""
    roots = np.concatenate([np.linspace(0.99, 0.90, 40), [0.90]])  # the last: a duplicate
    X = roots[:, None]
    net = gfsim.MLP.from_weights([np.array([[1.0]]), np.array([[1.0]])],
                                 biases=[np.array([0.0]), np.array([0.0])])
    model = FrozenPattern(net, "square", "sum")
    data = gfsim.Dataset(X, np.zeros((41, 1)))
    theta0 = flatten(net)[0]
    # the first layer's bias in the flat vector: the entry that is 1 in a net with it alone
    bias = int(np.flatnonzero(np.asarray(flatten(gfsim.MLP.from_weights(
        [np.array([[0.0]]), np.array([[0.0]])],
        biases=[np.array([1.0]), np.array([0.0])]))[0]))[0])

    def interp(tau):  # z_i = x_i - tau: point i crosses at tau = x_i
        return theta0.at[bias].set(-tau)

    on = jnp.ones(41, bool)
    held = jnp.zeros(41, bool)
    start = _functions.values(model, data, interp(0.0), on, held, 0)
    end = _functions.values(model, data, interp(1.0), on, held, 0)
    tau, fired, _, over = jax.jit(lambda: _locate.first_root_nodes(
        model, data, interp, on, held, (end < 0) & (end < start), start, end,
        jnp.zeros(123), 5))()
    assert not bool(over)
    assert abs(float(tau) - 0.90) < 1e-12
    assert set(np.flatnonzero(np.asarray(fired))) == {39, 40}


def test_the_search_on_nodes_finds_a_dip_not_seen_at_the_steps_end():
    """The two-unit path of the search on the net: unit 1 dips below zero inside the step and
    comes back; its root (0.5) comes first, found from the nodes' values."""
    model, data, interp = _two_unit_path()
    on = jnp.array([True, True])
    held = jnp.zeros(2, bool)
    start = _functions.values(model, data, interp(0.0), on, held, 0)
    end = _functions.values(model, data, interp(1.0), on, held, 0)
    tau, fired, _, over = jax.jit(lambda: _locate.first_root_nodes(
        model, data, interp, on, held, end < 0, start, end, jnp.zeros(6), 5))()
    assert abs(float(tau) - 0.5) < 1e-12 and bool(fired[1]) and not bool(over)


def test_a_solve_with_the_search_on_nodes_is_the_solve_with_the_search_on_the_net(monkeypatch):
    """The whole event-driven solve, once with each search (teacher-student, 64 points, depth 3,
    many crossings): the same crossings, slides and steps, the same weights to round-off."""
    from gfsim.events import solve_events

    key = jax.random.key(7)
    data = gfsim.data.teacher_student(key, n=64, dim=3)
    net = gfsim.MLP((3, 6, 6, 1), key=jax.random.key(8), init="gaussian", scale=0.5)
    ts = jnp.linspace(0.0, 3.0, 4)

    def solve():
        fn = jax.jit(lambda: solve_events(
            net, data, 3.0, ts, 1e-7, 1e-10, (0.0, 0.0, 0.0), Events(), loss="square",
            reduction="mean", has_stop=False, batched=False)[0])
        return fn()

    # (every search on nodes says whether it had to leave the step to the search on the net)
    overs = []
    original = _locate.first_root_nodes

    def watched(*args, **kw):
        out = original(*args, **kw)
        jax.debug.callback(lambda o: overs.append(np.asarray(o)), out[3])
        return out

    monkeypatch.setattr(_locate, "first_root_nodes", watched)
    nodes = solve()
    assert len(overs) >= 30 and not any(bool(np.any(o)) for o in overs)
    monkeypatch.setattr(_locate, "MIN_POINTS", 10 ** 9)  # the search on the net
    overs.clear()
    net_search = solve()
    assert not overs
    assert int(nodes.num_crossings) >= 30
    for f in ("num_crossings", "num_slides", "num_steps", "num_rejected", "status"):
        assert int(getattr(nodes, f)) == int(getattr(net_search, f)), f
    for a, b in zip(nodes.final_weights, net_search.final_weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


# -- cross or slide ------------------------------------------------------------------------------

@pytest.mark.parametrize("target,expect_slide", [(1.0, False), (-1.0, True)])
def test_decide_a_single_unit_at_its_kink_by_hand(target, expect_slide):
    """f(x) = v relu(w.x) at z = w.x = 0 with the sum loss: with the unit off the field is 0
    (a = 0); with it on dw/dt = y v x, so dz/dt = y v |x|^2 (b). y v > 0: b > 0, it crosses on;
    y v < 0: a >= 0 >= b, it slides."""
    x = np.array([0.6, 0.8])
    w = np.array([0.8, -0.6])  # orthogonal to x: z = 0
    net = gfsim.MLP.from_weights([w[None, :], np.array([[0.5]])])
    data = gfsim.Dataset(x[None, :], np.array([[target]]))
    model = FrozenPattern(net, "square", "sum")
    theta = flatten(net)[0]
    on, held = jnp.array([False]), jnp.array([False])
    new_on, new_held, slid = _decide.decide(model, data, theta, on, held, jnp.array([True]), 1)
    assert bool(slid[0]) == expect_slide and bool(new_held[0]) == expect_slide
    if not expect_slide:
        assert bool(new_on[0])


# -- the sliding projection ------------------------------------------------------------------------

def test_first_layer_held_sets_project_by_a_constant_symmetric_map():
    # the implicit sliding steps' premise (gfsim.events._step.attempt_implicit): with first-layer
    # pairs held only, deep=False gives the full projection's field and event values, and the
    # field's Jacobian -P H is symmetric on the tangent space (conjugate gradients need it)
    k1, k2, k3 = jax.random.split(jax.random.key(5), 3)
    net = gfsim.MLP((3, 4, 3, 2), key=k1)
    data = gfsim.Dataset(jax.random.normal(k2, (5, 3)), jax.random.normal(k3, (5, 2)))
    model = FrozenPattern(net, "square", "sum")
    theta = flatten(net)[0]
    on = model.zflat(theta, data, jnp.ones((5, model.hsum))) > 0
    first = jnp.zeros_like(on).at[jnp.array([0, 8, 15])].set(True)  # (point, unit < 4)
    deep = first.at[5].set(True)  # point 0, unit 5: the second hidden layer
    assert not bool(_sliding.deep_held(model, first)) and bool(_sliding.deep_held(model, deep))
    full = _sliding.field(model, data, theta, on, first, 4)
    lean = _sliding.field(model, data, theta, on, first, 4, deep=False)
    for a, b in zip(full, lean):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(
        np.asarray(_functions.values(model, data, theta, on, first, 4, deep=False)),
        np.asarray(_functions.values(model, data, theta, on, first, 4)))

    def F(th):
        return _sliding.field(model, data, th, on, first, 4, deep=False)[0]

    # tangent vectors: the field itself at two other points (P is the same everywhere)
    u = F(theta + 0.1 * jax.random.normal(jax.random.key(6), theta.shape))
    v = F(theta + 0.1 * jax.random.normal(jax.random.key(7), theta.shape))
    Ju, Jv = jax.jvp(F, (theta,), (u,))[1], jax.jvp(F, (theta,), (v,))[1]
    assert abs(float(v @ Ju - u @ Jv)) < 1e-10 * float(jnp.linalg.norm(Ju) * jnp.linalg.norm(v))
    # and the field stays tangent: the held pre-activations do not move along it
    D = model.slopes(on, first)
    dz = jax.jvp(lambda th: model.zflat(th, data, D), (theta,), (Ju,))[1]
    assert float(jnp.abs(dz[first]).max()) < 1e-12 * float(jnp.linalg.norm(Ju))


@pytest.mark.parametrize("widths, bias, held_at", [
    ((3, 4, 2), False, [2, 7, 13]),  # depth 2: first-layer pairs only (the per-unit blocks)
    ((3, 4, 2), True, [1, 5, 9, 17]),  # ... two of unit 1's points held, with biases
    ((3, 4, 3, 2), False, [2, 7, 12, 13, 20]),  # depth 3: first-layer and deeper pairs mixed
    ((3, 4, 3, 2), True, [4, 6, 11, 25, 30]),
])
def test_sliding_field_is_the_least_squares_projection_and_keeps_held_pairs_on_their_kinks(
        widths, bias, held_at):
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    net = gfsim.MLP(widths, key=k1, bias=bias)
    if bias:  # nonzero biases, so their columns of J matter
        net = eqx.tree_at(lambda n: n.biases, net, tuple(
            0.3 * jax.random.normal(jax.random.key(i), b.shape) for i, b in enumerate(net.biases)))
    data = gfsim.Dataset(jax.random.normal(k2, (5, 3)), jax.random.normal(k3, (5, 2)))
    model = FrozenPattern(net, "square", "sum")
    theta = flatten(net)[0]
    z = model.zflat(theta, data, jnp.ones((5, model.hsum)))
    on = z > 0
    held = jnp.zeros_like(on).at[jnp.array(held_at)].set(True)
    F, lam = _sliding.field(model, data, theta, on, held, 4)
    # independent: the dense Jacobian of the held pre-activations and numpy's least squares
    D = model.slopes(on, held)
    J = np.asarray(jax.jacobian(lambda th: model.zflat(th, data, D))(theta))[np.asarray(held)]
    g = np.asarray(jax.grad(model.loss)(theta, data, D))
    m, *_ = np.linalg.lstsq(J.T, -g, rcond=None)
    # (deeper pairs are eliminated against the first layer's blocks: a digit or two less)
    tol = 1e-10 if len(widths) == 3 else 1e-9
    np.testing.assert_allclose(np.asarray(F), -g - J.T @ m, rtol=tol, atol=1e-12)
    assert np.max(np.abs(J @ np.asarray(F))) < 1e-12  # dz_K/dt = 0
    assert np.all(np.asarray(lam)[~np.asarray(held)] == 0)
    if len(widths) == 3:  # one hidden layer: lambda_k = left + m_k / c_k, c = dL/dh
        E = jnp.zeros(D.shape)
        c = np.asarray(jax.grad(model.loss, argnums=3)(theta, data, D, E)).reshape(-1)
        c = c[np.asarray(held)]
        np.testing.assert_allclose(np.asarray(lam)[np.asarray(held)], model.left + m / c,
                                   rtol=1e-9)
    # the projection puts a perturbed state back on {z_K = 0}: at once where z_K is linear in
    # theta (first-layer pairs), quadratically fast (Gauss-Newton) where it is not
    zK = lambda th: np.abs(np.asarray(model.zflat(th, data, D))[np.asarray(held)])  # noqa: E731
    on_kinks = theta
    for _ in range(4):
        on_kinks = _sliding.project(model, data, on_kinks, on, held, 4)
    assert zK(on_kinks).max() < 1e-13
    moved = on_kinks + 1e-5 * jax.random.normal(jax.random.key(9), theta.shape)
    back = _sliding.project(model, data, moved, on, held, 4)
    assert zK(moved).max() > 1e-7 and zK(back).max() < 1e-13


def test_held_sets_fit_by_layer():
    """First-layer pairs need no dense slots (at most d_in (+1) points per unit are
    independent); deeper pairs fill ``slots``."""
    net = gfsim.MLP((2, 3, 3, 1), key=jax.random.key(0))
    model = FrozenPattern(net, "square", "mean")
    held = jnp.zeros((4, 6), bool)  # 4 points x (3 + 3) hidden units
    first = held.at[:2, 0].set(True).at[:2, 1].set(True)  # 2 points at units 0 and 1
    assert not _sliding.overflow(model, first.reshape(-1), 1)
    assert _sliding.overflow(model, held.at[:3, 0].set(True).reshape(-1), 8)  # 3 > d_in = 2
    deep = held.at[:2, 4].set(True)
    assert not _sliding.overflow(model, deep.reshape(-1), 2)
    assert _sliding.overflow(model, deep.reshape(-1), 1)


# -- step-size control: the same as Diffrax's ------------------------------------------------------

def test_events_steps_like_diffrax_where_no_kink_is_reached():
    """All inputs and weights positive: every unit stays on, the flow is smooth, and the event
    solver given Diffrax's PIDController must take exactly the steps of Diffrax's own
    diffeqsolve with it (and land on the same weights)."""
    X = np.array([[1.0, 0.5], [0.3, 1.2], [0.8, 0.9]])
    Y = np.array([[1.0], [2.0], [1.5]])
    net = gfsim.MLP.from_weights([np.full((3, 2), 0.3), np.full((1, 3), 0.2)])
    data = gfsim.Dataset(X, Y)
    kw = dict(ts=np.array([0.0, 4.0]), reduction="sum")
    pid = diffrax.PIDController(rtol=1e-7, atol=1e-10)
    ev = gfsim.simulate(net, data, 4.0, method=Events(controller=pid), **kw)
    pl = gfsim.simulate(net, data, 4.0, method=Plain(controller=pid), **kw)
    dflt = gfsim.simulate(net, data, 4.0, method="plain", rtol=1e-7, **kw)
    assert int(dflt.num_steps) == int(pl.num_steps)  # plain's default is that PIDController
    assert int(ev.num_crossings) == 0 and int(ev.status) == Status.REACHED_T1
    for f in ("num_steps", "num_accepted", "num_rejected"):
        assert int(getattr(ev, f)) == int(getattr(pl, f)), f
    # the same steps: equal to accumulated round-off, far below the solve's own error (rtol 1e-7)
    for a, b in zip(ev.final_weights, pl.final_weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9)


def test_the_default_event_controller_is_a_pid_controller_usable_by_diffrax():
    """EventController (the event solver's default rule) is a diffrax.PIDController: plain
    Diffrax accepts it, and on a kink-free flow both methods then take the same steps."""
    from gfsim.events._control import EventController

    X = np.array([[1.0, 0.5], [0.3, 1.2]])
    net = gfsim.MLP.from_weights([np.full((2, 2), 0.3), np.full((1, 2), 0.2)])
    data = gfsim.Dataset(X, np.array([[1.0], [2.0]]))
    ctrl = EventController(rtol=1e-7, atol=1e-10)
    assert isinstance(ctrl, diffrax.PIDController)
    kw = dict(ts=np.array([0.0, 3.0]), reduction="sum")
    ev = gfsim.simulate(net, data, 3.0, method="events", rtol=1e-7, **kw)  # the default
    pl = gfsim.simulate(net, data, 3.0, method=Plain(controller=ctrl), **kw)
    assert int(ev.num_crossings) == 0
    for f in ("num_steps", "num_accepted", "num_rejected"):
        assert int(getattr(ev, f)) == int(getattr(pl, f)), f


def test_the_event_controllers_rules_by_hand():
    """The default rule is the I rule (0.9 err^(-1/q), an accepted step may also shrink, to 0.2
    at least): exactly the formula, whatever the history. A sliding run's accepted steps are
    sized by Diffrax's PI rule (pcoeff 0.4 / icoeff 0.3: the factor and the state of
    diffrax.PIDController where that never-shrinking rule and this one agree), the history
    moving on accepted steps only; its rejected ones by the I rule."""
    from gfsim.events._control import EventController

    y0, y1 = jnp.ones(3), jnp.ones(3)
    one = jnp.ones(())

    def step(ctrl, err, state):  # error ratio err: y_error = err * (atol + rtol * |y|)
        ye = jnp.full(3, err * (ctrl.atol + ctrl.rtol))
        keep, t0, t1, _, state, _ = ctrl.adapt_step_size(
            jnp.zeros(()), one, y0, y1, None, ye, 5, state)
        return bool(keep), float(t1 - t0), state

    ctrl = EventController(rtol=1e-6, atol=1e-9)
    fresh = (one, one, False)
    for err in (1e-8, 1e-3, 0.5, 1.0, 4.0, 1e6):  # every clip: 10, 0.2 (accepted), 0.1
        want = float(np.clip(0.9 * max(err, 1e-10) ** (-1.0 / 5), 0.2 if err <= 1 else 0.1,
                             10.0 if err <= 1 else 0.9))
        for state in (fresh, step(ctrl, 0.01, fresh)[2]):
            assert step(ctrl, err, state)[1] == pytest.approx(want, rel=1e-14)
    pi = ctrl.sliding_rule()
    assert (pi.pcoeff, pi.icoeff, pi.rtol, pi.atol) == (0.4, 0.3, 1e-6, 1e-9)
    keep, h, state = step(pi, 0.5, fresh)
    assert keep and h == pytest.approx(0.9 * 0.5 ** (-0.7 / 5))  # no history yet
    keep, h, state2 = step(pi, 0.25, state)
    assert keep and h == pytest.approx(0.9 * 0.25 ** (-0.7 / 5) * 0.5 ** (0.4 / 5)) and h > 1
    assert (float(state2[0]), float(state2[1])) == pytest.approx((4.0, 2.0))
    # Diffrax's PIDController with the same pair, from the same state: the same factor and state
    dfx = diffrax.PIDController(rtol=1e-6, atol=1e-9, pcoeff=0.4, icoeff=0.3)
    ye = jnp.full(3, 0.25 * (1e-9 + 1e-6))
    _, t0, t1, _, dstate, _ = dfx.adapt_step_size(jnp.zeros(()), one, y0, y1, None, ye, 5,
                                                  state)
    assert float(t1 - t0) == pytest.approx(h, rel=1e-12)
    assert (float(dstate[0]), float(dstate[1])) == pytest.approx((4.0, 2.0), rel=1e-12)
    keep, h, state3 = step(pi, 3.0, state2)  # rejected: the I rule, and the history stays
    assert not keep and h == pytest.approx(0.9 * 3.0 ** (-1 / 5))
    assert (float(state3[0]), float(state3[1])) == pytest.approx((4.0, 2.0))
    # an accepted step may also shrink (after a much smaller error), to 0.2 at least
    keep, h, _ = step(pi, 1.0, state2)
    assert keep and h == pytest.approx(0.9 * 0.25 ** (0.4 / 5)) and h < 1
    _, _, tiny = step(pi, 1e-12, state2)
    assert step(pi, 1.0, tiny)[1] == pytest.approx(0.2)
    assert float(step(pi, 0.0, state2)[2][0]) == 1.0  # a zero error: no history (Diffrax's)


def test_a_given_controller_is_used_by_both_methods():
    ctrl = diffrax.PIDController(rtol=1e-4, atol=1e-7)
    net = gfsim.MLP((2, 3, 1), key=jax.random.key(0))
    data = gfsim.Dataset(np.array([[1.0, 0.2], [0.1, 1.0]]), np.array([[1.0], [0.5]]))
    coarse = gfsim.simulate(net, data, 2.0, method=Events(controller=ctrl), num_saves=2)
    fine = gfsim.simulate(net, data, 2.0, method="events", rtol=1e-9, num_saves=2)
    assert int(coarse.num_steps) < int(fine.num_steps)
    with pytest.raises(ValueError, match="controller=.*PIDController"):
        Events(controller="pid")
    plain_coarse = gfsim.simulate(net, data, 2.0, method=Plain(controller=ctrl), num_saves=2)
    plain_fine = gfsim.simulate(net, data, 2.0, method="plain", rtol=1e-9, num_saves=2)
    assert int(plain_coarse.num_steps) < int(plain_fine.num_steps)
    with pytest.raises(ValueError, match="max_sliding=4 with method=Events"):
        gfsim.simulate(net, data, 2.0, method=Events(), max_sliding=4)


# -- methods and activations as objects ------------------------------------------------------------

def test_method_objects_equal_their_strings():
    net = gfsim.MLP((2, 3, 1), key=jax.random.key(1), runs=2)
    data = gfsim.Dataset(np.array([[1.0, 0.2], [0.1, 1.0]]), np.array([[1.0], [0.5]]))
    a = gfsim.simulate(net, data, 1.0, method="events", max_sliding=4, num_saves=2)
    b = gfsim.simulate(net, data, 1.0, method=Events(max_sliding=4), num_saves=2)
    np.testing.assert_array_equal(np.asarray(a.num_steps), np.asarray(b.num_steps))
    np.testing.assert_array_equal(np.asarray(a.final_loss), np.asarray(b.final_loss))
    assert a.method == b.method == "gf:auto(tsit5>kvaerno5)+events"
    with pytest.raises(ValueError, match="max_sliding=0 is not allowed"):
        Events(max_sliding=0)
    with pytest.raises(ValueError, match="explicit Runge-Kutta"):
        Events(solver="kvaerno5")


def test_a_registered_kinked_activation_runs_the_event_solver_like_leaky_relu(monkeypatch):
    # (the registry as it was afterwards: docs print the registered names)
    monkeypatch.setattr(gfsim.nets.ACTIVATIONS, "_items", dict(gfsim.nets.ACTIVATIONS._items))
    register_activation("test_leaky02",
                        Activation(lambda z: jnp.where(z > 0, z, 0.2 * z), 0.2, 1.0))
    ws = gfsim.MLP((2, 3, 1), key=jax.random.key(5)).weights  # crosses twice, slides once
    data = gfsim.Dataset(np.array([[1.0, 0.2], [0.1, 1.0], [-0.5, 0.4]]),
                         np.array([[1.0], [-0.5], [0.3]]))
    mine = gfsim.simulate(gfsim.MLP.from_weights(ws, "test_leaky02"), data, 10.0, num_saves=2)
    ref = gfsim.simulate(gfsim.MLP.from_weights(ws, "leaky_relu", negative_slope=0.2), data,
                         10.0, num_saves=2)
    assert mine.method.endswith("+events")  # 'auto' saw the kink
    assert int(mine.num_crossings) == int(ref.num_crossings) >= 1
    assert int(mine.num_slides) == int(ref.num_slides) >= 1
    for a, b in zip(mine.final_weights, ref.final_weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)


def test_leaky_relu_with_slope_one_or_more_is_smooth_typed():
    """Slope 1 is linear and above 1 the kink is concave: no event solver, but a working net."""
    for slope in (1.0, 2.0):
        net = gfsim.MLP((2, 3, 1), "leaky_relu", key=jax.random.key(0), negative_slope=slope)
        assert not net.activation_fn.has_kink
        np.testing.assert_allclose(np.asarray(net.act(jnp.array([-1.0, 2.0]))), [-slope, 2.0])


def test_activation_objects_know_their_kink():
    relu, leaky, lin = (get_activation(n, 0.1) for n in ("relu", "leaky_relu", "linear"))
    assert (relu.left, relu.right, relu.has_kink) == (0.0, 1.0, True)
    assert (leaky.left, leaky.has_kink) == (0.1, True) and not lin.has_kink
    z = jnp.array([-2.0, 3.0])
    np.testing.assert_allclose(np.asarray(leaky(z)), [-0.2, 3.0])
    np.testing.assert_allclose(np.asarray(leaky.slope(z > 0) * z), [-0.2, 3.0])
    with pytest.raises(ValueError, match="left=1.0, right=0.5"):
        Activation(jnp.abs, 1.0, 0.5)


def test_kink_units_uses_the_nets_activation():
    """A leaky-ReLU unit passes negative values on: a downstream pair's input differs from the
    ReLU net's, and so does which pairs sit on a kink."""
    W1 = np.array([[1.0, 0.0], [0.0, -1.0]])
    W2 = np.array([[1.0, 1.0]])  # its z = h_1 + h_2
    W3 = np.array([[1.0]])
    X = np.array([[1.0, 1.0]])  # z1 = (1, -1): relu h = (1, 0), leaky(0.5) h = (1, -0.5)
    relu = gfsim.analysis.kink_units([W1, W2, W3], X)
    leaky = gfsim.analysis.kink_units([W1, W2, W3], X, activation="leaky_relu",
                                      negative_slope=1.0 - 1e-12)  # h = (1, -1): z2 = 0
    assert not bool(relu[1][0, 0]) and bool(leaky[1][0, 0])


# -- saves -----------------------------------------------------------------------------------------

def test_saves_interpolate_the_due_slots_from_the_dense_output():
    """dy/dt = -y stepped once by Diffrax's Tsit5 over [0, 0.12]: the save slots at 0.05 and 0.1
    are due (exp(-t) y0, to the step's accuracy), 0.15 is not; a lane whose run index is out of
    range writes nothing."""
    from types import SimpleNamespace

    from gfsim.events import _saves

    solver = diffrax.Tsit5()
    term = diffrax.ODETerm(lambda t, y, a: -y)
    y0 = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    t0, t1 = jnp.zeros(2), jnp.full(2, 0.12)

    def step(y):
        st = solver.init(term, 0.0, 0.12, y, None)
        return solver.step(term, 0.0, 0.12, y, None, st, False)

    y1, _, dense, _, _ = jax.vmap(step)(y0)
    setup = SimpleNamespace(ts=jnp.array([0.0, 0.05, 0.1, 0.15, 1.0]), solver=solver)
    lanes = SimpleNamespace(t=t0, y=y0, held=jnp.zeros((2, 3), bool),
                            save_index=jnp.array([1, 1], jnp.int32))
    saves0 = jnp.full((2, 5, 2), jnp.nan)
    held0 = jnp.zeros((2, 5, 3), bool)
    # lane 1 is idle: its run index, 2, is out of range
    saves, _, index = _saves.record(setup, lanes, t1, t1, dense, y1, jnp.zeros(2, bool),
                                    jnp.ones(2, bool), saves0, held0, jnp.array([0, 2]))
    assert np.all(np.isnan(np.asarray(saves[1])))
    np.testing.assert_array_equal(np.asarray(index), [3, 3])
    got = np.asarray(saves[0])
    np.testing.assert_allclose(got[1], np.exp(-0.05) * np.array([1.0, 2.0]), rtol=1e-7)
    np.testing.assert_allclose(got[2], np.exp(-0.1) * np.array([1.0, 2.0]), rtol=1e-7)
    assert np.all(np.isnan(got[[0, 3, 4]]))  # not due (slot 0 is written at the start)
    start, _ = _saves.put_start(setup, saves0, held0, jnp.array([0]), SimpleNamespace(
        y=y0[:1], held=jnp.zeros((1, 3), bool)))
    np.testing.assert_array_equal(np.asarray(start[0, 0]), [1.0, 2.0])


def test_progress_bar_changes_nothing_but_stderr(capfd):
    net = gfsim.MLP((2, 3, 1), key=jax.random.key(1), runs=2)
    data = gfsim.Dataset(np.array([[1.0, 0.2], [0.1, 1.0]]), np.array([[1.0], [0.5]]))
    quiet = gfsim.simulate(net, data, 1.0, method="events", max_sliding=4, num_saves=2)
    capfd.readouterr()
    shown = gfsim.simulate(net, data, 1.0, method="events", max_sliding=4, num_saves=2,
                           progress=True)
    assert "100.00%" in capfd.readouterr().err
    np.testing.assert_array_equal(np.asarray(shown.num_steps), np.asarray(quiet.num_steps))
    np.testing.assert_array_equal(np.asarray(shown.final_loss), np.asarray(quiet.final_loss))
    with pytest.raises(ValueError, match="progress='yes' is not allowed"):
        gfsim.simulate(net, data, 1.0, progress="yes")


# -- the loop state and lane refill ----------------------------------------------------------------

def test_run_record_keeps_done_runs_and_drops_idle_lanes():
    """RunRecord.put writes each lane's run to its row and drops lanes whose run index is out of
    range (idle); select picks per lane."""
    from gfsim.events._state import RECORD_FIELDS, RunRecord, select

    L, R, p, P = 3, 4, 2, 5
    lanes = type("L", (), {})()
    for k in RECORD_FIELDS:
        shape = {"y": (L, p), "on": (L, P), "held": (L, P)}.get(k, (L,))
        dtype = bool if k in ("on", "held") else (jnp.int32 if k not in ("t", "y") else float)
        setattr(lanes, k, (jnp.arange(np.prod(shape)).reshape(shape) + 1).astype(dtype))
    empty = RunRecord(**{k: jnp.zeros((R,) + getattr(lanes, k).shape[1:],
                                      getattr(lanes, k).dtype) for k in RECORD_FIELDS})
    rec = empty.put(jnp.array([2, R, 0]), lanes)  # lane 1 idle
    np.testing.assert_array_equal(np.asarray(rec.t), [3.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(np.asarray(rec.y[2]), np.asarray(lanes.y[0]))
    both = select(jnp.array([True, False, True]), (lanes.t, lanes.y), (-lanes.t, -lanes.y))
    np.testing.assert_array_equal(np.asarray(both[0]), [1.0, -2.0, 3.0])
    np.testing.assert_array_equal(np.asarray(both[1][1]), -np.asarray(lanes.y[1]))


# -- stop rules ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["plain", "events"])
def test_stop_grad_ends_at_a_stationary_point(method):
    """A depth-2 net with every unit on (positive data and weights) flows to a stationary
    point; stop_grad ends it there, with its own status, earlier than t1, with the gradient norm
    below the tolerance (and a larger one stops sooner)."""
    X = np.array([[1.0, 0.5], [0.3, 1.2], [0.8, 0.9]])
    Y = np.array([[1.0], [2.0], [1.5]])
    activation = "relu" if method == "events" else "linear"
    net = gfsim.MLP.from_weights([np.full((3, 2), 0.3), np.full((1, 3), 0.2)], activation)
    data = gfsim.Dataset(X, Y)
    kw = dict(reduction="sum", rtol=1e-9, num_saves=2, method=method)
    tight = gfsim.simulate(net, data, 1e4, stop_grad=1e-6, **kw)
    loose = gfsim.simulate(net, data, 1e4, stop_grad=1e-3, **kw)
    for tr, tol in ((tight, 1e-6), (loose, 1e-3)):
        assert tr.status_labels().item() == "stop_grad" and float(tr.t_final) < 1e4
        end = gfsim.MLP.from_weights(tr.final_weights, activation)
        g = jax.grad(lambda n: gfsim.objective(n, data, reduction="sum"))(end)
        assert float(jnp.sqrt(sum(jnp.sum(w ** 2) for w in g.weights))) < tol
    assert float(loose.t_final) < float(tight.t_final)
    both = gfsim.simulate(net, data, 1e4, stop_grad=1e-6, stop_loss=1e3, **kw)
    assert both.status_labels().item() == "stop_loss"  # the loss rule fired first (at t = 0+)
