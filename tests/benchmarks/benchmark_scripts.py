"""The benchmark scripts as modules, for their smoke tests: benchmarks/ is not a package,
and each script imports its siblings by name."""

from __future__ import annotations

from types import ModuleType

from script_modules import ROOT, load_module

__all__ = ["ROOT", "load_benchmark", "load_module"]


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py."""
    return load_module(name, ROOT / "benchmarks" / f"{name}.py")
