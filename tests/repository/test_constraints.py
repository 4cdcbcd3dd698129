"""constraints.txt, the exact versions installs use, pins every dependency pyproject.toml names,
each within the range pyproject.toml allows."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.services import PROJECT


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (PROJECT / "constraints.txt").read_text().splitlines():
        pin = line.split("#", 1)[0].strip()
        if pin:
            name, _, version = pin.partition("==")
            assert version, f"not an exact pin: {pin!r}"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_every_dependency_is_pinned_within_its_range() -> None:
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    pins = _pins()
    for text in declared:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name]), (text, str(pins[name]))
        for extra in requirement.extras:  # psycopg[binary,pool]: psycopg-binary, psycopg-pool
            extra_name = canonicalize_name(f"{requirement.name}-{extra}")
            assert extra_name in pins, f"{extra_name} is not pinned in constraints.txt"
