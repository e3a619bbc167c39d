"""Hostile input: every malformed argument gives one ValueError, TypeError or IndexError whose
message names the field, raised in plain Python before anything is traced or compiled.

The first tests pin down bugs that used to return wrong results silently; the property tests
(hypothesis) then throw malformed values at every field of the public functions.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gfsim
from gfsim.trajectory import Trajectory

KEY = jax.random.key(0)
DATA = gfsim.data.sphere(KEY, 3, 2)
NET = gfsim.MLP((2, 3, 1), "linear", key=KEY)
NETS = gfsim.MLP((2, 3, 1), "linear", key=KEY, runs=2)
DATAS = gfsim.data.sphere(KEY, 3, 2, runs=2)
ERRORS = (ValueError, TypeError, IndexError)


def batch_trajectory(runs=2, T=3):
    """A batched Trajectory built by hand (no solve, no compile)."""
    w = (np.zeros((runs, T, 3, 2)), np.zeros((runs, T, 1, 3)))
    r = np.arange(runs)
    return Trajectory(
        ts=np.linspace(0, 1, T), loss=np.ones((runs, T)) * r[:, None], weights=w, biases=None,
        final_weights=tuple(a[:, -1] for a in w), final_loss=r * 1.0, t_final=np.ones(runs),
        status=np.zeros(runs, np.int32), num_steps=r, num_accepted=r, num_rejected=r * 0,
        loss_name="square", reduction="mean", activation="linear", method="gf:tsit5")


@pytest.fixture(autouse=True)
def no_compile():
    before = gfsim.flow.trace_count()
    yield
    assert gfsim.flow.trace_count() == before, "validation must happen before tracing"


# ---------------------------------------------------------------------------------------------
# Bugs that used to pass silently


@pytest.mark.parametrize("decades", [-1.0, -0.5, math.nan, math.inf, "6"])
def test_decades_must_be_finite_and_non_negative(decades):
    # decades=-1 used to save at t1 * 10 > t1: the run reported reached_t1 and inf losses
    with pytest.raises(ValueError, match=r"decades=.*allowed: a finite real number >= 0"):
        gfsim.simulate(NET, DATA, 1.0, decades=decades, num_saves=4)
    with pytest.raises(ValueError, match="decades="):
        gfsim.log_times(1.0, 4, decades)


@pytest.mark.parametrize("num_saves", [True, 4.0, 1, "4"])
def test_num_saves_must_be_an_integer(num_saves):
    with pytest.raises(ValueError, match=r"num_saves=.*allowed: an integer >= 2"):
        gfsim.simulate(NET, DATA, 1.0, num_saves=num_saves)


def test_log_times_stays_within_t1():
    ts = np.asarray(gfsim.log_times(2.0, 5, 0.0))
    assert ts[0] == 0 and np.all(ts <= 2.0)


@pytest.mark.parametrize("index", [2, 5, -3, np.int64(7), [0, 2], np.array([-3])])
@pytest.mark.parametrize("which", ["nets", "data", "traj"])
def test_out_of_range_run_index_raises(which, index):
    # JAX clamps out-of-range indices: nets[5] used to return the last run
    batch = {"nets": NETS, "data": DATAS, "traj": batch_trajectory()}[which]
    bad = int(np.ravel(index)[-1])
    with pytest.raises(IndexError, match=rf"index {bad} is out of range .* of 2 runs"):
        batch[index]


@pytest.mark.parametrize("which", ["nets", "data", "traj"])
def test_wrong_length_mask_and_non_indexes_raise(which):
    batch = {"nets": NETS, "data": DATAS, "traj": batch_trajectory()}[which]
    with pytest.raises(IndexError, match=r"boolean mask of shape \(3,\).*2 runs"):
        batch[np.array([True, False, True])]
    for bad in ("a", 1.5, True, (0, 1), None):
        with pytest.raises(IndexError, match="cannot select runs"):
            batch[bad]


def test_valid_run_indexes_still_work():
    traj = batch_trajectory(runs=3)
    nets = gfsim.MLP((2, 3, 1), key=KEY, runs=3)
    assert nets[-3].runs is None and nets[1:].runs == 2 and nets[np.array([0, 2])].runs == 2
    assert nets[np.array([True, False, True])].runs == 2 and nets[jnp.array([2])].runs == 1
    assert DATAS[-1].runs is None and DATAS[[1, 0]].runs == 2
    assert float(traj[-1].final_loss) == 2.0 and traj[np.array([False, True, True])].runs == 2
    assert traj[:2].ts.shape == (3,)
    np.testing.assert_array_equal(nets[2].weights[0], nets.weights[0][2])


@pytest.mark.parametrize("widths", ["516", (2, 3.9, 1), (2, True, 1), (2.0, 3, 1), b"21",
                                    (2, "3", 1), (2, None, 1), 5])
def test_widths_must_be_integers(widths):
    # "516" used to become (5, 1, 6) and (2, 3.9, 1) became (2, 3, 1)
    with pytest.raises(ValueError, match=r"widths=.*allowed: a sequence of at least two positive"):
        gfsim.MLP(widths, key=KEY)


def test_integer_widths_of_numpy_and_jax_types_are_fine():
    assert gfsim.MLP(np.array([2, 3, 1]), key=KEY).widths == (2, 3, 1)
    assert gfsim.MLP((np.int32(2), jnp.array(3), 1), key=KEY).widths == (2, 3, 1)


# ---------------------------------------------------------------------------------------------
# The dtype rules

def test_integer_weights_become_float_and_odd_dtypes_are_refused():
    net = gfsim.MLP.from_weights([np.ones((3, 2), int), np.ones((1, 3), bool)])
    assert {w.dtype for w in net.weights} == {jnp.dtype("float64")}
    for bad in (complex, object, str):
        with pytest.raises(TypeError, match=r"weights\[0\] has dtype .*allowed: real numbers"):
            gfsim.MLP.from_weights([np.ones((3, 2)).astype(bad), np.ones((1, 3))])
    with pytest.raises(TypeError, match=r"weights mix dtypes \['float32', 'float64'\]"):
        gfsim.MLP.from_weights([np.ones((3, 2), np.float32), np.ones((1, 3))])
    with pytest.raises(ValueError, match="weights=an array of shape"):
        gfsim.MLP.from_weights(np.ones((3, 2)))   # one matrix, not a list of layers


def test_complex_data_is_refused_not_truncated():
    # complex X used to lose its imaginary part (a ComplexWarning at most)
    with pytest.raises(TypeError, match="X has dtype complex128"):
        gfsim.Dataset(np.ones((3, 2)) * 1j, np.ones(3))
    with pytest.raises(TypeError, match="Y has dtype complex128"):
        gfsim.Dataset(np.ones((3, 2)), np.ones(3) * 1j)


def test_mixed_precision_rule_casts_the_data_to_the_nets_dtype():
    from gfsim.flow import _as_dtype

    data32 = _as_dtype(DATA, jnp.float32)
    assert data32.X.dtype == jnp.float32 and data32.Y.dtype == jnp.float32
    assert _as_dtype(DATA, jnp.float64) is DATA


def test_non_finite_initial_weights_are_refused_naming_the_runs():
    w = [np.array(a) for a in NETS.weights]
    w[1][1, 0, 2] = np.nan
    with pytest.raises(ValueError, match=r"net.weights\[1\] of runs \[1\] contains non-finite"):
        gfsim.simulate(gfsim.MLP.from_weights(w, "linear"), DATA, 1.0)
    with pytest.raises(ValueError, match=r"net.weights\[1\] of runs \[1\]"):
        gfsim.gd(gfsim.MLP.from_weights(w, "linear"), DATA, 0.1, 3)


# ---------------------------------------------------------------------------------------------
# Property tests: malformed values for every field

nan_inf = st.sampled_from([math.nan, math.inf, -math.inf])
not_a_number = st.one_of(st.text(max_size=3), st.booleans(), st.complex_numbers(
    allow_nan=False, min_magnitude=1e-3).filter(lambda z: z.imag != 0),
    st.lists(st.floats(0.1, 1), min_size=2, max_size=3), st.just({}), st.just(object()))
not_positive = st.floats(max_value=0.0, allow_nan=False)
not_an_int = st.one_of(st.booleans(), st.floats(allow_nan=True).filter(
    lambda x: x != int(x) if math.isfinite(x) else True), st.text(max_size=2), st.just(None),
    st.integers(max_value=0), st.just(3.0))
bad_real_positive = st.one_of(nan_inf, not_a_number, not_positive)
bad_real = st.one_of(nan_inf, not_a_number)
bad_array = st.one_of(
    st.just(np.ones((3, 2)) * 1j), st.just(np.array([["a", "b"]] * 3)),
    st.just(np.array([[None, 1.0]] * 3, dtype=object)), st.just([[1.0, 2.0], [3.0]]),
    st.just("abc"))
HYP = settings(max_examples=30, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture])


def raises_naming(field, fn):
    with pytest.raises(ERRORS) as info:
        fn()
    assert field in str(info.value), f"{field!r} not named in: {info.value}"


SIMULATE_FIELDS = {
    "t1": bad_real_positive,
    "rtol": bad_real_positive,
    "atol": bad_real_positive,
    "stop_loss": bad_real,
    "decades": st.one_of(nan_inf, not_a_number, st.floats(max_value=-1e-9)),
    "num_saves": st.one_of(not_an_int, st.just(1)),
    "max_steps": not_an_int,
    "max_sliding": not_an_int.filter(lambda v: v is not None),  # None: grow as needed
    "lanes": st.one_of(st.booleans(), st.integers(max_value=0), st.floats(0.5, 9.5)),
    "loss": st.one_of(st.text(max_size=4), st.integers()),
    "reduction": st.one_of(st.text(max_size=4), st.integers()),
    "solver": st.one_of(st.text(max_size=4), st.integers(), st.just(object())),
    "method": st.one_of(st.text(max_size=4), st.integers(), st.just(None)),
    "ts": st.one_of(bad_array, st.just(np.array([0.0, np.nan])), st.just(np.zeros((2, 2))),
                    st.just(np.array([0.5, 0.1])), st.just(np.array([0.0, 9.0])),
                    st.just(np.array([]))),
}


@HYP
@given(st.data())
@pytest.mark.parametrize("field", sorted(SIMULATE_FIELDS))
def test_simulate_malformed_fields(field, data):
    value = data.draw(SIMULATE_FIELDS[field])
    if field == "t1":
        raises_naming("t1", lambda: gfsim.simulate(NET, DATA, value))
    else:
        raises_naming(field, lambda: gfsim.simulate(NET, DATA, 1.0, **{field: value}))


GD_FIELDS = {
    "lr": bad_real_positive,
    "steps": not_an_int,
    "num_saves": st.one_of(not_an_int, st.just(1)),
    "save_steps": st.one_of(bad_array, st.just([]), st.just([1, 3]), st.just([0, 2, 1]),
                            st.just([0, 5])),
    "loss": st.text(max_size=4),
    "optimizer": st.one_of(st.integers(), st.text(max_size=3)),
}


@HYP
@given(st.data())
@pytest.mark.parametrize("field", sorted(GD_FIELDS))
def test_gd_malformed_fields(field, data):
    value = data.draw(GD_FIELDS[field])
    kw = {"lr": 0.1, "steps": 3}
    kw[field] = value
    raises_naming(field, lambda: gfsim.gd(NET, DATA, kw.pop("lr"), kw.pop("steps"), **kw))


MLP_FIELDS = {
    "widths": st.one_of(st.text(min_size=1, max_size=4), st.tuples(st.integers(1, 3), not_an_int,
                                                                   st.integers(1, 3)),
                        st.lists(st.integers(1, 3), max_size=1), st.integers()),
    "runs": st.one_of(st.booleans(), st.integers(max_value=0), st.floats(0.5, 9.5),
                      st.text(max_size=2)),
    "scale": st.one_of(nan_inf, not_a_number, st.floats(max_value=-1e-9)),
    "negative_slope": st.one_of(nan_inf, not_a_number),
    "dtype": st.sampled_from([jnp.int32, np.complex128, "int8", bool, "banana"]),
    "key": st.one_of(st.integers(), st.text(max_size=2), st.just(np.zeros(3, np.uint32)),
                     st.just(jax.random.split(KEY, 2))),
    "bias": st.one_of(st.text(max_size=2), st.integers(2, 5)),
    "init": st.text(max_size=4),
    "activation": st.one_of(st.text(max_size=4), st.integers()),
}


@HYP
@given(st.data())
@pytest.mark.parametrize("field", sorted(MLP_FIELDS))
def test_mlp_malformed_fields(field, data):
    kw = {"widths": (2, 3, 1), "key": KEY}
    kw[field] = data.draw(MLP_FIELDS[field])
    raises_naming(field, lambda: gfsim.MLP(**kw))


bad_shapes = st.sampled_from([(3,), (1, 1, 3, 2), (3, 0), (0, 2)])


@HYP
@given(bad=st.one_of(bad_array, bad_shapes.map(np.ones),
                     st.just(np.array([[np.nan, 1.0]] * 3))),
       field=st.sampled_from(["X", "Y"]))
def test_dataset_malformed_arrays(bad, field):
    if field == "Y" and isinstance(bad, np.ndarray) and bad.shape == (3,):
        bad = np.ones(4)  # a 1-D Y of n entries is allowed (taken as (n, 1))
    good = {"X": np.ones((3, 2)), "Y": np.ones((3, 1))}
    good[field] = bad
    raises_naming(field, lambda: gfsim.Dataset(good["X"], good["Y"]))


@HYP
@given(layer=st.integers(0, 1),
       bad=st.one_of(bad_array, bad_shapes.map(np.ones), st.just(np.ones((2, 2, 2)))))
def test_from_weights_malformed_layers(layer, bad):
    ws = [np.ones((3, 2)), np.ones((1, 3))]
    ws[layer] = bad
    raises_naming("weights", lambda: gfsim.MLP.from_weights(ws))


GENERATORS = {
    "sphere": (lambda **kw: gfsim.data.sphere(**{"key": KEY, "n": 3, "dim": 2, **kw}),
               ["n", "dim", "d_out", "runs", "key"]),
    "random_pairs": (lambda **kw: gfsim.data.random_pairs(**{"key": KEY, "runs": 2, **kw}),
                     ["runs", "dim", "key"]),
    "teacher_student": (lambda **kw: gfsim.data.teacher_student(
        **{"key": KEY, "n": 4, "dim": 2, **kw}), ["n", "dim", "runs"]),
    "matrix_completion": (lambda **kw: gfsim.data.matrix_completion(
        **{"key": KEY, "rows": 3, "cols": 3, "rank": 1, **kw}), ["rows", "cols", "rank", "runs"]),
    "whitened_regression": (lambda **kw: gfsim.data.whitened_regression(
        **{"key": KEY, "n": 4, "d_in": 2, "d_out": 2, "singular_values": [1.0], **kw}),
        ["n", "d_in", "d_out", "key"]),
}


@HYP
@given(st.data())
@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_data_generators_malformed_counts(name, data):
    fn, fields = GENERATORS[name]
    field = data.draw(st.sampled_from(fields))
    if field == "key":
        value = data.draw(st.one_of(st.integers(), st.text(max_size=2)))
    else:
        value = data.draw(st.one_of(st.booleans(), st.floats(0.5, 9.5).filter(
            lambda x: x != int(x)), st.text(max_size=2), st.integers(-3, 0)))
    raises_naming(field, lambda: fn(**{field: value}))


@HYP
@given(index=st.one_of(st.integers(2, 10**6), st.integers(-10**6, -3),
                       st.lists(st.integers(2, 50), min_size=1, max_size=3).map(np.array),
                       st.lists(st.booleans(), min_size=3, max_size=5).map(np.array),
                       st.floats(allow_nan=True), st.text(max_size=2)),
       which=st.sampled_from(["nets", "data", "traj"]))
def test_run_index_property(index, which):
    batch = {"nets": NETS, "data": DATAS, "traj": TRAJ}[which]
    with pytest.raises(IndexError, match="2 runs|cannot select runs"):
        batch[index]


TRAJ = batch_trajectory()


@HYP
@given(bad=st.one_of(st.integers(), st.text(max_size=3), st.just([1, 2]), st.just(NET)))
def test_save_refuses_what_is_not_a_trajectory(bad, tmp_path_factory):
    path = tmp_path_factory.mktemp("save") / "x.zarr"
    raises_naming("traj", lambda: gfsim.save(bad, path))
    assert not path.exists()


def test_checks_of_concrete_values_work_inside_a_jit_trace():
    # inside a trace, jnp ops on concrete arrays are staged: a check must use NumPy (this broke
    # gfsim.bench's memory measurement, which jits a function that calls simulate with ts)
    from gfsim import _check

    @jax.jit
    def f(x):
        _check.finite(np.array([0.0, 1.0]), "ts")
        with pytest.raises(ValueError, match="ts contains non-finite"):
            _check.finite(np.array([0.0, np.nan]), "ts")
        return x

    assert float(f(1.0)) == 1.0
