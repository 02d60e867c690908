"""Command lines built from a dataclass of arguments (CleanRL's pattern, without a dependency).

Every field becomes ``--field-name``; bad values end the program with exit code 2 and one line that
names the argument, the value and what is allowed, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import typing
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; use true or false")


def parse_args(
    cls: type[T], argv: Sequence[str] | None = None, description: str | None = None
) -> T:
    """Parse ``argv`` into ``cls``; a field's help text comes from ``metadata['help']``."""
    parser = argparse.ArgumentParser(
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
        kwargs: dict = {"default": default, "help": f.metadata.get("help", " ")}
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
        parser.error(str(e))  # exit code 2, one line
        raise  # unreachable: parser.error exits


def run_name(env_id: str, experiment: str, seed: int) -> str:
    """CleanRL's run name: ``env__experiment__seed__unixtime``."""
    return f"{env_id}__{experiment}__{seed}__{int(time.time())}"


def fail(message: str) -> typing.NoReturn:
    """End a script with a one-line error and exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
