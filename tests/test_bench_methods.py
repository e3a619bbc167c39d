"""gfsim.bench.methods at a tiny size: every accuracy figure is computed against a real Dopri8
reference (no timing assertions)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import gfsim
from gfsim.bench import measure
from gfsim.bench import methods as M
from gfsim.bench.problem import hand_loss
from gfsim.bench.workloads import problem_a, workload_d, workload_e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS, T1 = 4, 30.0


@pytest.fixture(scope="module")
def wa():
    p = problem_a(SEEDS, T1, scipy_subset=2, torch_max_steps=10**6)
    ref, info = M.reference(p)
    return p, ref, info


def test_reference_reaches_t1(wa):
    p, ref, info = wa
    assert info["status"] == {"reached_t1": SEEDS}
    assert info["method"] == "events" and info["solver"] == "dopri8"
    assert ref.shape == (SEEDS, len(p.ts), 8)
    assert np.all(np.isfinite(ref))


def test_hand_loss_matches_gfsim(wa):
    p, *_ = wa
    theta = measure.flat_init(p.net.weights)
    for i in range(SEEDS):
        a = float(hand_loss(theta[i], p.data.X, p.data.Y, None, widths=p.widths,
                            activation="relu", reduction="mean"))
        b = float(gfsim.objective(p.net[i], p.data, "square", "mean"))
        assert a == pytest.approx(b, rel=1e-12)


def test_hand_loss_masked_sum():
    (p,) = workload_d("tiny")
    theta = measure.flat_init(p.net.weights)
    d = p.run_data(1)
    a = float(hand_loss(theta[1], d.X, d.Y, d.mask, widths=p.widths, activation="linear",
                        reduction="sum"))
    b = float(gfsim.objective(p.net[1], d, "square", "sum"))
    assert a == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_hand_exponential_loss_matches_gfsim(reduction):
    # W-E's exponential problems: the baselines' hand-written loss is gfsim's exp(-y f)
    p = next(q for q in workload_e("tiny") if q.loss == "exponential")
    theta = measure.flat_init(p.net.weights)
    for i in range(p.runs):
        d = p.run_data(i)
        a = float(hand_loss(theta[i], d.X, d.Y, None, widths=p.widths, activation="relu",
                            reduction=reduction, loss="exponential"))
        b = float(gfsim.objective(p.net[i], d, "exponential", reduction))
        assert a == pytest.approx(b, rel=1e-12)
    with pytest.raises(ValueError, match="loss='logistic'"):
        hand_loss(theta[0], d.X, d.Y, None, widths=p.widths, activation="relu",
                  reduction="mean", loss="logistic")


def test_authors_scale_workload_keeps_its_physics():
    # ../shared/benchmarks.md, W-E: n = 1000, d = 10, width 64, depths 2, 4, 8, 32 seeds, both
    # losses; a quick size may cut seeds and depths, never n below 256
    full, quick = workload_e("full"), workload_e("quick")
    assert {(p.net.depth, p.loss) for p in full} == {
        (k, loss) for k in (2, 4, 8) for loss in ("square", "exponential")}
    for p in full + quick:
        assert p.data.X.shape[-1] == 10 and p.net.widths[1:-1] == (64,) * (p.net.depth - 1)
        assert set(np.unique(np.asarray(p.data.Y)).tolist()) == {-1.0, 1.0}
        assert p.data.is_batched and p.data.X.shape[0] == p.runs
    assert {p.data.X.shape[1] for p in full} == {1000} and {p.runs for p in full} == {32}
    assert min(p.data.X.shape[1] for p in quick) >= 256
    assert {p.loss for p in quick} == {"square", "exponential"}
    # (t1 = 30: past the escape, docs/benchmarks.md's W-E section)
    assert {p.t1 for p in full + quick} == {30.0}


def test_hand_written_baselines_integrate_the_problems_loss():
    # the exponential problem's hand-written Diffrax and scipy follow gfsim's exponential flow
    # (with the square loss written by hand instead they end about 0.4 away)
    p = next(q for q in workload_e("tiny") if q.loss == "exponential")
    tr = gfsim.simulate(p.net, p.data, p.t1, ts=p.ts, loss=p.loss, reduction=p.reduction,
                        rtol=1e-11, atol=1e-14)
    ref = measure.flat_theta(tr.weights)
    (h,) = M.bench_hand_diffrax(p, ref, 1, rtols=(1e-10,), memory=False)
    assert h["accuracy"] < 1e-6
    pytest.importorskip("scipy")
    (r,) = M.bench_scipy(p, ref, rtols=(1e-6,), subset=1)
    assert r["runs_succeeded"] == 1 and r["accuracy"] < 1e-4


def test_gfsim_and_hand_diffrax_accurate(wa):
    p, ref, _ = wa
    (g,) = M.bench_gfsim(p, ref, 1, rtols=(1e-10,), memory=False)
    (h,) = M.bench_hand_diffrax(p, ref, 1, rtols=(1e-10,), memory=False)
    assert 0 < g["accuracy"] < 1e-6 and g["frac_above_1e3"] == 0
    assert 0 < h["accuracy"] < 1e-6
    assert g["lockstep_field_evals"] == 6 * g["steps_max"]
    assert 0 <= g["lockstep_waste"] < 1
    # A loose tolerance must be measurably worse: the reference is not the tested solve itself.
    (loose,) = M.bench_gfsim(p, ref, 1, rtols=(1e-4,), memory=False)
    assert loose["accuracy"] > 10 * g["accuracy"]
    # Gradient flow holds the balancedness invariants; the error is the solver's.
    assert g["balance_drift_max"] < 1e-12 and loose["balance_drift_max"] > g["balance_drift_max"]


def test_gd_first_order(wa):
    p, ref, _ = wa
    rows = M.bench_gd(p, ref, 1, steps_list=(3000, 6000), memory=False)
    e1, e2 = rows[0]["accuracy"], rows[1]["accuracy"]
    assert e1 > 1e-5
    assert 1.6 < e1 / e2 < 2.5  # halving lr roughly halves the error
    fit = measure.fit_first_order(rows, T1)
    assert 0.8 < fit["loglog_slope"] < 1.2
    ex = fit["extrapolated"]["0.0001"]
    assert ex["lr"] == pytest.approx(1e-4 / fit["C"])
    assert ex["steps"] == pytest.approx(T1 / ex["lr"])


def test_fit_refuses_non_first_order():
    rows = [dict(lr=lr, accuracy=1e-3 * lr ** 0.2, s_per_step=1.0) for lr in (1e-2, 5e-3)]
    fit = measure.fit_first_order(rows, 1.0)
    assert fit["not_first_order"] and fit["extrapolated"] == {}


def test_memory_analysis(wa):
    p, ref, _ = wa
    (g,) = M.bench_gfsim(p, ref, 1, rtols=(1e-6,))
    mem = g["memory"]
    if "error" in mem:
        pytest.skip(mem["error"])
    assert mem["peak_bytes"] >= mem["argument_bytes"] > 0


def test_scipy(wa):
    pytest.importorskip("scipy")
    p, ref, _ = wa
    (r,) = M.bench_scipy(p, ref, rtols=(1e-8,), subset=2)
    assert r["runs_timed"] == 2 and r["steady_s"] == pytest.approx(2 * r["measured_s"])
    assert 0 < r["accuracy"] < 1e-5
    # A run stopped at the evaluation budget counts as not reaching t1.
    (b,) = M.bench_scipy(p, ref, rtols=(1e-8,), subset=1, max_evals=20)
    assert b["runs_succeeded"] == 0 and b["accuracy"] == np.inf


def test_torch_gd_matches_jax_gd(wa):
    pytest.importorskip("torch")
    p, ref, _ = wa
    (t,) = M.bench_torch(p, ref, steps_list=(3000,), max_steps=10**6)
    (j,) = M.bench_gd(p, ref, 1, steps_list=(3000,), memory=False)
    assert t["accuracy"] == pytest.approx(j["accuracy"], rel=1e-6)
    (s,) = M.bench_torch(p, ref, steps_list=(3000,), max_steps=100)
    assert s["accuracy"] is None and "scaled" in s["scaled"]


def test_torch_gd_matches_jax_gd_exponential_loss():
    pytest.importorskip("torch")
    p = next(q for q in workload_e("tiny") if q.loss == "exponential")
    ref = np.ones((p.runs, len(p.ts), sum(a * b for a, b in zip(p.widths, p.widths[1:]))))
    (t,) = M.bench_torch(p, ref, steps_list=(150,), max_steps=10**6)
    (j,) = M.bench_gd(p, ref, 1, steps_list=(150,), memory=False)
    assert t["accuracy"] == pytest.approx(j["accuracy"], rel=1e-9)


def test_torch_gd_matches_jax_gd_masked_linear():
    pytest.importorskip("torch")
    (p,) = workload_d("tiny")
    ref = np.ones((p.runs, len(p.ts), sum(a * b for a, b in zip(p.widths, p.widths[1:]))))
    (t,) = M.bench_torch(p, ref, steps_list=(1200,), max_steps=10**6)
    (j,) = M.bench_gd(p, ref, 1, steps_list=(1200,), memory=False)
    assert t["accuracy"] == pytest.approx(j["accuracy"], rel=1e-9)


def test_bench_extra_not_imported_by_gfsim():
    code = ("import sys, gfsim, gfsim.bench, gfsim.cli; "
            "print(sorted(m for m in ('torch', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    extra = measure.bench_extra()
    assert set(extra) >= {"scipy", "torch"}


def test_pyproject_bench_extra():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        proj = tomllib.load(f)["project"]
    bench = " ".join(proj["optional-dependencies"]["bench"])
    assert "scipy" in bench and "torch" in bench
    assert not any(d.startswith(("torch", "scipy")) for d in proj["dependencies"])
