"""gfsim reproduce: the experiments' outputs have the properties the paper predicts."""

import math
import os
import time

import numpy as np
import pytest
from click.testing import CliRunner

from gfsim.cli import main
from gfsim.experiments import EXPERIMENTS
from gfsim.reproduce import reproduce, run_all


@pytest.fixture(scope="module")
def negative(tmp_path_factory):
    out = tmp_path_factory.mktemp("negative")
    return EXPERIMENTS.get("negative")("tiny", str(out)), out


def test_negative_experiment_output(negative):
    result, out = negative
    data = np.load(os.path.join(out, result.data_file))
    X = data["X"]
    cos = float(X[0] @ X[1])
    for key in ("disk-w2", "xavier-w2"):
        loss = data[f"{key}/loss"]
        conv = data[f"{key}/converged"]
        np.testing.assert_array_equal(conv, loss < 1e-4)
        assert int(data[f"{key}/below_1e4"]) <= int(data[f"{key}/below_0499"]) <= int(
            data[f"{key}/below_1"]) <= len(loss)
        sr = data[f"{key}/stable_rank"]
        # Stable rank of a 2x2 layer lies in [1, 2].
        assert np.all((sr[conv] >= 1 - 1e-9) & (sr[conv] <= 2 + 1e-9))
    # Converged runs whose neurons started in the two one-sided regions sit at 2/(1+|cos|).
    split = data["disk-w2/split_start"] & data["disk-w2/converged"]
    assert split.any()  # a fixed key; each seed has probability ~0.13
    np.testing.assert_allclose(data["disk-w2/stable_rank"][split, 0], 2 / (1 + abs(cos)),
                               atol=1e-3)
    # Plateau losses of non-converged runs are the predicted 0.25 / 0.5 (mean convention).
    loss = data["disk-w2/loss"]
    stuck = loss[(loss > 1e-2) & np.isfinite(loss)]
    assert np.all(np.min(np.abs(stuck[:, None] - np.array([0.25, 0.5])[None]), 1) < 5e-2)
    verdicts = {c.verdict for c in result.claims}
    assert verdicts <= {"agrees", "disagrees", "inconclusive"}
    assert os.path.getsize(os.path.join(out, result.figures[0])) > 10_000
    assert not math.isnan(result.seconds)


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
