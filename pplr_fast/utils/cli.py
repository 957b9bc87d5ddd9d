"""What the three commands (train, evaluate, visualize) share: help text from a docstring."""
from __future__ import annotations

import re


def plain_help(doc: str) -> str:
    """A module docstring as plain text for ``--help``: reST literals, roles and ``::`` unmarked.

    The docstrings are written for the API documentation (````code````,
    ``:func:`name```); a terminal shows that markup literally.
    """
    text = re.sub(r":[a-z]+:`([^`]*)`", r"\1", doc)
    text = re.sub(r"``(.+?)``", r"\1", text, flags=re.S)
    return re.sub(r"::$", ":", text, flags=re.M)
