"""The tracked tree stays within its budget: GPU machines receive it with every call
(64 MiB in all, the run's own files included), so it is kept to 40 MB."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUDGET_BYTES = 40_000_000


def tracked_bytes() -> dict[str, int]:
    """Size of every tracked file as it is in the working tree (a link counts as a link)."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    names = [n for n in out.stdout.decode().split("\0") if n]
    return {n: os.lstat(ROOT / n).st_size for n in names if os.path.lexists(ROOT / n)}


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout: nothing tracked")
def test_tracked_tree_is_within_the_budget():
    sizes = tracked_bytes()
    total = sum(sizes.values())
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:8]
    assert total <= BUDGET_BYTES, (f"tracked tree is {total / 1e6:.1f} MB, over the "
                                   f"{BUDGET_BYTES / 1e6:.0f} MB budget; largest: {largest}")
