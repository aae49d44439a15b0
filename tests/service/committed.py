"""The committed model repository as the tests see it: each model by name, at the version
the service serves for that name (the highest), never at a version number written down.

Bundles are re-exported (new versions, half-precision copies, retrained models) while
the tests stay; a test that names "caption-sat" follows whatever the service answers
a request for "caption-sat" with.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from service.bundle import Bundle, discover

COMMITTED = Path(__file__).parents[2] / "model_repository"


@cache
def served_bundles() -> dict[str, Bundle]:
    """Model name -> its served bundle (the highest version) in the committed repository."""
    bundles, errors = discover(COMMITTED)
    assert not errors, f"the committed repository has bad bundles: {errors}"
    served: dict[str, Bundle] = {}
    for bundle in bundles:
        name = bundle.manifest.name
        if name not in served or bundle.manifest.version > served[name].manifest.version:
            served[name] = bundle
    return served


def served_bundle(name: str) -> Bundle:
    """The bundle a request naming `name` is answered by."""
    bundles = served_bundles()
    assert name in bundles, f"{name} is not in {COMMITTED} (models: {sorted(bundles)})"
    return bundles[name]

