"""Sweep specifications: the config fields of one run, and a TOML spec of many.

A *config* is one run: every field of :data:`FIELDS` with a value (defaults filled in). A *spec*
is fixed fields plus axes: grid axes (a product), zip groups (lists iterated together, one axis
per group) and ``seeds`` (a range, the innermost axis). Everything is checked here, in plain
Python, before any store exists or anything is compiled: an unknown key gets the closest valid
key, a bad value names its field and what is allowed.

Spec format (docs/sweeps.md)::

    name = "depth-scale"          # optional
    dataset = "teacher_student"   # fixed fields: any config field at the top level
    n = 8
    seeds = 4                     # or [0, 3, 7], or {start = 0, stop = 8, step = 2}

    [grid]                        # product over every listed field
    depth = [2, 3]
    init_scale = [1e-3, 1e-1]

    [[zip]]                       # iterated together (equal lengths); repeat for more groups
    t1 = [10.0, 100.0]
    rtol = [1e-6, 1e-8]

    [options]                     # how the sweep is stored and batched (not config fields)
    save_weights = false
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

FORMAT = "gfsim-sweep/1"


# ----------------------------------------------------------------------------------------------
# Field checkers: each returns the normalised value or raises ValueError(sentence).


def _int(lo: int):
    def check(v, name):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name}={v!r} is not allowed; allowed: an integer >= {lo}.")
        return int(v)

    check.allowed = f"an integer >= {lo}"
    return check


def _float(*, lo: float = -math.inf, open_lo: bool = False, hi: float = math.inf,
           optional: bool = False):
    lo_s = ("> " if open_lo else ">= ") + repr(lo)
    desc = "a number" + ("" if lo == -math.inf else f" {lo_s}")
    if hi != math.inf:
        desc += f" and < {hi!r}"
    if optional:
        desc += ', or "none" (not set)'

    def check(v, name):
        if optional and (v is None or v == "none"):
            return None
        bad = isinstance(v, bool) or not isinstance(v, (int, float))
        if not bad:
            v = float(v)
            bad = not math.isfinite(v) or v < lo or (open_lo and v == lo) or v >= hi
        if bad:
            raise ValueError(f"{name}={v!r} is not allowed; allowed: {desc}.")
        return v

    check.allowed = desc
    return check


def _choice(names: Callable[[], tuple[str, ...]]):
    def check(v, name):
        allowed = names()
        if not isinstance(v, str) or v not in allowed:
            raise ValueError(f"{name}={v!r} is not allowed; allowed: {', '.join(allowed)}.")
        return v

    return check


def _activations():
    from ..nets import ACTIVATIONS

    return ACTIVATIONS.names()


def _inits():
    from ..nets import INITS

    return INITS.names()


def _losses():
    from ..losses import LOSSES

    return LOSSES.names()


def _solvers():
    from ..flow import SOLVERS

    return SOLVERS.names()


def _datasets():
    from ._runs import DATASETS

    return tuple(sorted(DATASETS))


def _paper_angle() -> float:
    return 2.0 * math.atan2(1.0, 0.99)


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field: its default, its checker, and whether runs that differ in it can share
    a batch (``in_batch``: a value that only enters the initial weights or the data)."""

    default: Any
    check: Callable
    doc: str
    in_batch: bool = False


# The config fields, in the order they are shown. Every one becomes a run coordinate of the store.
FIELDS: dict[str, Field] = {
    # randomness
    "seed": Field(0, _int(0), "PRNG seed of the initial weights: jax.random.key(seed)", True),
    "data_seed": Field(0, _int(0), "PRNG seed of the dataset: jax.random.key(data_seed)", True),
    # data
    "dataset": Field("teacher_student", _choice(_datasets),
                     "paper_pair, random_pairs, sphere or teacher_student (gfsim.data)"),
    "n": Field(32, _int(1), "number of points (sphere, teacher_student)"),
    "dim": Field(8, _int(1), "input dimension d_in"),
    "d_out": Field(1, _int(1), "outputs (sphere); paper_pair and random_pairs have 2, "
                   "teacher_student 1"),
    "targets": Field("ones", _choice(lambda: ("gaussian", "ones", "signs")),
                     "sphere targets", True),
    "labels": Field("sign", _choice(lambda: ("regression", "sign")),
                    "teacher_student targets", True),
    "teacher_width": Field(10, _int(1), "hidden width of the teacher (teacher_student)", True),
    "angle": Field(_paper_angle(), _float(lo=0.0, open_lo=True, hi=math.pi),
                   "angle between the two points of paper_pair (radians)", True),
    # net
    "depth": Field(2, _int(1), "number of layers k"),
    "width": Field(8, _int(1), "hidden width: widths = (dim, width * (depth - 1), d_out)"),
    "activation": Field("relu", _choice(_activations), "hidden activation"),
    "negative_slope": Field(0.01, _float(), "slope of leaky_relu for negative inputs"),
    "init": Field("gaussian", _choice(_inits), "initialisation (gfsim.MLP init=)", True),
    "init_scale": Field(None, _float(lo=0.0, optional=True),
                        "the init's scale (none: the init's own default)", True),
    # flow
    "t1": Field(100.0, _float(lo=0.0, open_lo=True), "end time"),
    "num_saves": Field(64, _int(2), "save times: 0 then log-spaced up to t1"),
    "decades": Field(6.0, _float(lo=0.0, open_lo=True), "decades spanned by the save times"),
    "loss": Field("square", _choice(_losses), "training loss"),
    "reduction": Field("mean", _choice(lambda: ("mean", "sum")),
                       "loss reduction (sets the time convention)"),
    "solver": Field("auto", _choice(_solvers),
                    "solver (auto: explicit, implicit where stiff; or a Diffrax solver)"),
    "rtol": Field(1e-8, _float(lo=0.0, open_lo=True), "relative tolerance"),
    "atol": Field(None, _float(lo=0.0, open_lo=True, optional=True),
                  "absolute tolerance (none: rtol * 1e-3)"),
    "stop_loss": Field(None, _float(lo=0.0, optional=True),
                       "stop a run once its loss is below this (none: never)"),
    "stop_plateau": Field(None, _float(lo=0.0, open_lo=True, optional=True),
                          "stop a run once its loss falls by less than this share per decade "
                          "(none: never)"),
    "clock": Field("auto", _choice(lambda: ("auto", "linear", "log")),
                   "the solver's time: t, log(1 + t), or auto (log for exp/logistic losses)"),
    "max_steps": Field(100_000, _int(1), "step budget per run"),
    "method": Field("auto", _choice(lambda: ("auto", "events", "plain")), "simulate(method=)"),
    "max_sliding": Field(0, _int(0), "simulate(max_sliding=); 0: grow as a run needs (None)"),
}


def _check_options_save_weights(v, name):
    if not isinstance(v, bool):
        raise ValueError(f"{name}={v!r} is not allowed; allowed: true or false.")
    return v


OPTIONS: dict[str, tuple[Any, Callable, str]] = {
    "save_weights": (False, _check_options_save_weights,
                     "store every layer's weights at every save time (memory-heavy)"),
    "batch_runs": (256, _int(1), "most runs in one batch"),
    "batch_memory_mb": (1024.0, _float(lo=0.0, open_lo=True),
                        "estimated memory one batch may use (MiB)"),
}

TOP_LEVEL = ("name", "description", "seeds", "grid", "zip", "options")


def unknown_key(key: str, where: str, valid) -> ValueError:
    """The one error for a key that is not allowed here, with the closest valid one."""
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    place = f" in [{where}]" if where else ""
    if close:
        return ValueError(f"unknown key {key!r}{place}; did you mean {close[0]!r}?")
    return ValueError(f"unknown key {key!r}{place}; allowed: {', '.join(valid)}.")


# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Axis:
    """One axis of a sweep: one field (grid, seeds) or several iterated together (zip)."""

    names: tuple[str, ...]
    values: tuple[tuple, ...]  # one tuple of values per point of the axis
    kind: str  # "grid", "zip" or "seeds"

    def __len__(self) -> int:
        return len(self.values)


@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated sweep: fixed values for every field not on an axis, the axes, the options.

    Build one with :func:`parse_spec` (a dict) or :func:`load_spec` (a TOML file)."""

    fixed: dict
    axes: tuple[Axis, ...]
    options: dict
    name: str = ""
    description: str = ""

    @property
    def num_runs(self) -> int:
        return math.prod(len(a) for a in self.axes)

    def runs(self) -> list[dict]:
        """Every run's full config, in canonical run order (the first axis outermost, seeds
        innermost); a run's id is its position."""
        out = []
        for point in itertools.product(*(a.values for a in self.axes)):
            cfg = dict(self.fixed)
            for axis, vals in zip(self.axes, point):
                cfg.update(zip(axis.names, vals))
            out.append({k: cfg[k] for k in FIELDS})
        return out

    def normalised(self) -> dict:
        """A JSON-able form with every default filled in: what the store's hash is of."""
        return {
            "format": FORMAT,
            "fixed": {k: self.fixed[k] for k in sorted(self.fixed)},
            "axes": [{"kind": a.kind, "names": list(a.names), "values": [list(v) for v in a.values]}
                     for a in self.axes],
            "options": {k: self.options[k] for k in sorted(self.options)},
        }

    def digest(self) -> str:
        text = json.dumps(self.normalised(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _seeds_axis(value) -> tuple[int, ...]:
    where = "seeds"
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if value >= 1:
            return tuple(range(value))
    elif isinstance(value, list):
        if not value:
            raise ValueError("seeds=[] is empty; allowed: a non-empty list of integers >= 0.")
        return tuple(FIELDS["seed"].check(v, f"{where}[{i}]") for i, v in enumerate(value))
    elif isinstance(value, dict):
        for k in value:
            if k not in ("start", "stop", "step"):
                raise unknown_key(k, "seeds", ("start", "stop", "step"))
        if "stop" not in value:
            raise ValueError("seeds needs 'stop' (seeds = {start = 0, stop = 8}).")
        start = _int(0)(value.get("start", 0), "seeds.start")
        stop = _int(0)(value["stop"], "seeds.stop")
        step = _int(1)(value.get("step", 1), "seeds.step")
        r = tuple(range(start, stop, step))
        if not r:
            raise ValueError(f"seeds={value!r} is an empty range; allowed: start < stop.")
        return r
    raise ValueError(
        f"seeds={value!r} is not allowed; allowed: a count >= 1, a list of integers, or "
        "{start, stop, step}."
    )


def _axis_values(name: str, values, where: str) -> tuple:
    if not isinstance(values, list):
        raise ValueError(f"{where}.{name}={values!r} is not allowed; allowed: a list of values.")
    if not values:
        raise ValueError(f"{where}.{name} is an empty axis; allowed: a non-empty list.")
    return tuple(FIELDS[name].check(v, f"{where}.{name}[{i}]") for i, v in enumerate(values))


def parse_spec(raw: dict, *, allow_axes: bool = True) -> Spec:
    """Validate a spec given as a dict (the parsed TOML). Raises one ValueError on the first
    problem: unknown keys (with the closest valid key), bad values (with what is allowed), empty
    axes, zipped lists of different lengths, a field both fixed and on an axis.

    **Arguments:**

    - ``raw``: the spec, as ``tomllib`` returns it.
    - ``allow_axes``: False for a single configuration (``gfsim run``): axes are an error.

    **Returns:** a :class:`Spec`.
    """
    if not isinstance(raw, dict):
        raise ValueError("a spec must be a table of fields.")
    fixed: dict = {}
    axes: list[Axis] = []
    placed: dict[str, str] = {}  # field -> where it was given

    def place(name: str, where: str):
        if name in placed:
            raise ValueError(
                f"{name} is given twice ({placed[name]} and {where}); allowed: one place per "
                "field."
            )
        placed[name] = where

    valid_top = list(TOP_LEVEL) + list(FIELDS)
    for key in raw:
        if key not in valid_top:
            raise unknown_key(key, "", valid_top)
    if not allow_axes:
        for key in ("grid", "zip", "seeds"):
            if key in raw:
                raise ValueError(
                    f"{key} is not allowed in a single configuration; allowed: fixed fields only "
                    "(use `gfsim sweep` for axes)."
                )
    name = raw.get("name", "")
    description = raw.get("description", "")
    for k, v in (("name", name), ("description", description)):
        if not isinstance(v, str):
            raise ValueError(f"{k}={v!r} is not allowed; allowed: a string.")

    for key, value in raw.items():
        if key in FIELDS:
            place(key, "fixed")
            fixed[key] = FIELDS[key].check(value, key)

    grid = raw.get("grid", {})
    if not isinstance(grid, dict):
        raise ValueError("grid must be a table ([grid]) of field = [values].")
    for key, values in grid.items():
        if key not in FIELDS:
            raise unknown_key(key, "grid", FIELDS)
        place(key, "[grid]")
        axes.append(Axis((key,), tuple((v,) for v in _axis_values(key, values, "grid")), "grid"))

    groups = raw.get("zip", [])
    if isinstance(groups, dict):
        groups = [groups]
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise ValueError("zip must be a table ([zip]) or tables ([[zip]]) of field = [values].")
    for gi, group in enumerate(groups):
        where = "zip" if len(groups) == 1 else f"zip #{gi + 1}"
        if not group:
            raise ValueError(f"[{where}] is empty; allowed: field = [values] lines.")
        cols = {}
        for key, values in group.items():
            if key not in FIELDS:
                raise unknown_key(key, where, FIELDS)
            place(key, f"[{where}]")
            cols[key] = _axis_values(key, values, where)
        lengths = {k: len(v) for k, v in cols.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise ValueError(f"[{where}] lists have different lengths ({shown}); allowed: "
                             "equal lengths.")
        axes.append(Axis(tuple(cols), tuple(zip(*cols.values())), "zip"))

    if "seeds" in raw:
        place("seed", "seeds")
        axes.append(Axis(("seed",), tuple((s,) for s in _seeds_axis(raw["seeds"])), "seeds"))

    options_raw = raw.get("options", {})
    if not isinstance(options_raw, dict):
        raise ValueError("options must be a table ([options]).")
    options = {}
    for key, (default, check, _) in OPTIONS.items():
        options[key] = check(options_raw[key], f"options.{key}") if key in options_raw else default
    for key in options_raw:
        if key not in OPTIONS:
            raise unknown_key(key, "options", OPTIONS)

    for key, f in FIELDS.items():
        if key not in placed:
            fixed[key] = f.default
    spec = Spec(fixed=fixed, axes=tuple(axes), options=options, name=name,
                description=description)
    for cfg in _distinct_problems(spec):
        check_config(cfg)
    return spec


def _distinct_problems(spec: Spec):
    """One config per distinct combination of the fields :func:`check_config` relates (cheap
    even for a large sweep: those combinations are few)."""
    keys = ("dataset", "dim", "d_out", "activation", "solver", "method", "depth")
    seen = set()
    for cfg in spec.runs():
        k = tuple(cfg[x] for x in keys)
        if k not in seen:
            seen.add(k)
            yield cfg


def check_config(cfg: dict) -> None:
    """Checks that relate fields (each field alone is already valid)."""
    from ._runs import dataset_dims

    dataset_dims(cfg)
    import diffrax

    from ..flow import SOLVERS

    method = cfg["method"]
    if method == "auto":  # simulate's rule: the event-driven solver for kinked activations
        method = "events" if cfg["activation"] in ("relu", "leaky_relu") else "plain"
    from ..stiff import Auto

    solver = SOLVERS.get(cfg["solver"])()
    if isinstance(solver, Auto):  # the event solver takes its explicit solver
        solver = solver.explicit
    if method == "events" and not isinstance(solver, diffrax.AbstractERK):
        raise ValueError(
            f"solver={cfg['solver']!r} cannot be used with method={cfg['method']!r} for "
            f"activation={cfg['activation']!r}; allowed: an explicit Runge-Kutta solver (tsit5, "
            "dopri5, dopri8, bosh3, heun), or method='plain'."
        )


def load_spec(path: str | os.PathLike, *, allow_axes: bool = True) -> Spec:
    """Read and validate a TOML spec file; one ValueError (naming the file) if it is unreadable
    or invalid."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ValueError(f"cannot read {os.fspath(path)!r}: {e.strerror}.") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{os.fspath(path)!r} is not valid TOML: {e}.") from None
    return parse_spec(raw, allow_axes=allow_axes)
