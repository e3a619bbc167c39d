"""The ``gfsim`` command line."""

from __future__ import annotations

import sys

import click


class _Group(click.Group):
    """Click's usage errors (a bad option value, an unknown option, a missing argument) as one
    line on stderr naming the command, exit code 2, like gfsim's own checks (click would print
    its usage block, a help hint and the error on three lines)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:  # plain `gfsim`: the help, as click
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            command = " ".join(["gfsim", *(e.ctx.command_path.split()[1:] if e.ctx else [])])
            msg = e.format_message()
            if isinstance(e, click.NoSuchOption):
                msg += f" Allowed: the options `{command} --help` lists."
            click.echo(f"{command}: error: {msg}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(0)


@click.group(cls=_Group)
@click.version_option(package_name="gfsim")
def main():
    """gfsim: exact, batched gradient flow for deep linear and ReLU networks."""


@main.command()
@click.option("--quick", "profile", flag_value="quick", default=True,
              help="Laptop scale, minutes on a CPU (default).")
@click.option("--full", "profile", flag_value="full", help="The authors' scale.")
@click.option("--out", default="gfsim-reproduce", show_default=True,
              help="Directory for figures, data and the report.")
@click.option("--only", "only", multiple=True, metavar="NAME",
              help="Run only this experiment (repeatable).")
@click.option("--no-progress", is_flag=True, help="Do not show a progress bar.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes running experiments side by side [default: 2; 1 on one core].")
@click.option("--resume", is_flag=True,
              help="Keep the experiments already stored in --out; run only the missing ones.")
def reproduce(profile, out, only, no_progress, workers, resume):
    """Re-run the paper's experiments; write figures, one store per experiment and a
    claims-vs-measured report."""
    from .reproduce import Interrupted
    from .reproduce import reproduce as run

    try:
        results = run(out, profile=profile, experiments=list(only) or None,
                      progress=not no_progress, workers=workers, resume=resume)
    except ValueError as e:
        _usage_error("reproduce", e)
    except Interrupted as e:
        click.echo(f"gfsim reproduce: {e}; missing: {', '.join(e.missing)}; "
                   f"{out}/report.md says INCOMPLETE; resume with --resume", err=True)
        sys.exit(128 + e.signal)
    for r in results:
        for c in r.claims:
            click.echo(f"[{c.verdict}] {r.name}: {c.claim}")
    click.echo(f"report: {out}/report.md")


@main.command()
@click.option("--quick", "profile", flag_value="quick", default=True,
              help="Small sizes: about 30 minutes on a 2-core CPU, 26 of them W-E's "
              "(default).")
@click.option("--full", "profile", flag_value="full",
              help="The protocol's sizes (docs/benchmarks.md).")
@click.option("--only", "only", multiple=True, metavar="NAME",
              help="Run only this workload: W-A, W-B, W-C, W-D or W-E (repeatable).")
@click.option("--out", default="gfsim-bench", show_default=True,
              help="Directory for bench.json, bench.md and the plots.")
@click.option("--repeats", default=3, show_default=True, type=int, metavar="N",
              help="Timed repeats after each first call; the median is reported.")
@click.option("--skip", "skip", multiple=True, metavar="METHOD",
              type=click.Choice(["torch", "scipy", "hand_diffrax", "persistent_cache"]),
              help="Leave out a baseline (repeatable).")
def bench(profile, only, out, repeats, skip):
    """Run the benchmark suite: gfsim against hand-written Diffrax, GD in JAX and PyTorch, and
    scipy, on workloads W-A..W-E; write every figure, a Markdown table and plots to --out."""
    from .bench import check_options, run_suite

    try:
        check_options(profile=profile, only=only, out=out, repeats=repeats)
    except ValueError as e:
        click.echo(f"gfsim bench: error: {e}", err=True)
        sys.exit(2)
    res = run_suite(None, profile=profile, only=only, repeats=repeats, skip=skip,
                    progress=lambda msg: click.echo(msg, err=True))
    res["command"] = " ".join(["gfsim", "bench", *sys.argv[2:]])
    from .bench import write

    files = write(res, out)
    for name, w in res["workloads"].items():
        if w.get("error"):
            click.echo(f"{name} FAILED: {w['error']}", err=True)
    click.echo(f"results: {files['json']}, {files['markdown']}, "
               f"{len(files['plots'])} plot(s) in {out}")


def _usage_error(command: str, e: Exception):
    """Usage errors: one line naming the bad field and what is allowed, exit code 2."""
    click.echo(f"gfsim {command}: error: {e}", err=True)
    sys.exit(2)


def _run_spec(command, spec, out, backend, address, resume, no_progress):
    from .sweep import sweep as run_sweep

    try:
        summary = run_sweep(spec, out, backend=backend, resume=resume,
                            progress=not no_progress, address=address)
    except ValueError as e:
        _usage_error(command, e)
    errors = summary["batch_errors"]
    click.echo(f"{summary['runs_done']} / {summary['runs_total']} runs in {out} "
               f"({summary['failed']} failed runs, {len(errors)} failed batches, "
               f"{summary['wall_time']:.1f} s)")
    for bid, err in errors.items():
        click.echo(f"batch {bid} failed: {err}", err=True)
    if summary.get("interrupted"):
        import signal

        sig = summary["interrupted"]
        click.echo(f"gfsim {command}: interrupted by {signal.Signals(sig).name}: "
                   f"{summary['runs_done']} / {summary['runs_total']} runs committed, the rest "
                   f"pending; resume with --resume", err=True)
        sys.exit(128 + sig)
    if errors:
        sys.exit(1)


@main.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", required=True, metavar="STORE", help="Store directory to create.")
@click.option("--no-progress", is_flag=True, help="Do not show a progress bar.")
def run_command(config, out, no_progress):
    """Run one configuration (a TOML file of config fields) into a new store."""
    from .sweep import load_spec

    try:
        spec = load_spec(config, allow_axes=False)
    except ValueError as e:
        _usage_error("run", e)
    _run_spec("run", spec, out, "local", None, False, no_progress)


@main.command("sweep")
@click.argument("spec_file", metavar="SWEEP.toml", type=click.Path(dir_okay=False))
@click.option("--out", metavar="STORE", default=None, help="Store directory (required unless "
              "--dry-run).")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="Where batches run: this process, or Ray tasks.")
@click.option("--address", default=None, metavar="ADDR",
              help="Ray cluster address for --backend ray [default: auto].")
@click.option("--resume", is_flag=True, help="Continue the sweep in an existing STORE.")
@click.option("--dry-run", is_flag=True, help="Print the plan of batches; run nothing.")
@click.option("--no-progress", is_flag=True, help="Do not show a progress bar.")
def sweep_command(spec_file, out, backend, address, resume, dry_run, no_progress):
    """Run every configuration of a sweep spec into a store, in batches committed atomically
    (resumable with --resume)."""
    from .sweep import dry_run as plan_text
    from .sweep import load_spec

    try:
        spec = load_spec(spec_file)
        if dry_run:
            click.echo(plan_text(spec))
            return
        if out is None:
            raise ValueError("--out STORE is required (or --dry-run).")
        if address is not None and backend != "ray":
            raise ValueError("--address is only allowed with --backend ray.")
    except ValueError as e:
        _usage_error("sweep", e)
    _run_spec("sweep", spec, out, backend, address, resume, no_progress)


@main.command("status")
@click.argument("store", metavar="STORE", type=click.Path())
def status_command(store):
    """Runs done / total, counts by status, failed runs with their reason."""
    from .sweep import format_status, status

    try:
        click.echo(format_status(status(store)))
    except ValueError as e:
        _usage_error("status", e)


def _parse_where(items):
    from .sweep._spec import tomllib

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--where {item!r} is not allowed; allowed: FIELD=VALUE.")
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value
    return out


@main.command("plot")
@click.argument("store", metavar="STORE", type=click.Path())
@click.option("--kind", type=click.Choice(["final-rank", "spectra", "loss"]),
              default="final-rank", show_default=True, help="Which view.")
@click.option("--x", "x", default=None, metavar="FIELD",
              help="final-rank: the config field on the x axis.")
@click.option("--hue", default=None, metavar="FIELD", help="Colour by this config field.")
@click.option("--layer", type=int, default=None, help="final-rank: one layer (default: mean).")
@click.option("--run", "run_id", type=int, default=None, help="spectra: the run id.")
@click.option("--where", "where", multiple=True, metavar="FIELD=VALUE",
              help="Keep only runs with this value (repeatable).")
@click.option("--out", default=None, metavar="PNG", help="Output file [default: STORE-KIND.png].")
def plot_command(store, kind, x, hue, layer, run_id, where, out):
    """Draw a common view of a store as a PNG."""
    from .plots import plot
    from .store import load

    try:
        ds = load(store)
        out = out or f"{str(store).rstrip('/')}-{kind}.png"
        path = plot(ds, kind, out, x=x, hue=hue, layer=layer, run_id=run_id,
                    where=_parse_where(where))
    except ValueError as e:
        _usage_error("plot", e)
    click.echo(path)


if __name__ == "__main__":
    sys.exit(main())
