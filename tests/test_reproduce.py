"""gfsim reproduce: the experiments' outputs have the properties the paper predicts."""

import math
import os
import time

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import endpoint_truth, run_tiny, runs, stored_final_net

import gfsim
from gfsim.cli import main
from gfsim.experiments.negative_depth2 import SETTINGS
from gfsim.reproduce import reproduce, run_all


@pytest.fixture(scope="module")
def negative(tmp_path_factory):
    result, ds, out = run_tiny("negative", tmp_path_factory)
    return result, ds, out


def test_negative_experiment_output(negative):
    result, ds, out = negative
    assert result.data_file == "negative.zarr" and result.data is None
    X = ds["X"].values
    cos = float(X[0] @ X[1])
    cfg = SETTINGS["tiny"]
    assert ds.sizes["run"] == 2 * len(cfg["widths"]) * cfg["seeds"]
    for init in ("disk", "xavier"):
        d = runs(ds, init=init, width=2)
        loss = d["final_loss"].values
        conv = d["converged"].values
        np.testing.assert_array_equal(conv, loss < 1e-4)
        assert list(d["seed"].values) == list(range(cfg["seeds"]))
        g = ds.sel(group=f"{init}-w2")
        assert int(g["below_1e4"]) == int(np.sum(loss < 1e-4))
        assert int(g["below_1e4"]) <= int(g["below_0499"]) <= int(g["below_1"]) <= len(loss)
        sr = d["stable_rank"].values
        # Stable rank of a 2x2 layer lies in [1, 2]; it is the stored final singular values'.
        assert np.all((sr[conv] >= 1 - 1e-9) & (sr[conv] <= 2 + 1e-9))
        s = d["final_singular_values"].values
        with np.errstate(invalid="ignore"):  # a zero layer (a dead run): 0/0 both ways
            np.testing.assert_allclose(sr, np.sum(s**2, -1) / s[..., 0] ** 2, rtol=1e-9)
        # the stored initial W1 gives the stored split starts
        w1 = d["initial_weights"].values[:, 0, :2, :2]
        pre = np.einsum("rhd,nd->rhn", w1, X)
        o1, o2 = (pre[..., 0] > 0) & (pre[..., 1] <= 0), (pre[..., 1] > 0) & (pre[..., 0] <= 0)
        np.testing.assert_array_equal(d["split_start"].values,
                                      (o1[:, 0] & o2[:, 1]) | (o2[:, 0] & o1[:, 1]))
    # Converged runs whose neurons started in the two one-sided regions sit at 2/(1+|cos|).
    d = runs(ds, init="disk", width=2)
    split = d["split_start"].values & d["converged"].values
    assert split.any()  # a fixed key; each seed has probability ~0.13
    np.testing.assert_allclose(d["stable_rank"].values[split, 0], 2 / (1 + abs(cos)),
                               atol=1e-3)
    # Plateau losses of non-converged runs are the predicted 0.25 / 0.5 (mean convention).
    loss = d["final_loss"].values
    stuck = loss[(loss > 1e-2) & np.isfinite(loss)]
    assert np.all(np.min(np.abs(stuck[:, None] - np.array([0.25, 0.5])[None]), 1) < 5e-2)
    verdicts = {c.verdict for c in result.claims}
    assert verdicts <= {"agrees", "disagrees", "inconclusive"}
    assert os.path.getsize(os.path.join(out, result.figures[0])) > 10_000
    assert not math.isnan(result.seconds)


def test_negative_plateaus_are_classified_against_an_independent_hessian(negative):
    # A run on the 0.25 or 0.5 plateau has a dead unit (inactive on both points) or a dead
    # point (every unit inactive on it); the dead unit's incoming weights are flat directions,
    # so where the gradient vanishes the Hessian is singular: a degenerate point unless it has
    # negative curvature. Checked against the gradient and the dense Hessian recomputed from the
    # stored final weights.
    result, ds, out = negative
    data = gfsim.data.paper_pair()
    X = np.asarray(data.X)
    kind = ds["endpoint_kind"].values
    loss = ds["final_loss"].values
    assert (kind[~ds["converged"].values & np.isfinite(loss)] != "").all()
    plateau = np.flatnonzero(np.isfinite(loss) & ((np.abs(loss - 0.25) < 1e-6)
                                                  | (np.abs(loss - 0.5) < 1e-6)))
    assert plateau.size >= 4  # a fixed key: ~40% of width-2 runs end on a plateau
    stationary = 0
    for r in plateau:
        net = stored_final_net(ds, r)
        grad, ev = endpoint_truth(net, data, "square")
        assert ds["endpoint_grad_norm"].values[r] == pytest.approx(grad, rel=1e-6, abs=1e-15)
        if grad > 1e-6:  # still sliding along a kink
            assert kind[r] == "not_stationary"
            continue
        stationary += 1
        active = np.asarray(net.preactivations(X)[0]) > 0  # (point, unit)
        assert (~active).all(0).any() or (~active).all(1).any()  # a dead unit or point
        assert ds["endpoint_lambda_min"].values[r] == pytest.approx(ev[0], abs=1e-8)
        negative_curvature = ev[0] < -1e-6 * max(1.0, ev[-1])
        assert kind[r] == ("strict_saddle" if negative_curvature else "degenerate")
        assert np.min(np.abs(ev)) < 1e-8  # singular: the flat directions of the dead unit
        # Newton finds the stationary point where the run is
        assert ds["polish_converged"].values[r] and ds["polish_distance"].values[r] < 1e-6
    assert stationary >= 4
    note = next(n for n in result.notes if n.startswith("Where the runs"))
    for init in ("disk", "xavier"):
        d = runs(ds, init=init, width=2)
        k = d["endpoint_kind"].values[~d["converged"].values]
        assert f"{init}-w2 ({k.size} runs): " in note
        if (k == "degenerate").any():
            assert f"{int((k == 'degenerate').sum())} degenerate" in note


def test_negative_store_is_plottable_and_keeps_the_result(negative):
    result, ds, out = negative
    from gfsim.experiments import Result

    raw = gfsim.load(out / "negative.zarr")
    assert raw.attrs["profile"] == "tiny" and raw.attrs["experiment"] == "negative"
    assert Result.from_json(raw.attrs["result"]) == result
    # the config fields are run coordinates: one setting's runs by value
    assert raw.sel(init="xavier", width=2).sizes["run"] == SETTINGS["tiny"]["seeds"]
    png = out / "rank.png"
    r = CliRunner().invoke(main, ["plot", str(out / "negative.zarr"), "--kind", "final-rank",
                                  "--x", "width", "--hue", "init", "--layer", "0", "--out",
                                  str(png)])
    assert r.exit_code == 0, r.output
    assert png.stat().st_size > 5_000


def test_cli_rejects_unknown_experiment(tmp_path):
    r = CliRunner().invoke(main, ["reproduce", "--only", "nope", "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert "experiment='nope' is not a known experiment; allowed: " in r.output
    assert "negative" in r.output.split("allowed:")[1]
    assert len(r.output.strip().splitlines()) == 1  # one line, not click's usage block


def test_cli_rejects_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = CliRunner().invoke(main, ["reproduce", "--out", str(blocker / "sub")])
    assert r.exit_code == 2
    assert "--out=" in r.output and "not a writable directory" in r.output


def _fake_runner(name, profile, out, progress):
    # Runs in a spawned worker: its process id and a progress message go back to the parent.
    from gfsim.experiments import Claim, Result

    if name == "boom":
        raise ValueError("bad setting")
    progress(f"{name}: halfway")
    # wait (a while at most) until both workers have taken a task, so that one fast worker
    # cannot take them all
    open(os.path.join(out, f"pid-{os.getpid()}"), "w").close()
    t = time.monotonic()
    while (len([f for f in os.listdir(out) if f.startswith("pid-")]) < 2 and profile == "quick"
           and time.monotonic() - t < 60):
        time.sleep(0.05)
    return Result(name=name, title=name, claims=[Claim("c", "s", str(os.getpid()), "agrees")],
                  figures=[], data_file="", settings={"profile": profile, "out": out})


def test_parallel_workers_run_every_experiment_in_separate_processes(tmp_path):
    names = ["a", "b", "c", "d"]
    msgs, done = [], []
    res = run_all(names, "quick", str(tmp_path), 2, on_message=msgs.append,
                  on_done=done.append, runner=_fake_runner)
    assert sorted(res) == names and sorted(done) == names
    assert all(res[n].name == n and res[n].settings["out"] == str(tmp_path) for n in names)
    pids = {res[n].claims[0].measured for n in names}
    assert len(pids) == 2 and str(os.getpid()) not in pids  # two workers, not this process
    assert sorted(m for m in msgs if m.endswith("halfway")) == [f"{n}: halfway" for n in names]
    # one process: the same results, run here
    res1 = run_all(names, "alone", str(tmp_path), 1, runner=_fake_runner)
    assert {res1[n].claims[0].measured for n in names} == {str(os.getpid())}


def test_parallel_worker_failure_names_the_experiment(tmp_path):
    with pytest.raises(RuntimeError, match="experiment 'boom' failed: ValueError"):
        run_all(["a", "boom", "b"], "quick", str(tmp_path), 2, runner=_fake_runner)


def test_reproduce_rejects_bad_workers(tmp_path):
    with pytest.raises(ValueError, match="workers=0; allowed: an integer >= 1"):
        reproduce(str(tmp_path), workers=0)
    r = CliRunner().invoke(main, ["reproduce", "--workers", "0", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--workers" in r.output
