"""The step-size rule on steps through kinks, at matched accuracy: the default EventController
(Diffrax's PI rule, pcoeff 0.4 / icoeff 0.3, on the accepted steps of runs at kinks: holding
pairs, or stepping through kinks under crossings="step") against the I rule there
(sliding_pcoeff 0 / sliding_icoeff 1), on the quick depth experiment's teacher-student runs
(`gfsim.experiments.depth`: n = 128, d = 8, width 24, 8 seeds, exponential loss, mean) run to a
fixed t1, each against a located reference: Tsit5 with crossings="locate" at rtol 1e-10,
atol 1e-13. Prints total steps, rejected steps and the median / worst relative error of the
final parameters, and writes them to OUT.json.

    python benchmarks/kink_rule.py OUT.json [--depth 4] [--t1 1e4] [--rtols 1e-4,1e-5]
"""

import argparse
import json
import time

import jax
import numpy as np

import gfsim
from gfsim.events._control import EventController
from gfsim.experiments import depth as D
from gfsim.methods import Events

RULES = {"default (PI at kinks)": (0.4, 0.3), "I rule at kinks": (0.0, 1.0)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--t1", type=float, default=1e4)
    ap.add_argument("--rtols", default="1e-4,1e-5")
    a = ap.parse_args(argv)
    cfg = D.SETTINGS["quick"]
    kd, kn = jax.random.split(jax.random.key(1))  # the experiment's own key sequence
    data = gfsim.data.teacher_student(kd, cfg["n"], cfg["dim"], teacher_widths=D.TEACHER_WIDTHS,
                                      labels="sign")
    for _ in range(list(cfg["depths"]).index(a.depth) + 1 if a.depth in cfg["depths"] else 1):
        kn, sub = jax.random.split(kn)
    widths = (cfg["dim"],) + (cfg["width"],) * (a.depth - 1) + (1,)
    net = gfsim.MLP(widths, "relu", key=sub, init="gaussian", scale=cfg["scale"],
                    runs=cfg["seeds"])
    kw = dict(loss="exponential", reduction="mean")

    def flat(tr):
        return np.concatenate([np.asarray(w).reshape(cfg["seeds"], -1)
                               for w in tr.final_weights], 1)

    t0 = time.perf_counter()
    ref = gfsim.simulate(net, data, a.t1, rtol=1e-10, atol=1e-13,
                         method=Events(crossings="locate", max_steps=1_000_000), **kw)
    R = flat(ref)
    out = dict(settings=dict(depth=a.depth, t1=a.t1, n=cfg["n"], seeds=cfg["seeds"]),
               reference=dict(seconds=time.perf_counter() - t0,
                              steps=int(np.sum(ref.num_steps)),
                              status=ref.status_counts()), rows=[])
    print("reference:", out["reference"], flush=True)
    for rtol in (float(r) for r in a.rtols.split(",")):
        for name, (p, i) in RULES.items():
            c = EventController(rtol=rtol, atol=rtol * 1e-3, sliding_pcoeff=p, sliding_icoeff=i)
            tr = gfsim.simulate(net, data, a.t1, method=Events(controller=c), **kw)
            e = np.linalg.norm(flat(tr) - R, axis=1) / np.linalg.norm(R, axis=1)
            row = dict(rule=name, rtol=rtol, method=tr.method, steps=int(np.sum(tr.num_steps)),
                       rejected=int(np.sum(tr.num_rejected)), status=tr.status_counts(),
                       median_error=float(np.median(e)), max_error=float(np.max(e)))
            print(row, flush=True)
            out["rows"].append(row)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
