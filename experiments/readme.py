"""Generated blocks in README.md: figures are written by the scripts that measure them, never typed.

A block is the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->``; scripts replace it.
"""

from __future__ import annotations

import re
from pathlib import Path

from distree_env.io import atomic_write_text

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- BEGIN {re.escape(name)} -->\n).*?(<!-- END {re.escape(name)} -->)", re.S
    )


def check_block(name: str, readme: Path = README) -> str:
    """``readme``'s text; ValueError if it cannot be read or has no block ``name`` (a script
    checks this before its work, not after)."""
    try:
        text = Path(readme).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{readme}: cannot be read ({e})") from None
    if not _block(name).search(text):
        raise ValueError(f"{readme} has no block '<!-- BEGIN {name} -->' ... '<!-- END {name} -->'")
    return text


def update_block(name: str, content: str, readme: Path = README) -> None:
    """Replace the block ``name`` in ``readme``; a missing block is an error."""
    text = check_block(name, readme)
    new = _block(name).sub(lambda m: m.group(1) + content.rstrip("\n") + "\n" + m.group(2), text)
    atomic_write_text(readme, new)
