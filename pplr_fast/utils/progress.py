"""Progress bars on a terminal only, unless asked for."""
from __future__ import annotations

import sys


def show_progress(requested: bool | None) -> bool:
    """``requested`` when given; otherwise bars only when stderr is a terminal.

    Bars redraw with carriage returns, which fill a redirected log with long lines.
    """
    if requested is not None:
        return requested
    return bool(getattr(sys.stderr, "isatty", lambda: False)())
