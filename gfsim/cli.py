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
def reproduce(profile, out, only, no_progress):
    """Re-run the paper's experiments; write figures and a claims-vs-measured report."""
    from .reproduce import reproduce as run

    try:
        results = run(out, profile=profile, experiments=list(only) or None,
                      progress=not no_progress)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    for r in results:
        for c in r.claims:
            click.echo(f"[{c.verdict}] {r.name}: {c.claim}")
    click.echo(f"report: {out}/report.md")


if __name__ == "__main__":
    sys.exit(main())
