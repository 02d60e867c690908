"""constraints.txt is one consistent set: every pinned package's own requirements accept the pins.

Why: ``pip install -c constraints.txt rl_zoo3`` once failed with ResolutionImpossible because
``python-dateutil==4.0.0`` was pinned while rl-zoo3 (through typepy) needs ``<3``. This checks
the pins against the requirements of the installed distributions, without the network.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def _pins() -> dict[str, Version]:
    pins = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"constraints.txt: {line!r} is not NAME==VERSION"
        pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def _requirements(names) -> dict[str, list[Requirement]]:
    """Requirements of each installed distribution in ``names``, with the extras that others
    ask of it (``typepy[datetime]`` brings typepy's ``datetime`` requirements in)."""
    dists = {}
    for name in names:
        try:
            dists[name] = [Requirement(t) for t in metadata.distribution(name).requires or ()]
        except metadata.PackageNotFoundError:
            continue  # not installed here: nothing to read its requirements from
    extras = {name: {""} for name in dists}
    active: dict[str, list[Requirement]] = {}
    changed = True
    while changed:
        changed = False
        for name, reqs in dists.items():
            active[name] = [
                r for r in reqs
                if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras[name])
            ]  # fmt: skip
            for r in active[name]:
                wanted = extras.get(canonicalize_name(r.name))
                if wanted is not None and not set(r.extras) <= wanted:
                    wanted |= set(r.extras)
                    changed = True
    return active


def test_pins_satisfy_each_others_requirements():
    pins = _pins()
    active = _requirements(pins)
    conflicts = [
        f"{name} requires {req}, constraints.txt pins {pins[canonicalize_name(req.name)]}"
        for name, reqs in active.items()
        for req in reqs
        if canonicalize_name(req.name) in pins
        and not req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True)
    ]
    assert len(active) >= 10, f"only {len(active)} pinned distributions are installed"
    assert not conflicts, "\n".join(conflicts)


@pytest.mark.parametrize("package", ["rl_zoo3", "torchrl", "tensordict", "skrl", "moviepy"])
def test_test_extra_libraries_are_pinned(package):
    """The libraries of the compatibility tests are pinned, so CI installs the tested versions."""
    assert canonicalize_name(package) in _pins()
