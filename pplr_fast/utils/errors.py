"""Errors as one line a user can act on."""
from __future__ import annotations

_WORKER_MARKERS = ("Original Traceback", "Caught ")


def one_line(err: BaseException) -> str:
    """The message of ``err`` without tracebacks, on one line.

    An exception raised in a DataLoader worker is re-raised in the main process
    with the worker's whole traceback in its message; its last line is the
    original message, which is what the user needs.
    """
    text = str(err)
    if any(marker in text for marker in _WORKER_MARKERS):
        lines = [line for line in text.splitlines() if line.strip()]
        last = lines[-1] if lines else text
        # "pkg.module.ErrorType: message" -> "message"
        head, sep, rest = last.partition(": ")
        text = rest if sep and "." in head and " " not in head else last
    return " ".join(text.split())
