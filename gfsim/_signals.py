"""Stop a long job at its next boundary on SIGINT or SIGTERM (``gfsim sweep`` at a batch,
``gfsim reproduce`` at an experiment), so that what is on disk is whole and a resume completes
the rest."""

from __future__ import annotations

import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_signals(stop: dict, command: str, unit: str) -> dict:
    """Install handlers for SIGINT and SIGTERM: the first one records its number in
    ``stop["signal"]`` and says on stderr that ``command`` stops after the current ``unit``
    (the job checks the flag at its boundaries); a second one raises KeyboardInterrupt at once.
    Only in the main thread (Python delivers signals there; elsewhere nothing is installed).
    Returns the old handlers, for :func:`restore`."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_signal(signum, frame):
        if stop.get("signal") is not None:
            raise KeyboardInterrupt
        stop["signal"] = signum
        print(f"{command}: {signal.Signals(signum).name}: stopping after the current {unit} "
              "(again to stop now)", file=sys.stderr, flush=True)

    return {sig: signal.signal(sig, on_signal) for sig in SIGNALS}


def restore(handlers: dict) -> None:
    """Put back the handlers :func:`stop_on_signals` replaced."""
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
