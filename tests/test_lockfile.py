"""Installs are reproducible: requirements.lock pins every dependency, and the README's
commands and CI install with it."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parent.parent
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;]+)(?:\s*;\s*(.+))?$", re.MULTILINE)


def _pins() -> dict[str, list[tuple[str, str | None]]]:
    pins: dict[str, list[tuple[str, str | None]]] = {}
    for name, version, marker in PIN.findall((ROOT / "requirements.lock").read_text()):
        pins.setdefault(canonicalize_name(name), []).append((version, marker or None))
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [
        line for extra in project["optional-dependencies"].values() for line in extra]
    return [Requirement(line) for line in lines]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = _pins()
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock"
        for version, _ in pins[name]:
            assert req.specifier.contains(version, prereleases=True), (
                f"requirements.lock pins {req.name}=={version}, outside {req.specifier}")


def test_this_environment_runs_the_locked_versions() -> None:
    pins = _pins()
    for req in _declared():
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        wanted = {v for v, marker in pins[name] if marker is None or Marker(marker).evaluate()}
        assert metadata.version(req.name) in wanted, (
            f"{req.name} {metadata.version(req.name)} is installed, requirements.lock says "
            f"{sorted(wanted)}: install with `pip install -c requirements.lock -e '.[test]'`")


def test_readme_commands_and_ci_install_from_the_lock() -> None:
    readme = (ROOT / "README.md").read_text()
    installs = re.findall(r"pip install [^\n&]*-e '?\.", readme)
    assert len(installs) >= 2 and all("-c requirements.lock" in i for i in installs), installs
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"pip install [^\n]*-c requirements\.lock[^\n]*-e '\.\[test\]'", ci)
