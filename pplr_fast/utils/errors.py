"""Errors as one line a user can act on."""
from __future__ import annotations

_WORKER_MARKERS = ("Original Traceback", "Caught ")


def one_line(err: BaseException | str, limit: int | None = None, *,
             with_type: bool = False) -> str:
    """The message of ``err`` (an exception or a text) without tracebacks, on one line.

    An exception raised in a DataLoader worker is re-raised in the main process
    with the worker's whole traceback in its message; its last line is the
    original message, which is what the user needs (a text is only joined onto one line:
    it is taken as it is). ``with_type``: an exception's
    message is led by its type name (``ValueError: ...``); ``limit``: a longer line is
    cut to that many characters and ends with `` ...``.
    """
    text = _message(err) if isinstance(err, BaseException) else " ".join(err.split())
    if with_type and isinstance(err, BaseException):
        text = f"{type(err).__name__}: {text}"
    return text if limit is None or len(text) <= limit else text[:limit] + " ..."


def _message(err: BaseException) -> str:
    text = str(err)
    if any(marker in text for marker in _WORKER_MARKERS):
        lines = [line for line in text.splitlines() if line.strip()]
        last = lines[-1] if lines else text
        # "pkg.module.ErrorType: message" -> "message"
        head, sep, rest = last.partition(": ")
        text = rest if sep and "." in head and " " not in head else last
    return " ".join(text.split())
