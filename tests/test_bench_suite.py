"""The benchmark suite (gfsim.bench.suite) and ``gfsim bench``: files written, figures computed
against a real reference, and option errors raised before anything compiles. No timing
assertions."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import gfsim
from gfsim.bench import check_options, run_suite
from gfsim.bench.suite import headline, resolve_workloads
from gfsim.bench.workloads import split_sliding, workload_b
from gfsim.cli import main


@pytest.fixture(scope="module")
def tiny_wd(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = run_suite(str(out), profile="tiny", only=("W-D",), repeats=1)
    return res, out


def test_files_written(tiny_wd):
    res, out = tiny_wd
    assert sorted(os.listdir(out)) == ["accuracy_W-D.png", "bench.json", "bench.md"]
    with open(out / "bench.json") as f:
        data = json.load(f, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert list(data["workloads"]) == ["W-D"]
    md = (out / "bench.md").read_text()
    assert "## Time to accuracy" in md and "### W-D" in md and "accuracy_W-D.png" in md
    assert (out / "accuracy_W-D.png").read_bytes()[:4] == b"\x89PNG"


def test_figures_against_reference(tiny_wd):
    res, _ = tiny_wd
    (p,) = res["workloads"]["W-D"]["problems"]
    ref = p["reference"]
    assert ref["method"] == "plain" and ref["status"] == {"reached_t1": p["runs"]}
    fams = {r["family"] for r in p["rows"]}
    assert {"gfsim", "hand_diffrax", "gd_jax"} <= fams
    g = {r["rtol"]: r for r in p["rows"] if r["family"] == "gfsim"}
    # The reference is an independent solve: a loose rtol is measurably worse than a tight one.
    assert g[1e-4]["accuracy"] > 10 * g[1e-8]["accuracy"] > 0
    for r in p["rows"]:
        if r["family"] in ("gfsim", "hand_diffrax", "gd_jax"):
            assert r["steady_s"] > 0 and r["first_call_s"] > 0
            assert 0 <= r["lockstep_waste"] < 1
            assert r["balance_drift_median"] is not None
    assert g[1e-4]["memory"]["peak_bytes"] > 0 or "error" in g[1e-4]["memory"]
    assert g[1e-8]["balance_drift_max"] < g[1e-4]["balance_drift_max"]
    h = p["headline"]
    assert set(h) == {"0.0001", "1e-06"}
    gd = h["1e-06"]["gd_jax"]
    assert gd["extrapolated"] is True and gd["ratio"] > 0
    assert p["gd_fit"]["loglog_slope"] == pytest.approx(1.0, abs=0.1)


def test_headline_prefers_measured():
    rows = [dict(family="gfsim", knob="a", steady_s=2.0, accuracy=1e-7),
            dict(family="gd_jax", knob="b", steady_s=8.0, accuracy=5e-5, lr=0.1, s_per_step=1.0)]
    fit = dict(extrapolated={"0.0001": dict(lr=1, steps=10, time_s=10),
                             "1e-06": dict(lr=1, steps=1000, time_s=1000)})
    h = headline(dict(rows=rows, gd_fit=fit))
    assert h["0.0001"]["gd_jax"] == dict(knob="b", time_s=8.0, extrapolated=False, scaled=None,
                                         ratio=4.0)
    assert h["1e-06"]["gd_jax"]["extrapolated"] and h["1e-06"]["gd_jax"]["ratio"] == 500.0


def test_split_sliding():
    (p,) = workload_b("tiny")
    parts = split_sliding(p, [0, 2, 0, 1])
    assert [q.name for q, _ in parts] == ["W-B sliding", "W-B non-sliding"]
    assert [idx.tolist() for _, idx in parts] == [[1, 3], [0, 2]]
    q, idx = parts[0]
    np.testing.assert_array_equal(q.net.weights[0], p.net.weights[0][idx])
    np.testing.assert_array_equal(q.data.X, p.data.X[idx])
    assert [q.name for q, _ in split_sliding(p, [0, 0, 0, 0])] == ["W-B non-sliding"]


def test_resolve_workloads():
    assert resolve_workloads(()) == ["W-A", "W-B", "W-C", "W-D", "W-E"]
    assert resolve_workloads(("w-c", "A", "W-C", "e")) == ["W-C", "W-A", "W-E"]
    with pytest.raises(ValueError, match="--only 'W-Z' is not a workload; allowed: W-A"):
        resolve_workloads(("W-Z",))


@pytest.mark.parametrize("args, needle", [
    (["--only", "W-Z"], "--only 'W-Z' is not a workload; allowed: W-A, W-B, W-C, W-D, W-E."),
    (["--repeats", "0"], "--repeats 0 must be an integer >= 1."),
])
def test_cli_bad_options(args, needle, tmp_path):
    before = gfsim.flow.trace_count()
    r = CliRunner().invoke(main, ["bench", "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
    assert gfsim.flow.trace_count() == before


def test_cli_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = CliRunner().invoke(main, ["bench", "--out", str(blocker / "sub")])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "--out" in lines[0] and "not a writable directory" in lines[0]
    with pytest.raises(ValueError, match="--out"):
        check_options(out=str(blocker))


def test_cli_help():
    r = CliRunner().invoke(main, ["bench", "--help"])
    assert r.exit_code == 0
    for opt in ("--quick", "--full", "--only", "--out", "--repeats", "--skip"):
        assert opt in r.output
