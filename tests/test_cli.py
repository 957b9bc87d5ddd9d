"""The commands as a user first meets them: the console scripts and ``--help``."""
import importlib
import re
import sys
from pathlib import Path

import pytest

from pplr_fast import evaluate, train, visualize

ROOT = Path(__file__).resolve().parents[1]


def console_scripts() -> dict[str, tuple[str, str]]:
    """``{script: (module, function)}`` as setup.py's entry points declare them."""
    text = (ROOT / "setup.py").read_text()
    return {name: (module, function)
            for name, module, function in re.findall(r'"([\w-]+)=([\w.]+):(\w+)"', text)}


def test_console_scripts_exit_0_after_success(monkeypatch, capsys):
    """pip's script runs ``sys.exit(function())``: a returned dict would be printed to stderr
    and exit 1, so each entry point returns None once its main() has returned its result."""
    scripts = console_scripts()
    assert set(scripts) == {"pplr-train", "pplr-evaluate", "pplr-visualize"}
    for name, (module_name, function) in scripts.items():
        module = importlib.import_module(module_name)
        monkeypatch.setattr(module, "main", lambda argv=None: {"mAP": 0.5})    # a finished run
        with pytest.raises(SystemExit) as exit_:
            sys.exit(getattr(module, function)())
        assert exit_.value.code in (None, 0), name
    assert capsys.readouterr().err == ""


def test_console_scripts_pass_errors_through(monkeypatch):
    for module in (train, evaluate, visualize):
        def fails(argv=None):
            raise SystemExit("error: something the user can fix")
        monkeypatch.setattr(module, "main", fails)
        with pytest.raises(SystemExit, match="error: something the user can fix"):
            module.cli()


@pytest.mark.parametrize("parser", [train.build_parser, evaluate.build_parser, visualize.build_parser],
                         ids=["train", "evaluate", "visualize"])
def test_help_is_plain_text(parser):
    text = parser().format_help()
    assert "python -m pplr_fast." in text
    assert "``" not in text and ":func:" not in text and "::" not in text


def test_plain_help_unmarks_literals_roles_and_literal_blocks():
    from pplr_fast.utils.cli import plain_help
    assert plain_help("Run ``python -m x --flag``; see :func:`f` and\n``a\nb``. Example::\n") \
        == "Run python -m x --flag; see f and\na\nb. Example:\n"


def test_one_line_of_an_error_or_a_text():
    from pplr_fast.utils.errors import one_line
    worker = RuntimeError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback "
                          "(most recent call last):\n  File x\npplr_fast.data.ImageReadError: bad  image\n")
    assert one_line(worker) == "bad image"                         # the user's message only
    assert one_line(worker, with_type=True) == "RuntimeError: bad image"
    assert one_line(ValueError("a\n  b")) == "a b"
    text = "Caught nothing\n" + "x " * 400                         # a text is taken as it is
    assert one_line(text, limit=20) == "Caught nothing x x x ..."
    assert one_line(text).startswith("Caught nothing x") and len(one_line(text)) > 700
