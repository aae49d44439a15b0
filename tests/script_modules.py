"""Scripts of the repository (benchmarks/, scripts/: not packages) imported as modules,
for their tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).parents[1]


def load_module(name: str, path: Path) -> ModuleType:
    """The file at `path` imported as module `name` (registered before it runs: dataclasses
    look their module up while the file executes)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_script(name: str) -> ModuleType:
    """scripts/NAME.py."""
    return load_module(name, ROOT / "scripts" / f"{name}.py")
