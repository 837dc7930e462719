"""Every benchmark is importable as ``bench.<name>`` (run as ``python -m bench.<name>``), so one
benchmark reuses another's code by module, not by a path that only works from inside bench/."""

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__"))
def test_bench_script_imports_as_a_module_and_has_main(name):
    module = importlib.import_module(f"bench.{name}")
    assert callable(getattr(module, "main", None)), f"bench/{name}.py has no main()"
