"""The command line's own usage errors (click's checks of option values, unknown options,
missing arguments): one line on stderr naming the command and the option, exit code 2."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from gfsim.cli import main


@pytest.mark.parametrize("args, needle", [
    (["reproduce", "--workers", "0"], "Invalid value for '--workers': 0 is not in the range x>=1"),
    (["reproduce", "--workers", "two"], "Invalid value for '--workers': 'two'"),
    (["sweep", "s.toml", "--workers", "0"], "No such option '--workers'"),
    (["sweep", "s.toml", "--backend", "slurm"], "Invalid value for '--backend': 'slurm'"),
    (["plot", "STORE", "--layer", "x"], "Invalid value for '--layer': 'x' is not a valid integer"),
    (["plot", "STORE", "--run", "1.5"], "Invalid value for '--run': '1.5'"),
    (["bench", "--repeats", "many"], "Invalid value for '--repeats': 'many'"),
    (["sweep"], "Missing argument 'SWEEP.toml'"),
    (["nope"], "No such command 'nope'"),
])
def test_click_usage_errors_are_one_line_with_exit_2(args, needle):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    command = "gfsim" if args[0] == "nope" else f"gfsim {args[0]}"
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: "), r.stderr
    assert needle in lines[0]
    assert r.stdout == ""


def test_help_version_and_bare_gfsim_still_show_clicks_text():
    r = CliRunner().invoke(main, ["sweep", "--help"])
    assert r.exit_code == 0 and r.stdout.startswith("Usage: ") and "--resume" in r.stdout
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and "version" in r.stdout


def test_console_script_exit_code_and_stderr():
    # the installed entry point (not CliRunner): the same line, the real exit status
    p = subprocess.run([sys.executable, "-c", "from gfsim.cli import main; main()", "sweep",
                        "x.toml", "--workers", "0"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == ("gfsim sweep: error: No such option '--workers'. Allowed: the "
                                "options `gfsim sweep --help` lists.")
    assert p.stdout == ""
