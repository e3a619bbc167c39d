"""Hostile input to gfsim.hessian (hessian_extremes, classify_endpoint, polish) and
gfsim.derivatives (stop_time, scaled): every malformed argument is one ValueError that names the
argument, shows its value (or its type or shape) and says what is allowed, raised before anything
is traced or compiled. Two tripwires prove "before": the modules' jax and jnp and their compiled
programs are replaced by objects that fail the test when touched, and JAX's compile log must stay
empty."""

import logging
import math

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gfsim
from gfsim import _exported, derivatives, flow, hessian
from gfsim.trajectory import Trajectory

HYP = settings(max_examples=25, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture])

KEY = jax.random.key(0)
X = np.linspace(-1.0, 1.0, 8).reshape(4, 2)
DATA = gfsim.Dataset(X, X[:, :1] * 2.0)                               # d_in 2, d_out 1
DATAS = gfsim.Dataset(np.stack([X, -X]), np.stack([X[:, :1], X[:, 1:]]))  # 2 runs
NET = gfsim.MLP((2, 3, 1), "linear", key=KEY)                         # 6 + 3 = 9 parameters
NETS = gfsim.MLP((2, 3, 1), "linear", key=KEY, runs=3)
P = 9
W = [np.array(w) for w in NETS.weights]
W[0][1, 2, 0] = np.nan  # run 1 of the batch has a NaN weight
NAN_NETS = gfsim.MLP.from_weights(W, "linear")
BIASED = gfsim.MLP((2, 3, 1), "linear", key=KEY, bias=True)
INF_NET = gfsim.MLP.from_weights([np.full((3, 2), np.inf), np.ones((1, 3))], "linear")
WIDE = gfsim.Dataset(np.ones((4, 3)), np.ones((4, 1)))  # d_in 3
TALL = gfsim.Dataset(X, np.ones((4, 2)))                # d_out 2


def trajectory():
    """A Trajectory built by hand (no solve), to pass where a net is meant."""
    w = (np.zeros((2, 3, 2)), np.zeros((2, 1, 3)))
    return Trajectory(
        ts=np.linspace(0, 1, 2), loss=np.ones(2), weights=w, biases=None,
        final_weights=tuple(a[-1] for a in w), final_loss=np.float64(1.0), t_final=np.float64(1),
        status=np.int32(0), num_steps=np.int32(1), num_accepted=np.int32(1),
        num_rejected=np.int32(0), loss_name="square", reduction="mean", activation="linear",
        method="gf:tsit5")


class _Tripwire:
    def __init__(self, name):
        self.name = name

    def __getattr__(self, attr):
        raise AssertionError(f"{self.name}.{attr} was used before the arguments were refused")

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"{self.name} ran before the arguments were refused")


class _Compiles(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen = []

    def emit(self, record):
        if "compil" in record.getMessage().lower():
            self.seen.append(record.getMessage())


@pytest.fixture
def compile_log():
    """Fails the test if JAX compiles anything while it runs."""
    handler = _Compiles()
    logging.getLogger("jax").addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield
    finally:
        logging.getLogger("jax").removeHandler(handler)
    assert not handler.seen, handler.seen


@pytest.fixture
def no_computation(monkeypatch, compile_log):
    for module, names in ((hessian, ("jax", "jnp", "lx", "optx", "_extremes", "_grad_norm",
                                     "_polish")),
                          (derivatives, ("jax", "jnp", "_stop_time_one"))):
        for name in names:
            monkeypatch.setattr(module, name, _Tripwire(f"{module.__name__}.{name}"))


def refused(field, fn, *, what=()):
    """``fn()`` raises one ValueError on one line naming ``field`` and what is allowed."""
    with pytest.raises(ValueError) as info:
        fn()
    msg = str(info.value)
    assert len(msg.splitlines()) == 1, msg
    assert field in msg and "allowed" in msg, msg
    for w in what:  # the value, its type or shape
        assert w in msg, f"{w!r} not in: {msg}"
    return msg


def extremes(**kw):
    return lambda: hessian.hessian_extremes(kw.pop("net", NET), kw.pop("data", DATA), **kw)


def classify(**kw):
    return lambda: hessian.classify_endpoint(kw.pop("net", NET), kw.pop("data", DATA), **kw)


def polish(**kw):
    return lambda: hessian.polish(kw.pop("net", NET), kw.pop("data", DATA), **kw)


def stop(tol=0.1, t1=1.0, **kw):
    return lambda: gfsim.stop_time(kw.pop("net", NET), kw.pop("data", DATA), tol, t1, **kw)


ENTRY_POINTS = {"hessian_extremes": extremes, "classify_endpoint": classify,
                "polish": polish, "stop_time": stop}


# -- the net and the data ----------------------------------------------------------------------

NOT_A_NET = [(None, "NoneType"), (W, "list"), ({"w": 1}, "dict"), (DATA, "Dataset"),
             ((X, X), "tuple"), ("relu", "str")]


@pytest.mark.parametrize("fn", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("bad, what", NOT_A_NET)
def test_net_must_be_an_mlp(fn, bad, what, no_computation):
    refused("net=", ENTRY_POINTS[fn](net=bad), what=(what, "gfsim.MLP"))


@pytest.mark.parametrize("fn", sorted(ENTRY_POINTS))
def test_a_trajectory_for_a_net_is_told_how_to_get_its_end(fn, no_computation):
    refused("net=", ENTRY_POINTS[fn](net=trajectory()),
            what=("(Trajectory)", "MLP.from_weights(traj.final_weights"))


@pytest.mark.parametrize("fn", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("bad, what", [(None, "NoneType"), ((X, X[:, :1]), "tuple"),
                                       (X, "(4, 2)"), (NET, "MLP")])
def test_data_must_be_a_dataset(fn, bad, what, no_computation):
    refused("data=", ENTRY_POINTS[fn](data=bad), what=(what, "gfsim.Dataset"))


@pytest.mark.parametrize("fn", sorted(ENTRY_POINTS))
def test_net_and_data_must_fit(fn, no_computation):
    refused("widths=(2, 3, 1)", ENTRY_POINTS[fn](data=WIDE), what=("d_in=3", "widths[0]"))
    refused("widths=(2, 3, 1)", ENTRY_POINTS[fn](data=TALL), what=("d_out=2", "widths[-1]"))
    refused("3 nets", ENTRY_POINTS[fn](net=NETS, data=DATAS), what=("2 datasets", "run axes"))


@pytest.mark.parametrize("fn", sorted(ENTRY_POINTS))
def test_non_finite_weights_are_refused_naming_the_runs(fn, no_computation):
    # stop_time vmaps a batch, where simulate's own check sees traced weights and cannot look
    refused("net.weights[0] of runs [1]", ENTRY_POINTS[fn](net=NAN_NETS),
            what=("NaN or inf", "finite weights"))
    refused("net.weights[0] contains", ENTRY_POINTS[fn](net=INF_NET))


def test_stop_time_refuses_biases(no_computation):
    refused("net has biases", stop(net=BIASED), what=("bias-free",))


# -- names: loss and reduction ----------------------------------------------------------------

bad_names = st.one_of(st.text(max_size=6).filter(lambda s: s not in ("square", "mean", "sum")),
                      st.sampled_from([None, 1, ["square"], b"mean", np.array(["mean", "sum"])]))


@HYP
@given(bad=bad_names)
@pytest.mark.parametrize("fn", sorted(ENTRY_POINTS))
def test_loss_and_reduction_are_known_names(fn, bad, no_computation):
    refused("loss=", ENTRY_POINTS[fn](loss=bad), what=("exponential, logistic, square",))
    refused("reduction=", ENTRY_POINTS[fn](reduction=bad), what=("mean, sum",))


# -- counts: k and iters ----------------------------------------------------------------------

bad_counts = st.one_of(
    st.integers(max_value=0), st.integers(min_value=P + 1, max_value=10**9), st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
    st.sampled_from([None, 2.0, np.float64(2.0), np.array(2), [2], 2 + 0j, np.bool_(True)]))


@HYP
@given(k=bad_counts)
def test_k_is_an_integer_from_1_to_the_parameter_count(k, no_computation):
    refused("k=", extremes(k=k), what=(f"from 1 to {P}", "number of parameters"))


@HYP
@given(iters=bad_counts.filter(lambda v: v is not None))
def test_iters_is_none_or_an_integer_from_k_to_the_parameter_count(iters, no_computation):
    refused("iters=", extremes(iters=iters), what=(f"from k=1 to {P}", "None"))
    # iters < k
    refused("iters=3", extremes(k=4, iters=3), what=(f"from k=4 to {P}",))


@HYP
@given(steps=bad_counts.filter(lambda v: type(v) is not int or v < 1))
def test_polish_max_steps_is_a_positive_integer(steps, no_computation):
    refused("max_steps=", polish(max_steps=steps), what=("an integer >= 1",))


def test_key_must_be_one_prng_key(no_computation):
    for bad in (0, "key", np.zeros(2), jax.random.split(KEY, 3)):
        refused("key=", extremes(key=bad))
        refused("key=", classify(key=bad))


# -- numbers: tolerances and times ------------------------------------------------------------

bad_positive = st.one_of(
    st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf, -math.inf]), st.booleans(),
    st.text(max_size=3),
    st.sampled_from([None, 1j, np.ones(2), [1e-6], np.float64(np.nan), np.array([0.1])]))


@HYP
@given(bad=bad_positive)
@pytest.mark.parametrize("fn, field", [("classify_endpoint", "grad_tol"),
                                       ("classify_endpoint", "curvature_tol"),
                                       ("polish", "tol"),
                                       ("stop_time", "tol"), ("stop_time", "t1")])
def test_tolerances_and_times_are_finite_and_positive(fn, field, bad, no_computation):
    refused(f"{field}=", ENTRY_POINTS[fn](**{field: bad}), what=("finite real number > 0",))


@HYP
@given(bad=st.one_of(st.sampled_from([math.nan, math.inf, True, "2", None, np.ones(3), 1j]),
                     st.text(max_size=2)))
def test_scaled_needs_a_finite_real_scale_and_a_net(bad, no_computation):
    refused("scale=", lambda: gfsim.scaled(NET, bad), what=("finite real number",))
    refused("net=", lambda: gfsim.scaled(trajectory(), 2.0), what=("Trajectory", "gfsim.MLP"))


# -- stop_time's forwarded options --------------------------------------------------------------

@pytest.mark.parametrize("name", ["ts", "stop_loss", "stop_grad", "num_saves"])
def test_stop_time_options_it_sets_are_refused(name, no_computation):
    refused(f"{name} is set by stop_time", stop(**{name: 3}), what=(f"{name}=3", "leave it out"))


@pytest.mark.parametrize("name", ["rtoll", "steps", "lr", "key"])
def test_stop_time_unknown_options_are_refused(name, no_computation):
    msg = refused(f"unknown option {name}=1", stop(**{name: 1}))
    assert all(o in msg for o in ("rtol", "method", "adjoint")) and "stop_grad" not in msg, msg


@pytest.fixture
def no_solve(monkeypatch, compile_log):
    monkeypatch.setattr(flow, "_run", _Tripwire("gfsim.flow._run"))
    monkeypatch.setattr(_exported, "cached_call", _Tripwire("gfsim._exported.cached_call"))
    before = flow.trace_count()
    yield
    assert flow.trace_count() == before


@pytest.mark.parametrize("net", [NET, NETS], ids=["one", "batch"])
@pytest.mark.parametrize("field, value", [
    ("rtol", -1.0), ("atol", math.nan), ("max_steps", 0), ("method", "bogus"),
    ("adjoint", "sideways"), ("solver", "euler9"), ("decades", -1.0), ("progress", "yes"),
])
def test_stop_time_forwarded_options_are_checked_by_simulate_before_any_solve(
        net, field, value, no_solve):
    # under vmap too (a batch of nets): simulate's checks run on the plain option values
    with pytest.raises(ValueError, match=rf"^{field}=") as info:
        stop(net=net, **{field: value})()
    assert len(str(info.value).splitlines()) == 1


# -- well-formed input of every accepted kind ------------------------------------------------

def test_accepted_kinds_give_the_same_answer():
    lo, hi = hessian.hessian_extremes(NET, DATA, k=2)
    for k, iters, key in [(np.int64(2), None, None), (2, np.int32(P), None),
                          (2, None, jax.random.PRNGKey(0))]:
        lo2, hi2 = hessian.hessian_extremes(NET, DATA, k=k, iters=iters, key=key)
        np.testing.assert_allclose(np.asarray(lo2), np.asarray(lo), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(np.asarray(hi2), np.asarray(hi), rtol=1e-8, atol=1e-10)
    a = hessian.classify_endpoint(NET, DATA, grad_tol=1e-6, curvature_tol=1e-6)
    b = hessian.classify_endpoint(NET, DATA, grad_tol=np.float32(1e-6),
                                  curvature_tol=np.array(1e-6))
    assert a["kind"].tolist() == b["kind"].tolist()
    np.testing.assert_allclose(a["lambda_min"], b["lambda_min"], rtol=1e-8, atol=1e-10)
    p, info = hessian.polish(NET, DATA, tol=1e-9, max_steps=3)
    p2, info2 = hessian.polish(NET, DATA, tol=np.float32(1e-9), max_steps=np.int64(3))
    np.testing.assert_allclose(np.asarray(p2.weights[0]), np.asarray(p.weights[0]), atol=1e-12)
    assert info2["steps"] == info["steps"] <= 3
    for s in (2, np.float32(2.0), np.array(2.0), -1.0):
        np.testing.assert_allclose(np.asarray(gfsim.scaled(NET, s).weights[0]),
                                   float(s) * np.asarray(NET.weights[0]))
