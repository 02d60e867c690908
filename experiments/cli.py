"""Command lines built from a dataclass of arguments (CleanRL's pattern, without a dependency).

Every field becomes ``--field-name``; bad values end the program with exit code 2 and one line that
names the argument, the value and what is allowed, never a traceback. :func:`one_line_errors` gives
a script's ``main`` the same ending for what fails later (a bad file, a full disk).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import numbers
import sys
import time
import typing
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from distree_env.io import error_line, read_text_capped

T = TypeVar("T")
P = ParamSpec("P")
#: Largest seed a script takes (numpy's legacy seeding and SB3 need 32 bits) and the most requests
#: one evaluation may ask for (a cap keeps a typo like 10**13 from running for ever).
MAX_SEED = 2**32 - 1
MAX_REQUESTS = 10**7
#: Most worker processes a script starts at once (``--jobs``), and most torch threads.
MAX_JOBS = 64
MAX_THREADS = 256
#: Failures a script reports in one line (bad input, a file problem, a size past the machine's):
#: anything else is a bug and keeps its traceback.
EXPECTED_FAILURES = (ValueError, OSError, MemoryError, RecursionError, OverflowError)


#: The words a boolean option takes (``--progress false``), true ones first.
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; use true or false")


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``prog: error: ...; see --help``), exit 2,
    instead of the full usage block followed by the error."""

    def error(self, message: str) -> typing.NoReturn:
        """Print ``message`` on one line (white space folded) and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def parse_args(
    cls: type[T], argv: Sequence[str] | None = None, description: str | None = None
) -> T:
    """Parse ``argv`` into ``cls``; a field's help text comes from ``metadata['help']``.

    :param cls: a dataclass whose fields are the options.
    :param argv: the arguments (default ``sys.argv[1:]``).
    :param description: the ``--help`` text (default the dataclass's docstring).
    """
    parser = OneLineParser(
        description=description or cls.__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        # argparse shows no "(default: ...)" after an empty help: every option gets a line
        kwargs: dict = {
            "default": default,
            "help": f.metadata.get("help") or "(default: %(default)s)",
        }
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if hint is bool:
            kwargs.update(type=_parse_bool, nargs="?", const=True, metavar="BOOL")
        elif origin in (tuple, list):
            kwargs.update(type=args[0], nargs="+")
        elif origin is typing.Union or type(None) in args:
            kwargs["type"] = next(a for a in args if a is not type(None))
        else:
            kwargs["type"] = hint
        parser.add_argument(flag, **kwargs)
    ns = parser.parse_args(argv)
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(ns).items()}
    try:
        return cls(**values)
    except ValueError as e:
        parser.error(error_line(e))  # exit code 2, one line
        raise  # unreachable: parser.error exits


def require_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """Refuse ``value`` of the option ``name`` (a field name) unless it is an integer in
    ``[low, high]`` (``>= low`` without ``high``), in the one message style of every script."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)  # numpy's integers too
        or value < low
        or (high is not None and value > high)
    ):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"--{name.replace('_', '-')}={value!r} is not allowed: {allowed}")


def records_positional(argv: list[str]) -> list[str]:
    """``script A.json B.json --name x`` -> ``--records A.json B.json --name x``: the leading
    positional arguments of a script whose ``Args`` has a ``records`` tuple."""
    head = []
    while argv and not argv[0].startswith("-"):
        head.append(argv.pop(0))
    return (["--records", *head] if head else []) + argv


def run_name(env_id: str, experiment: str, seed: int) -> str:
    """CleanRL's run name: ``env__experiment__seed__unixtime``."""
    return f"{env_id}__{experiment}__{seed}__{int(time.time())}"


def fail(message: str) -> typing.NoReturn:
    """End a script with a one-line error and exit code 2.

    :param message: what went wrong (newlines are joined, so it stays one line).
    """
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(2)


#: What Ctrl-C prints (exit code 130, as a shell reports a SIGINT).
INTERRUPTED = (
    "interrupted (Ctrl-C); every file written so far is complete (atomic writes); a run with "
    "checkpoints continues with --resume"
)


def one_line_errors(main: Callable[P, T]) -> Callable[P, T]:
    """Wrap a script's ``main``: an expected failure ends it with exit code 2 and one line,
    Ctrl-C with exit code 130 and one line."""

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except EXPECTED_FAILURES as exc:
            fail(error_line(exc))
        except KeyboardInterrupt:
            print(f"error: {INTERRUPTED}", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper


def read_config_overrides(path: str, flag: str = "--config") -> dict[str, Any]:
    """The config fields (nested or dotted) in a JSON or YAML file (``.yml``/``.yaml``), read
    as data only and at most ``MAX_FILE_BYTES``; a ValueError naming ``flag`` and the file
    otherwise (a FIFO or folder included: it is never opened)."""
    from agents.hyperparams import MAX_FILE_BYTES, safe_yaml  # noqa: PLC0415 (PyYAML)

    text = read_text_capped(path, flag, MAX_FILE_BYTES)
    if path.endswith((".yml", ".yaml")):
        data = safe_yaml(text, f"{flag} {path!r}")
    else:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            detail = " ".join(str(exc).split())[:200]
            raise ValueError(f"{flag} {path!r}: cannot parse ({detail})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{flag} {path!r}: expected a mapping of EnvConfig fields")
    return data
