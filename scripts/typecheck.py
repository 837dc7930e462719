"""Run mypy on the installed package layout.

pyproject.toml installs ``ensemble/`` as ``genrec.ensemble`` (and client/, runtime/, feed/,
exporters/ likewise), through setuptools' import hook, which mypy cannot follow. This builds
that layout as a tree of symlinks, ``build/typecheck/genrec`` (the ``files`` of ``[tool.mypy]``),
runs mypy on it and prints the errors with the repository's own paths.

    .venv/bin/python scripts/typecheck.py [mypy options]
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from mypy import api
from setuptools.config.pyprojecttoml import read_configuration

REPO = Path(__file__).resolve().parents[1]
TREE = REPO / "build" / "typecheck"


def package_folders() -> dict[str, Path]:
    """Each package pyproject maps to a folder of its own (package-dir), with that folder."""
    setuptools = read_configuration(REPO / "pyproject.toml")["tool"]["setuptools"]
    return {package: REPO / folder for package, folder in setuptools.get("package-dir", {}).items()}


def build_tree() -> None:
    """``build/typecheck/<package path>`` for each mapped package; a top-level package is a real
    folder of links to its entries so that the subpackages mapped elsewhere can sit beside them."""
    if TREE.exists():
        shutil.rmtree(TREE)
    folders = package_folders()
    for package, folder in sorted(folders.items(), key=lambda kv: kv[0].count(".")):
        place = TREE.joinpath(*package.split("."))
        if "." not in package:
            place.mkdir(parents=True)
            for entry in folder.iterdir():
                if entry.name != "__pycache__" and entry.name not in {p.split(".", 1)[1] for p in folders if p.startswith(package + ".")}:
                    (place / entry.name).symlink_to(entry)
        else:
            assert place.parent.is_dir() and not place.parent.is_symlink(), f"{package}: its parent package is not mapped"
            assert not place.exists(), f"{package}: {folder} and {place} collide"
            place.symlink_to(folder, target_is_directory=True)


def repo_paths(text: str) -> str:
    """build/typecheck/... -> the file it links to, relative to the repository."""

    def real(match: re.Match[str]) -> str:
        path = (REPO / match.group(1)).resolve()
        return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)

    return re.sub(r"(build/typecheck/[^\s:]+\.pyi?)", real, text)


def main(argv: list[str]) -> int:
    build_tree()
    out, err, status = api.run(argv)
    sys.stdout.write(repo_paths(out))
    sys.stderr.write(err)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
