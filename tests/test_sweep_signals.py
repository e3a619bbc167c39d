"""SIGINT/SIGTERM during a sweep (a real subprocess): it stops at a batch boundary, says so,
exits with 128 + the signal, leaves only whole batches, and --resume completes it to exactly
the store of an uninterrupted sweep."""

from __future__ import annotations

import glob
import signal
import subprocess

from click.testing import CliRunner
from test_sweep_resume import SPEC, assert_same_store, start_sweep_after_reference

import gfsim
from gfsim.cli import main

# eight batches of the resume test's tiny batch (one compiled program)
SPEC8 = SPEC.replace("[1.0, 2.0, 3.0, 4.0]", "[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]")


def test_sigterm_stops_at_a_batch_boundary_then_resumes(tmp_path):
    spec_file, spec, ref, out, proc = start_sweep_after_reference(
        tmp_path, SPEC8, "stopped", stdout=subprocess.PIPE)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    err = err.decode()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "resume with --resume" in err
    assert not glob.glob(str(out / "batches" / ".tmp-*"))
    partial = gfsim.load(out)
    assert 6 <= partial.sizes["run"] < spec.num_runs and partial.sizes["run"] % 6 == 0

    r = CliRunner().invoke(main, ["sweep", str(spec_file), "--out", str(out), "--resume",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    assert_same_store(out, ref)
