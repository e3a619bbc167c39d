"""The suite's Markdown tables and accuracy-vs-cost plots."""

from __future__ import annotations

import math

from .measure import TARGETS

LABELS = {
    "gfsim": "gfsim (default method)",
    "gfsim plain": "gfsim (plain)",
    "hand_diffrax": "hand-written Diffrax",
    "gd_jax": "GD, JAX",
    "torch": "GD, PyTorch",
    "scipy": "scipy DOP853",
}
ORDER = tuple(LABELS)


def _fmt(x, spec=".3g"):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else "nan"
    return format(x, spec)


def _mib(mem):
    if not isinstance(mem, dict) or "peak_bytes" not in mem:
        return "-"
    return f"{mem['peak_bytes'] / 2**20:.3g}"


def _ratio_cell(v):
    if v is None:
        return "not reached"
    r = v.get("ratio")
    cell = f"{_fmt(r)}x" if r is not None else f"{_fmt(v['time_s'])} s"
    return cell + (" (extrapolated)" if v.get("extrapolated") else "")


def markdown(res) -> str:
    m = res["machine"]
    ex = res["bench_extra"]
    lines = [
        f"# gfsim benchmark suite (profile {res['profile']})", "",
        f"Command: `{res.get('command') or 'gfsim.bench.run_suite(...)'}`. Machine: "
        f"{m['cpus']} CPUs, {m['processor'] or m['machine']}, {m['platform']}; JAX {m['jax']} "
        f"on {m['device']} ({m['backend']}), float64. Bench extra: scipy {ex.get('scipy')}, "
        f"torch {ex.get('torch')}. Total wall time {res['total_wall_s']:.0f} s.", "",
        "Accuracy = median over runs of the max over the save times t1 x (0, 1/30, 1/10, 1/3, 1) "
        "of ||theta - theta_ref|| / ||theta_ref|| against a Dopri8 solve at rtol 1e-12 "
        "(runs > 1e-3: the fraction of runs above 1e-3). Steady = median of "
        f"{res['repeats']} repeats after the first call (fewer once a knob's repeats add up to "
        "3 s); first call = compile + run. Field "
        "evaluations: per run, median (Tsit5: 6 per attempted step; the event-driven solver's "
        "event checks and location are not counted); GD: one per step; scipy: nfev. Lockstep "
        "waste = 1 - sum(steps) / (max steps x runs). Solver overhead = steady time / (lockstep "
        "field evaluations x one bare batched gradient). Balance drift: "
        "gfsim.analysis.balance_drift (median over runs). Memory: XLA memory_analysis of the "
        "compiled program (argument + output + temp), measured for the first knob of each JAX "
        "method; max RSS is the process's.", "",
        "## Time to accuracy: method time / gfsim time", "",
    ]
    present = {r["family"] for w in res["workloads"].values() for p in w.get("problems", [])
               for r in p["rows"]}
    others = [f for f in ORDER[1:] if f in present]
    lines += [
        "| problem | target | gfsim (knob, s) | " + " | ".join(LABELS[f] for f in others) + " |",
        "|---|---|---|" + "---|" * len(others),
    ]
    for w in res["workloads"].values():
        for p in w.get("problems", []):
            for a in TARGETS:
                h = p["headline"][f"{a:g}"]
                g = h.get("gfsim")
                gs = f"{g['knob']}, {_fmt(g['time_s'])}" if g else "not reached"
                cells = [_ratio_cell(h[f]) if f in h else "-" for f in others]
                lines.append(f"| {p['name']} | {a:g} | {gs} | " + " | ".join(cells) + " |")
    for name, w in res["workloads"].items():
        lines += ["", f"## {name}", ""]
        if w.get("error"):
            lines += [f"FAILED: {w['error']}"]
            continue
        if w.get("persistent_cache"):
            pc = w["persistent_cache"]
            lines += [f"Persistent compilation cache (W-A, 288 seeds, two fresh processes sharing "
                      f"an empty cache): first call {pc['first_process_first_call_s']:.2f} s in "
                      f"the first process, {pc['second_process_first_call_s']:.2f} s in the "
                      "second.", ""]
        for p in w["problems"]:
            lines += _problem_md(p)
        if w.get("plot"):
            lines += ["", f"![accuracy vs time, {name}]({w['plot']})"]
    return "\n".join(lines) + "\n"


def _problem_md(p) -> list[str]:
    ref = p["reference"]
    lines = [
        f"### {p['name']}", "",
        f"{p['description']}. Reference: {ref['solver']} (method {ref['method']}), rtol "
        f"{ref['rtol']:g}, status {ref['status']}, steps max {ref['steps_max']}, first call "
        f"{ref['first_call_s']:.2f} s"
        + (f", median {ref['crossings_median']:.0f} kink crossings per run"
           if ref.get("crossings_median") is not None else "") + ".", "",
        "| method | knob | accuracy | runs > 1e-3 | steady s | first call s | field evals "
        "| steps max | acc. / rej. | lockstep waste | overhead | balance drift | memory MiB "
        "| note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in p["rows"]:
        note = []
        if r.get("scaled") and r["scaled"] != "full run timed":
            note.append(r["scaled"])
        if r.get("accuracy_note"):
            note.append(r["accuracy_note"])
        if isinstance(r.get("status"), dict) and set(r["status"]) != {"reached_t1"}:
            note.append(f"status {r['status']}")
        if r.get("runs_succeeded") is not None and r["runs_succeeded"] < r["runs_timed"]:
            note.append(f"{r['runs_timed'] - r['runs_succeeded']} of {r['runs_timed']} runs "
                        f"stopped at {r['max_evals']} evaluations")
        if r.get("runs_at_max_steps"):
            note.append(f"{r['runs_at_max_steps']} runs hit max_steps")
        ar = "-"
        if r.get("accepted_median") is not None:
            ar = f"{r['accepted_median']:.0f} / {r['rejected_median']:.0f}"
        lines.append(
            f"| {r['method']} | {r['knob']} | {_fmt(r.get('accuracy'), '.2e')} | "
            f"{_fmt(r.get('frac_above_1e3'), '.2f')} | {_fmt(r['steady_s'])} | "
            f"{_fmt(r.get('first_call_s'))} | {_fmt(r.get('field_evals_median'), '.0f')} | "
            f"{_fmt(r.get('steps_max'), 'd')} | {ar} | {_fmt(r.get('lockstep_waste'), '.2f')} | "
            f"{_fmt(r.get('solver_overhead'), '.2f')} | "
            f"{_fmt(r.get('balance_drift_median'), '.1e')} | {_mib(r.get('memory'))} | "
            f"{'; '.join(note)} |")
    extra = []
    fit = p.get("gd_fit")
    if fit and fit.get("not_first_order"):
        extra.append(f"GD error is not first order in lr here (log-log slope "
                     f"{_fmt(fit['loglog_slope'])}): nothing extrapolated.")
    elif fit:
        extra.append(f"GD first-order fit: accuracy = {fit['C']:.3g} x lr (free log-log slope "
                     f"{_fmt(fit['loglog_slope'])}), {fit['s_per_step']:.3g} s per step; the lr "
                     "for a target accuracy is extrapolated from it.")
    if p.get("gfsim_over_hand"):
        extra.append("gfsim / hand-written Diffrax, same rtol: " + ", ".join(
            f"{k}: {v:.2f}" for k, v in p["gfsim_over_hand"].items()) + ".")
    if p.get("gfsim_compile_s") is not None:
        extra.append(f"gfsim compile (first call - steady): {p['gfsim_compile_s']:.2f} s.")
    extra.append(f"Bare batched gradient: {p['bare_batched_gradient_s'] * 1e6:.3g} us.")
    if p.get("max_rss_bytes"):
        extra.append(f"Process max RSS so far: {p['max_rss_bytes'] / 2**20:.0f} MiB.")
    if p.get("skipped"):
        extra.append("Skipped: " + "; ".join(f"{k}: {v}" for k, v in p["skipped"].items()) + ".")
    return lines + ["", " ".join(extra), ""]


def plot_workload(w, path) -> None:
    """One panel per problem: median relative error against steady wall time, log-log, one line
    per method; GD points extrapolated from the first-order fit dashed; targets dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = w["problems"]
    cols = min(len(probs), 4)
    rows = math.ceil(len(probs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    colors = dict(zip(ORDER, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, p in zip(axes.ravel(), probs):
        for fam in ORDER:
            pts = [(r["steady_s"], r["accuracy"]) for r in p["rows"]
                   if r["family"] == fam and r.get("accuracy") is not None
                   and math.isfinite(r["accuracy"]) and r["accuracy"] > 0]
            pts.sort()
            if pts:
                ax.plot(*zip(*pts), "o-", color=colors[fam], label=LABELS[fam], ms=4)
            ext = [(v["time_s"], float(a)) for a, h in p["headline"].items()
                   for f, v in h.items() if f == fam and v and v.get("extrapolated")]
            if ext:
                ext.sort()
                start = [min(pts, key=lambda q: q[1])] if pts else []
                if not pts and fam == "torch":
                    # torch rows timed on a few steps carry no accuracy: start from the JAX fit
                    start = []
                xs, ys = zip(*(start + ext))
                ax.plot(xs, ys, "--", color=colors[fam], lw=1)
                ax.plot(*zip(*ext), "o", mfc="none", color=colors[fam],
                        label=f"{LABELS[fam]} (extrapolated)")
        for a in TARGETS:
            ax.axhline(a, color="0.5", ls=":", lw=1)
            ax.text(1.0, a, f" {a:g}", transform=ax.get_yaxis_transform(), va="center",
                    fontsize=7, color="0.4")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("steady wall time (s)")
        ax.set_ylabel("median relative error")
        ax.set_title(f"{p['name']} ({p['runs']} runs)", fontsize=9)
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(probs):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
