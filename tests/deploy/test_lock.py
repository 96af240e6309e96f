"""requirements.txt is what the image installs (hashes required): it covers every dependency in
pyproject.toml, and the tests run on exactly its versions, so what CI tests is what ships."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def locked() -> dict[str, str]:
    text = (ROOT / "requirements.txt").read_text()
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^\s\\]+) \\$", text, re.MULTILINE)
    hashed = re.findall(r"^[A-Za-z0-9._-]+==\S+ \\\n    --hash=sha256:", text, re.MULTILINE)
    assert len(hashed) == len(pins), "every pin carries its hashes"
    return {canonicalize_name(name): pinned for name, pinned in pins}


def test_the_lock_covers_every_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for dependency in map(Requirement, project["dependencies"]):
        name = canonicalize_name(dependency.name)
        assert name in pins, f"{name} is not locked: make lock"
        assert dependency.specifier.contains(pins[name], prereleases=True), (name, pins[name])


def test_the_tests_run_on_the_locked_versions() -> None:
    differ = {}
    for name, pinned in locked().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != pinned:
            differ[name] = (installed, pinned)
    assert not differ, f"installed vs locked: {differ}; make .venv/.installed-dev"
