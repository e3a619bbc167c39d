"""The event-driven ReLU flow (method="events") against plain Tsit5 (method="plain").

    python benchmarks/kinks.py [--repeats 3] [--quick] [--out benchmarks/results/kinks.json]

1. Sliding case (the non-smooth issue's depth-2 case: widths (5, 8, 2), 6 Gaussian points and
   targets, 1/sqrt(fan-in) init, sum loss, t = 10): error of the final weights against an
   events solve at rtol 1e-12, vector-field evaluations (6 per attempted Tsit5 step, FSAL) and
   wall time, per rtol. Matched accuracy: the cheapest events setting at least as accurate as
   the most accurate plain run that reached t1.
2. Runs that never slide (experiment A: paper pair, disk init, width 2, 288 seeds, t1 = 300,
   mean loss; and a width-16 variant): wall time of both methods, median of repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import median_time  # noqa: E402

import gfsim  # noqa: E402

STAGES = 6  # Tsit5 with first-same-as-last


def case1():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    X = jax.random.normal(k1, (6, 5))
    Y = jax.random.normal(k2, (6, 2))
    return gfsim.MLP((5, 8, 2), init="gaussian", key=k3), gfsim.Dataset(X, Y)


def flat_final(tr):
    return np.concatenate([np.asarray(w).ravel() for w in tr.final_weights])


def sliding_case(repeats, quick):
    net, data = case1()
    kw = dict(reduction="sum", num_saves=4)
    ref = flat_final(gfsim.simulate(net, data, 10.0, rtol=1e-12, **kw))
    rows = []
    plans = [("events", r) for r in (1e-6, 1e-8, 1e-10)]
    plans += [("plain", r) for r in ((1e-4, 1e-5) if quick else (1e-4, 1e-5, 1e-6))]
    for method, rtol in plans:
        run = lambda method=method, rtol=rtol: gfsim.simulate(  # noqa: E731
            net, data, 10.0, rtol=rtol, method=method, max_steps=200_000, **kw
        )
        tr = run()
        t, _ = median_time(run, repeats if method == "events" else 1)
        err = float(np.linalg.norm(flat_final(tr) - ref) / np.linalg.norm(ref))
        rows.append(dict(
            method=method, rtol=rtol, status=tr.status_labels().item(),
            t_final=float(tr.t_final), rel_error=err, steps=int(tr.num_steps),
            rejected=int(tr.num_rejected), field_evals=STAGES * int(tr.num_steps),
            seconds=t,
            slides=None if tr.num_slides is None else int(tr.num_slides),
            crossings=None if tr.num_crossings is None else int(tr.num_crossings),
        ))
        print(rows[-1], flush=True)
    done = [r for r in rows if r["method"] == "plain" and r["status"] == "reached_t1"]
    match = None
    if done:
        best = min(done, key=lambda r: r["rel_error"])
        ok = [r for r in rows if r["method"] == "events" and r["rel_error"] <= best["rel_error"]]
        if ok:
            ev = min(ok, key=lambda r: r["field_evals"])
            match = dict(plain=best, events=ev,
                         eval_ratio=best["field_evals"] / ev["field_evals"],
                         time_ratio=best["seconds"] / ev["seconds"])
    return dict(rows=rows, matched=match)


def _flat_saves(tr):
    """(runs, T, params): all weights at the save times."""
    return np.concatenate([np.asarray(w).reshape(w.shape[0], w.shape[1], -1)
                           for w in tr.weights], axis=2)


def _accuracy(tr, ref):
    """Protocol accuracy: median over runs of the max over save times of the relative error."""
    a, b = _flat_saves(tr), _flat_saves(ref)
    err = np.linalg.norm(a - b, axis=2) / np.maximum(np.linalg.norm(b, axis=2), 1e-300)
    return float(np.median(np.nanmax(err, axis=1)))


def never_sliding(repeats, width, rtols=(1e-6, 1e-7, 1e-8, 1e-9, 1e-10)):
    """Plain vs events on experiment A (no run slides): at equal rtol, and at matched accuracy
    (each method's cheapest rtol reaching 1e-4 / 1e-6 against an events Dopri8 solve at rtol
    1e-12). Calls of the two methods are timed interleaved, so that load from other processes
    hits both alike."""
    data = gfsim.data.paper_pair()
    net = gfsim.MLP((2, width, 2), init="disk", key=jax.random.key(0), runs=288)
    kw = dict(num_saves=16)
    ref = gfsim.simulate(net, data, 300.0, rtol=1e-12, solver="dopri8", method="events", **kw)
    runs = {(m, r): (lambda m=m, r=r: gfsim.simulate(net, data, 300.0, rtol=r, method=m, **kw))
            for r in rtols for m in ("plain", "events")}
    trs = {k: run() for k, run in runs.items()}  # compile (the rtol is traced: once per method)
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, run in runs.items():
            times[k].append(median_time(run, 1)[0])
    rows = []
    for (m, r), tr in trs.items():
        rows.append(dict(method=m, rtol=r, seconds=float(np.median(times[(m, r)])),
                         all=times[(m, r)], accuracy=_accuracy(tr, ref),
                         max_steps=int(np.max(tr.num_steps)), status=tr.status_counts(),
                         slides=int(np.sum(tr.num_slides)) if m == "events" else None,
                         crossings=int(np.sum(tr.num_crossings)) if m == "events" else None))
    out = dict(rows=rows)
    at = {m: next(x for x in rows if x["method"] == m and x["rtol"] == 1e-8)
          for m in ("plain", "events")}
    out["equal_rtol_1e-8"] = at["events"]["seconds"] / at["plain"]["seconds"]
    for target in (1e-4, 1e-6):
        best = {}
        for m in ("plain", "events"):
            ok = [x for x in rows if x["method"] == m and x["accuracy"] <= target]
            best[m] = min(ok, key=lambda x: x["seconds"]) if ok else None
        out[f"matched_{target:.0e}"] = (
            dict(plain_rtol=best["plain"]["rtol"], events_rtol=best["events"]["rtol"],
                 events_over_plain=best["events"]["seconds"] / best["plain"]["seconds"])
            if best["plain"] and best["events"] else None)
    print(width, {k: v for k, v in out.items() if k != "rows"}, flush=True)
    return out


def markdown(res):
    lines = ["| method | rtol | status | rel. error | steps | rejected | field evals | s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["sliding"]["rows"]:
        lines.append(f"| {r['method']} | {r['rtol']:.0e} | {r['status']} (t={r['t_final']:.3g}) | "
                     f"{r['rel_error']:.2e} | {r['steps']} | {r['rejected']} | "
                     f"{r['field_evals']} | {r['seconds']:.3f} |")
    m = res["sliding"]["matched"]
    if m:
        lines.append("")
        lines.append(f"Matched accuracy: plain rtol {m['plain']['rtol']:.0e} (error "
                     f"{m['plain']['rel_error']:.1e}) vs events rtol {m['events']['rtol']:.0e} "
                     f"(error {m['events']['rel_error']:.1e}): {m['eval_ratio']:.0f}x fewer "
                     f"field evaluations, {m['time_ratio']:.0f}x less time.")
    lines.append("")
    lines.append("| never-sliding runs (288 seeds) | method | rtol | accuracy | s |")
    lines.append("|---|---|---|---|---|")
    for k, v in res["never_sliding"].items():
        for r in v["rows"]:
            lines.append(f"| {k} | {r['method']} | {r['rtol']:.0e} | {r['accuracy']:.1e} | "
                         f"{r['seconds']:.4f} |")
    lines.append("")
    lines.append("| never-sliding runs | events / plain at rtol 1e-8 | at matched 1e-4 | "
                 "at matched 1e-6 |")
    lines.append("|---|---|---|---|")
    for k, v in res["never_sliding"].items():
        cells = []
        for t in ("1e-04", "1e-06"):
            m = v[f"matched_{t}"]
            cells.append(f"{m['events_over_plain']:.2f} (rtol {m['events_rtol']:.0e} vs "
                         f"{m['plain_rtol']:.0e})" if m else "not reached")
        lines.append(f"| {k} | {v['equal_rtol_1e-8']:.2f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="skip plain rtol 1e-6 (minutes)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "kinks.json"))
    a = p.parse_args(argv)
    res = dict(
        machine=dict(platform=platform.platform(), device=str(jax.devices()[0]),
                     jax=jax.__version__),
        sliding=sliding_case(a.repeats, a.quick),
        never_sliding={f"width {w}": never_sliding(a.repeats, w) for w in (2, 16)},
    )
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2, default=str)
    with open(a.out.replace(".json", ".md"), "w") as f:
        f.write(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
