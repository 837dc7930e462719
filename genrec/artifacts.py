"""Versioned artefact folders: a run is written to a staging folder and renamed into the next
free number, so nothing is ever overwritten and a half-written run is never visible."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

DEFAULT_ROOT = Path(os.environ.get("GENREC_ARTIFACTS", "artifacts")) / "runs"
_RUN = re.compile(r"^(?P<name>[a-z0-9_]+)-(?P<n>\d{3,})$")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "lightgbm", "onnx", "onnxruntime", "tritonclient", "nvidia-pytriton", "pymilvus", "bentoml"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict[str, object]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def runs(root: Path = DEFAULT_ROOT, name: str | None = None) -> list[Path]:
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and (m := _RUN.match(p.name)) and (name is None or m["name"] == name)]
    return sorted(found, key=lambda p: (p.name.rsplit("-", 1)[0], int(p.name.rsplit("-", 1)[1])))


def latest_run(root: Path = DEFAULT_ROOT, name: str | None = None) -> Path:
    found = [p for p in runs(root, name) if (p / "manifest.json").exists()]
    if not found:
        raise FileNotFoundError(f"no trained run{' for config ' + name if name else ''} under {root}; run genrec-train first")
    return max(found, key=lambda p: (p / "manifest.json").stat().st_mtime)


class RunFolder:
    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.final: Path | None = None


@contextmanager
def new_run(name: str, root: Path = DEFAULT_ROOT) -> Iterator[RunFolder]:
    """Yield a staging folder; on success it becomes ``root/<name>-<NNN>`` (next free number)."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{name}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    folder = RunFolder(staging)
    try:
        yield folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    n = 1 + max([int(p.name.rsplit("-", 1)[1]) for p in runs(root, name)] or [0])
    while True:
        target = root / f"{name}-{n:03d}"
        try:
            target.mkdir()  # claims the number; fails if a concurrent run took it
            target.rmdir()
            staging.rename(target)
            break
        except FileExistsError:
            n += 1
    folder.final = target


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
