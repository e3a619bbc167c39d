"""``gfsim reproduce``: run the paper's experiments and write figures and a claims-vs-measured
report (Markdown and HTML) to an output directory."""

from __future__ import annotations

import html
import json
import os
import platform
import tempfile
import time
from importlib import metadata

from .experiments import EXPERIMENTS, ORDER, PROFILES, Result


def check_out_dir(out: str) -> str:
    """Create ``out`` if needed and make sure it is writable; one clear error otherwise."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ValueError(f"--out={out!r} is not a writable directory ({e.strerror}).") from None
    return out


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("gfsim", "jax", "jaxlib", "diffrax", "equinox", "optax", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _markdown(results: list[Result], profile: str, versions: dict, total: float) -> str:
    import jax

    lines = [
        "# gfsim reproduction report",
        "",
        "Timor, Vardi & Shamir, *Implicit Regularization Towards Rank Minimization in ReLU "
        "Networks* (ALT 2023), re-run with true gradient flow.",
        "",
        f"Profile: `{profile}`; device: `{jax.devices()[0].device_kind}` "
        f"({jax.default_backend()}); float64: {jax.config.jax_enable_x64}; total "
        f"{total:.1f} s.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "| experiment | claim | setting | measured | verdict |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        for c in r.claims:
            lines.append(f"| {r.name} | {c.claim} | {c.setting} | {c.measured} | **{c.verdict}** |")
    for r in results:
        lines += ["", f"## {r.title}", "", f"Time: {r.seconds:.1f} s. Data: `{r.data_file}`.", ""]
        lines.append("Settings: `" + json.dumps(r.settings, sort_keys=True) + "`")
        lines.append("")
        for note in r.notes:
            lines += [f"> {note}", ""]
        for fig in r.figures:
            lines += [f"![{fig}]({fig})", ""]
    return "\n".join(lines) + "\n"


def _html(markdown_text: str, results: list[Result]) -> str:
    body = [f"<pre>{html.escape(markdown_text)}</pre>"]
    for r in results:
        for fig in r.figures:
            body.append(f'<h3>{html.escape(fig)}</h3><img src="{html.escape(fig)}" width="900">')
    return ("<!doctype html><html><head><meta charset='utf-8'><title>gfsim reproduction"
            "</title></head><body>" + "\n".join(body) + "</body></html>\n")


def reproduce(out: str = "gfsim-reproduce", *, profile: str = "quick",
              experiments: list[str] | None = None, progress: bool = True) -> list[Result]:
    """Run the selected experiments (default: all) and write the report to ``out``."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}; allowed: {', '.join(PROFILES)}.")
    if experiments:
        names = list(experiments)
    else:
        names = [n for n in ORDER if n in EXPERIMENTS]
        names += [n for n in EXPERIMENTS.names() if n not in names]
    for n in names:
        EXPERIMENTS.check(n, "experiment")
    check_out_dir(out)
    from tqdm import tqdm

    start = time.perf_counter()
    results = []
    with tqdm(total=len(names), desc="gfsim reproduce", disable=not progress) as bar:
        for n in names:
            bar.set_postfix_str(n)
            results.append(EXPERIMENTS.get(n)(profile, out, lambda msg: bar.set_postfix_str(msg)))
            bar.update()
    total = time.perf_counter() - start
    md = _markdown(results, profile, _versions(), total)
    # Written last and atomically: a report on disk always describes a finished run.
    for name, text in (("report.md", md), ("report.html", _html(md, results))):
        tmp = os.path.join(out, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out, name))
    return results
