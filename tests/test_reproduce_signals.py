"""SIGINT/SIGTERM during ``gfsim reproduce`` (a real subprocess, fake experiments that sleep):
it stops at an experiment boundary, exits with 128 + the signal, leaves a report that says
INCOMPLETE and lists what is missing, only whole stores, and ``--resume`` runs exactly the
missing experiments and writes the complete report."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np

import gfsim

TESTS = os.path.dirname(os.path.abspath(__file__))
FAKES = ["fake_a", "fake_b", "fake_c", "fake_d"]


def _command(out, *args):
    only = [a for n in FAKES for a in ("--only", n)]
    return [sys.executable, "-c", "import reproduce_fakes; from gfsim.cli import main; main()",
            "reproduce", "--out", str(out), "--no-progress", *only, *args]


def _env(seconds):
    env = dict(os.environ, GFSIM_FAKE_SECONDS=str(seconds))
    env["PYTHONPATH"] = os.pathsep.join([TESTS, env.get("PYTHONPATH", "")])
    return env


def _log(out):
    path = out / "fake-log.txt"
    return path.read_text().split("\n")[:-1] if path.exists() else []


def _start_and_wait(out, seconds, *args, starts=1):
    proc = subprocess.Popen(_command(out, *args), env=_env(seconds), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while sum(line.startswith("start") for line in _log(out)) < starts:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no experiment started"
        time.sleep(0.05)
    return proc


def _finish(proc, timeout=120):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, out, err


def _resume_and_check(out, done_before):
    p = subprocess.run(_command(out, "--resume", "--workers", "1"), env=_env(0),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    log = _log(out)
    again = [line.split()[1] for line in log if line.startswith("start")]
    # each experiment ran exactly once over both runs: the resume ran only the missing ones
    assert sorted(again) == FAKES, log
    report = (out / "report.md").read_text()
    assert "INCOMPLETE" not in report
    for n in FAKES:
        assert f"| {n} | {n} holds | fake | {n} measured | **agrees** |" in report
        assert f"Data: `{n}.zarr`" in report
        np.testing.assert_array_equal(gfsim.load(out / f"{n}.zarr")["final_loss"].values,
                                      np.arange(3.0) + FAKES.index(n))
    for n in done_before:  # kept from the interrupted run, not rewritten
        assert f"[agrees] {n}: {n} holds" in p.stdout


def _check_interrupted(out, code, err, sig):
    assert code == 128 + sig, err
    name = signal.Signals(sig).name
    assert f"interrupted by {name}" in err and "resume with --resume" in err
    log = _log(out)
    started = [line.split()[1] for line in log if line.startswith("start")]
    ended = [line.split()[1] for line in log if line.startswith("end")]
    # stopped at an experiment boundary: what started finished and was written, nothing else
    assert sorted(started) == sorted(ended) and 0 < len(started) < len(FAKES), log
    stores = sorted(os.path.basename(p)[:-5] for p in glob.glob(str(out / "*.zarr")))
    assert stores == sorted(ended)
    assert not glob.glob(str(out / ".tmp-*"))
    report = (out / "report.md").read_text()
    missing = [n for n in FAKES if n not in ended]
    assert f"**INCOMPLETE** (interrupted by {name})" in report
    assert f"no data and no verdicts yet for {', '.join(missing)}." in report
    assert "--resume" in report
    for n in FAKES:
        assert (f"| {n} | {n} holds |" in report) == (n in ended)
    assert "INCOMPLETE" in (out / "report.html").read_text()
    return ended


def test_sigterm_with_two_workers_stops_at_an_experiment_boundary_then_resumes(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "report.md").write_text("# a complete report of an earlier run\n")
    proc = _start_and_wait(out, 2.0, "--workers", "2", starts=2)
    # while experiments run, the report on disk says so (the earlier one is gone)
    assert "**INCOMPLETE** (running)" in (out / "report.md").read_text()
    proc.send_signal(signal.SIGTERM)
    code, _, err = _finish(proc)
    ended = _check_interrupted(out, code, err, signal.SIGTERM)
    assert len(ended) == 2  # the two running experiments finished; the queued two never began
    # a resume at another profile would mix scales: one clear line, exit 2, nothing touched
    p = subprocess.run(_command(out, "--resume", "--full"), env=_env(0), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "was written by profile 'quick', not 'full'" in p.stderr
    assert len(_log(out)) == 4
    _resume_and_check(out, ended)


def test_sigint_in_process_stops_after_the_running_experiment_then_resumes(tmp_path):
    out = tmp_path / "o"
    proc = _start_and_wait(out, 1.5, "--workers", "1")
    proc.send_signal(signal.SIGINT)
    code, _, err = _finish(proc)
    ended = _check_interrupted(out, code, err, signal.SIGINT)
    assert ended == ["fake_a"]
    _resume_and_check(out, ended)


def test_a_second_signal_stops_at_once_and_leaves_no_half_store(tmp_path):
    out = tmp_path / "o"
    proc = _start_and_wait(out, 60, "--workers", "1")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    t = time.monotonic()
    code, _, err = _finish(proc, timeout=30)
    assert time.monotonic() - t < 20  # not the 60 s of the running experiment
    assert code == 128 + signal.SIGTERM, err
    assert _log(out) == ["start fake_a"]
    assert not glob.glob(str(out / "*.zarr")) and not glob.glob(str(out / ".tmp-*"))
    report = (out / "report.md").read_text()
    assert f"no data and no verdicts yet for {', '.join(FAKES)}." in report
