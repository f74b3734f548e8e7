"""The image's packaging: constraints.txt pins what pyproject.toml asks for, the Dockerfile
installs with it, and a built wheel carries the package data the code reads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"line {number} is no pin: {line}"
        pins[canonicalize_name(requirement.name)] = Version(specs[0].version)
    return pins


def _runtime() -> list[Requirement]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [Requirement(r) for r in pyproject["project"]["dependencies"]]


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    environment = default_environment()
    return any(
        requirement.marker.evaluate({**environment, "extra": extra}) for extra in extras or {""}
    )


def test_constraints_pin_every_runtime_dependency_within_its_range() -> None:
    pins = _pins()
    assert "imagegen" not in pins  # the project itself is what is being installed
    for requirement in _runtime():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {requirement}"
        )


def test_constraints_pin_what_those_dependencies_need_too() -> None:
    """The whole tree, as installed here (so the image cannot pick a newer transitive one)."""
    pins, todo, seen = _pins(), [(r, set(r.extras)) for r in _runtime()], set()
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        if (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        assert name in pins, f"constraints.txt does not pin {name} (needed for {requirement})"
        for needed in metadata.distribution(name).requires or []:
            child = Requirement(needed)
            if _applies(child, extras):
                todo.append((child, set(child.extras)))


def _dockerfile_runs() -> str:
    text = re.sub(r"\\\n", " ", re.sub(r"(?m)^\s*#.*\n", "", (ROOT / "Dockerfile").read_text()))
    return " ".join(line for line in text.splitlines() if line.strip().upper().startswith("RUN"))


def test_the_dockerfile_installs_with_the_constraints() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"(?m)^COPY .*\bconstraints\.txt\b", text), "constraints.txt not copied"
    assert re.search(
        r"pip install .*(-c|--constraint)[ =]constraints\.txt .*\.", _dockerfile_runs()
    )
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "constraints.txt" not in {line.strip() for line in ignored}


@pytest.mark.slow
def test_a_built_wheel_carries_the_package_data(tmp_path: Path) -> None:
    """What an installed (not editable) copy reads: the rules file, the migrations. Built
    from what the Dockerfile copies, without this checkout's egg-info (which lists files)."""
    src, out = tmp_path / "src", tmp_path / "wheel"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy(ROOT / name, src / name)
    for package in ("worker", "models", "migrations", "imagegen"):  # imagegen/: symlinks
        shutil.copytree(
            ROOT / package,
            src / package,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("imagegen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = {
        "imagegen/__init__.py",
        "imagegen/worker/moderation/default_rules.toml",
        "imagegen/worker/cost/prices.toml",
        "imagegen/migrations/script.py.mako",
        "imagegen/worker/web/ui/templates/jobs.html",  # the dashboard's pages and CSS
        "imagegen/worker/web/ui/static/ui.css",
    }
    assert needed <= names, f"missing from the wheel: {needed - names}"
    assert any(n.startswith("imagegen/migrations/versions/") and n.endswith(".py") for n in names)
    tops = {n.split("/", 1)[0] for n in names if not n.startswith("imagegen-")}
    assert tops == {"imagegen"}, f"one import namespace, nothing else at the top: {tops}"
    _installed_beside_an_apps_own_models(wheel, tmp_path)


def _installed_beside_an_apps_own_models(wheel: Path, tmp_path: Path) -> None:
    """The installed wheel, in a web app that has its own ``models.py``."""
    target, app = tmp_path / "site", tmp_path / "app"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "-t", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    app.mkdir()
    (app / "models.py").write_text("class Job: ...\n")
    code = (
        "import models, imagegen; from imagegen import enqueue, JobRequestError; "
        "from imagegen.models import Job; print(imagegen.__file__, models.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=app, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    ours, theirs = done.stdout.split()
    assert ours.startswith(str(target)) and theirs == str(app / "models.py"), done.stdout
