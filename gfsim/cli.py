"""The ``gfsim`` command line."""

from __future__ import annotations

import sys

import click


@click.group()
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
def reproduce(profile, out, only, no_progress, workers):
    """Re-run the paper's experiments; write figures and a claims-vs-measured report."""
    from .reproduce import reproduce as run

    try:
        results = run(out, profile=profile, experiments=list(only) or None,
                      progress=not no_progress, workers=workers)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    for r in results:
        for c in r.claims:
            click.echo(f"[{c.verdict}] {r.name}: {c.claim}")
    click.echo(f"report: {out}/report.md")


@main.command()
@click.option("--quick", "profile", flag_value="quick", default=True,
              help="Small sizes, a few minutes on a laptop CPU (default).")
@click.option("--full", "profile", flag_value="full",
              help="The protocol's sizes (docs/benchmarks.md).")
@click.option("--only", "only", multiple=True, metavar="NAME",
              help="Run only this workload: W-A, W-B, W-C or W-D (repeatable).")
@click.option("--out", default="gfsim-bench", show_default=True,
              help="Directory for bench.json, bench.md and the plots.")
@click.option("--repeats", default=3, show_default=True, type=int, metavar="N",
              help="Timed repeats after each first call; the median is reported.")
@click.option("--skip", "skip", multiple=True, metavar="METHOD",
              type=click.Choice(["torch", "scipy", "hand_diffrax", "persistent_cache"]),
              help="Leave out a baseline (repeatable).")
def bench(profile, only, out, repeats, skip):
    """Run the benchmark suite: gfsim against hand-written Diffrax, GD in JAX and PyTorch, and
    scipy, on workloads W-A..W-D; write every figure, a Markdown table and plots to --out."""
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


if __name__ == "__main__":
    sys.exit(main())
