"""The command lines' shared parser: every option of every script's ``Args`` says its default in
``--help`` (argparse drops it after an empty help text); integer options are refused in one
message style."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import numpy as np
import pytest

from experiments.cli import parse_args, require_int

SCRIPTS = sorted(
    p.stem
    for p in (Path(__file__).resolve().parents[2] / "experiments").glob("*.py")
    if "class Args" in p.read_text()
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_option_shows_its_default(script, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    args_class = importlib.import_module(f"experiments.{script}").Args
    with pytest.raises(SystemExit) as exc:
        parse_args(args_class, ["--help"])
    assert exc.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for f in dataclasses.fields(args_class):
        flag = "--" + f.name.replace("_", "-")
        start = next(i for i, x in enumerate(lines) if x.split() and x.split()[0] == flag)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("-")),
            len(lines),
        )
        entry = " ".join(lines[start:end])
        assert "(default: " in entry, (script, entry)


def test_ctrl_c_ends_a_script_in_one_line_with_exit_code_130(capsys):
    from experiments.cli import INTERRUPTED, one_line_errors

    @one_line_errors
    def main() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 130
    assert capsys.readouterr().err == f"error: {INTERRUPTED}\n"


def test_integer_options_are_refused_in_one_style():
    require_int("eval_seeds", 1, 1, 5)
    require_int("eval_seeds", 5, 1, 5)
    require_int("warmup", 10**12, 0)
    require_int("eval_seeds", np.int64(3), 1, 5)  # numpy's integers are integers
    for value in (0, 6, True, 2.0):
        with pytest.raises(ValueError) as exc:
            require_int("eval_seeds", value, 1, 5)
        assert str(exc.value) == f"--eval-seeds={value!r} is not allowed: an integer in [1, 5]"
    with pytest.raises(ValueError, match=r"^--warmup=-1 is not allowed: an integer >= 0$"):
        require_int("warmup", -1, 0)
