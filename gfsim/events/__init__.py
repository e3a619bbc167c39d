"""Exact gradient flow of nets with a kinked activation (ReLU, leaky ReLU) through kinks and
sliding modes: the event-driven solver behind ``simulate(..., method="events")``.

Inside an activation pattern the field is smooth; the solver integrates it with the pattern
frozen and handles pattern changes as events. One module per part:

- :mod:`._model`: the frozen-pattern forward pass and its derivatives;
- :mod:`._sliding`: the sliding (projected) field, its multipliers, the projection back onto the
  held kinks;
- :mod:`._functions`: the event functions and their offsets;
- :mod:`._locate`: the first root on a step's dense output (Illinois, with relocation);
- :mod:`._decide`: cross, slide or release at an event;
- :mod:`._step`: one trial step (explicit RK stages unrolled) and its error ratio;
- :mod:`._control`: the step-size controller;
- :mod:`._saves`: the save times, from the dense output;
- :mod:`._refill`: lanes that take the next run when theirs is done;
- :mod:`._state`: the typed loop state;
- :mod:`._solve`: the driver.

docs/nonsmooth.md has the mathematics, docs/architecture.md the data flow.
"""

from ._solve import solve_events as solve_events
