"""Bad input: one clear ValueError naming the field and what is allowed, before any compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gfsim

DATA = gfsim.data.sphere(jax.random.key(0), 3, 4)
NET = gfsim.MLP((4, 5, 1), key=jax.random.key(1))


@pytest.fixture(autouse=True)
def no_compile():
    before = gfsim.flow.trace_count()
    yield
    assert gfsim.flow.trace_count() == before, "validation must happen before tracing"


def test_widths_do_not_match_inputs():
    net = gfsim.MLP((3, 5, 1), key=jax.random.key(1))
    with pytest.raises(ValueError, match=r"widths=\(3, 5, 1\).*d_in=4"):
        gfsim.simulate(net, DATA, 1.0)


def test_widths_do_not_match_outputs():
    net = gfsim.MLP((4, 5, 2), key=jax.random.key(1))
    with pytest.raises(ValueError, match=r"widths=.*d_out=1"):
        gfsim.simulate(net, DATA, 1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_data(bad):
    X = np.asarray(DATA.X).copy()
    X[1, 2] = bad
    with pytest.raises(ValueError, match="X contains non-finite"):
        gfsim.Dataset(X, DATA.Y)
    Y = np.asarray(DATA.Y).copy()
    Y[0, 0] = bad
    with pytest.raises(ValueError, match="Y contains non-finite"):
        gfsim.Dataset(DATA.X, Y)


@pytest.mark.parametrize("t1", [0.0, -1.0, np.nan, np.inf])
def test_t1_must_be_positive_and_finite(t1):
    with pytest.raises(ValueError, match="t1=.*finite number > 0"):
        gfsim.simulate(NET, DATA, t1)


@pytest.mark.parametrize("field", ["rtol", "atol"])
@pytest.mark.parametrize("value", [0.0, -1e-8])
def test_tolerances_must_be_positive(field, value):
    with pytest.raises(ValueError, match=f"{field}=.*> 0"):
        gfsim.simulate(NET, DATA, 1.0, **{field: value})


def test_unknown_activation():
    with pytest.raises(ValueError, match=r"activation='tanh'.*allowed: .*leaky_relu.*linear.*relu"):
        gfsim.MLP((4, 5, 1), "tanh", key=jax.random.key(1))


def test_unknown_init():
    with pytest.raises(ValueError, match=r"init='he'.*allowed: .*balanced.*disk.*gaussian"):
        gfsim.MLP((4, 5, 1), key=jax.random.key(1), init="he")


def test_unknown_loss():
    with pytest.raises(ValueError, match=r"loss='hinge'.*allowed: .*exponential.*logistic.*square"):
        gfsim.simulate(NET, DATA, 1.0, loss="hinge")


def test_unknown_solver():
    with pytest.raises(ValueError, match=r"solver='euler'.*allowed: .*dopri8.*tsit5"):
        gfsim.simulate(NET, DATA, 1.0, solver="euler")


def test_unknown_reduction():
    with pytest.raises(ValueError, match=r"reduction='avg'.*allowed: mean, sum"):
        gfsim.simulate(NET, DATA, 1.0, reduction="avg")


def test_batch_sizes_must_match():
    nets = gfsim.MLP((4, 5, 1), key=jax.random.key(1), runs=3)
    data = gfsim.data.sphere(jax.random.key(0), 3, 4, runs=2)
    with pytest.raises(ValueError, match="3 nets and a batch of 2 datasets"):
        gfsim.simulate(nets, data, 1.0)


def test_save_times_outside_range():
    with pytest.raises(ValueError, match="ts must be non-decreasing times within"):
        gfsim.simulate(NET, DATA, 1.0, ts=jnp.array([0.0, 2.0]))


def test_gd_bad_lr_and_steps():
    with pytest.raises(ValueError, match="lr=.*> 0"):
        gfsim.gd(NET, DATA, -0.1, 10)
    with pytest.raises(ValueError, match="steps=0"):
        gfsim.gd(NET, DATA, 0.1, 0)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "auto", True])
def test_bad_lanes(bad):
    with pytest.raises(ValueError, match=r"lanes=.*allowed: None or a positive integer"):
        gfsim.simulate(NET, DATA, 1.0, lanes=bad)
