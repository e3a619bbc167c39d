"""benchmarks/baselines.py at a tiny size: the accuracy figures are computed against a real
reference (no timing assertions)."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import gfsim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "bench_baselines", os.path.join(ROOT, "benchmarks", "baselines.py"))
bb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bb)

SEEDS, T1 = 4, 30.0


@pytest.fixture(scope="module")
def problem():
    net, data = bb.setup(SEEDS)
    ts = bb.save_times(T1)
    ref, info = bb.reference(net, data, T1, ts)
    return net, data, ts, ref, info


def test_reference_reaches_t1(problem):
    _, _, ts, ref, info = problem
    assert info["status"] == {"reached_t1": SEEDS}
    assert ref.shape == (SEEDS, len(ts), 8)
    assert np.all(np.isfinite(ref))


def test_hand_loss_matches_gfsim(problem):
    net, data, *_ = problem
    theta = bb.flat_init(net)
    for i in range(SEEDS):
        a = float(bb.hand_loss(theta[i], data.X, data.Y))
        b = float(gfsim.objective(net[i], data, "square", "mean"))
        assert a == pytest.approx(b, rel=1e-12)


def test_gfsim_and_hand_diffrax_accurate(problem):
    net, data, ts, ref, _ = problem
    (g,) = bb.bench_gfsim(net, data, T1, ts, ref, (1e-10,), repeats=1)
    (h,) = bb.bench_hand_diffrax(net, data, T1, ts, ref, (1e-10,), repeats=1)
    assert 0 < g["accuracy"] < 1e-6 and g["frac_above_1e3"] == 0
    assert 0 < h["accuracy"] < 1e-6
    # A loose tolerance must be measurably worse: the reference is not the tested solve itself.
    (loose,) = bb.bench_gfsim(net, data, T1, ts, ref, (1e-4,), repeats=1)
    assert loose["accuracy"] > 10 * g["accuracy"]


def test_gd_first_order(problem):
    net, data, ts, ref, _ = problem
    rows = bb.bench_gd(net, data, T1, ts, ref, (1e-2, 5e-3), repeats=1)
    e1, e2 = rows[0]["accuracy"], rows[1]["accuracy"]
    assert e1 > 1e-5
    assert 1.6 < e1 / e2 < 2.5  # halving lr roughly halves the error
    fit = bb.fit_first_order(rows, T1)
    assert 0.8 < fit["loglog_slope"] < 1.2
    ex = fit["extrapolated"]["0.0001"]
    assert ex["lr"] == pytest.approx(1e-4 / fit["C"])
    assert ex["steps"] == pytest.approx(T1 / ex["lr"])


def test_scipy(problem):
    pytest.importorskip("scipy")
    net, data, ts, ref, _ = problem
    (r,) = bb.bench_scipy(net, data, T1, ts, ref, (1e-8,), subset=2, total_runs=SEEDS)
    assert r["runs_timed"] == 2 and r["steady_s"] == pytest.approx(2 * r["measured_s"])
    assert 0 < r["accuracy"] < 1e-5


def test_torch_gd_matches_jax_gd(problem):
    pytest.importorskip("torch")
    net, data, ts, ref, _ = problem
    (t,) = bb.bench_torch(net, data, T1, ts, ref, (1e-2,), max_steps=10**6)
    (j,) = bb.bench_gd(net, data, T1, ts, ref, (1e-2,), repeats=1)
    assert t["accuracy"] == pytest.approx(j["accuracy"], rel=1e-6)
    (s,) = bb.bench_torch(net, data, T1, ts, ref, (1e-2,), max_steps=100)
    assert s["accuracy"] is None and "scaled" in s["scaled"]


def test_headline_and_markdown(problem):
    res = bb.run(seeds=SEEDS, t1=T1, repeats=1, rtols=(1e-10,), lrs=(1e-2, 5e-3),
                 scipy_rtols=(1e-8,), scipy_subset=2, torch_lrs=(1e-2,), skip=("torch",))
    h = res["headline"]
    assert set(h) == {"0.0001", "1e-06"}
    assert h["0.0001"]["gd_jax"]["extrapolated"] is True
    md = bb.markdown(res)
    assert "EXTRAPOLATED" in md and "gfsim (tsit5)" in md


def test_bench_extra_not_imported_by_gfsim():
    code = "import sys, gfsim; print(sorted(m for m in ('torch', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    extra = bb.bench_extra()
    assert set(extra) >= {"scipy", "torch"}


def test_pyproject_bench_extra():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        proj = tomllib.load(f)["project"]
    bench = " ".join(proj["optional-dependencies"]["bench"])
    assert "scipy" in bench and "torch" in bench
    assert not any(d.startswith(("torch", "scipy")) for d in proj["dependencies"])


