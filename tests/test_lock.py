"""The lock (requirements-lock.txt, what scripts/setup.sh and CI install) agrees with setup.cfg's ranges, which the
wheel keeps: every package the set-up asks for is locked, once, at a version its range allows."""

import configparser
import re

from helpers import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


# The extras scripts/setup.sh installs; torch is pinned by setup.sh itself, not by the lock.
SETUP_EXTRAS = re.search(r'-e "\.\[([\w,]+)\]"', (REPO / "scripts" / "setup.sh").read_text()).group(1).split(",")


def locked() -> dict[str, list[Version]]:
    versions = {}
    for line in (REPO / "requirements-lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and " " not in line, f"not an exact pin: {line!r}"
            versions.setdefault(canonicalize_name(name), []).append(Version(version))
    return versions


def setup_requirements() -> list[Requirement]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    for extra in SETUP_EXTRAS:
        lines += config["options.extras_require"][extra].splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def test_every_package_setup_installs_is_locked_once_within_its_range():
    versions = locked()
    assert {name for name, found in versions.items() if len(found) > 1} == set()
    assert "torch" not in versions  # setup.sh pins the build that fits the machine
    requirements = [requirement for requirement in setup_requirements() if requirement.name != "torch"]
    assert len(requirements) > 10 and "shard" in SETUP_EXTRAS
    outside = {
        requirement.name: str(versions.get(canonicalize_name(requirement.name)))
        for requirement in requirements
        if canonicalize_name(requirement.name) not in versions
        or not requirement.specifier.contains(versions[canonicalize_name(requirement.name)][0], prereleases=True)
    }
    assert outside == {}, "lock and setup.cfg disagree: run scripts/refresh_lock.sh"
