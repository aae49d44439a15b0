"""Writing a bundle directory: its version, a staging directory, manifest pieces.

Every exporter writes into `staged_bundle`, so a failed export (a parity check,
say) leaves nothing half-written for the service to find, and describes its
files with `file_entry` and its image input with `image_preprocessing`.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from service.bundle import NAME_PATTERN, file_sha256


def next_version(repository: Path, name: str) -> int:
    existing = [int(p.name) for p in (Path(repository) / name).glob("*") if p.name.isdigit()]
    return max(existing, default=0) + 1


@contextmanager
def staged_bundle(repository: Path, name: str,
                  version: int | None = None) -> Iterator[tuple[Path, int]]:
    """Yield (staging directory, version) for bundle repository/name/version.

    The version defaults to the next free one. Everything is written into a hidden
    staging directory that becomes the bundle only when the block ends without an
    error, so an export that fails (a parity check, say) leaves no half-written
    bundle for the service to find.
    """
    if not re.match(NAME_PATTERN, name):
        raise ValueError(f"model name {name!r} must be lowercase letters, digits and '-'")
    repository = Path(repository)
    version = version or next_version(repository, name)
    bundle = repository / name / str(version)
    if bundle.exists():
        raise FileExistsError(f"{bundle} exists; choose another --version")
    tmp = bundle.with_name(f".{version}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp, version
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(bundle)


def file_entry(directory: Path, filename: str) -> dict[str, str]:
    """A manifest `files` entry: the file's name and sha256."""
    return {"file": filename, "sha256": file_sha256(Path(directory) / filename)}


def image_preprocessing(image_size: int, mean: Sequence[float], std: Sequence[float], *,
                        tokenizer: dict | None = None) -> dict:
    """The manifest's `preprocessing` of a bundle whose graphs take `image` in [0, 1]."""
    return {"image_size": image_size, "resize": "bilinear", "pixel_range": [0.0, 1.0],
            "layout": "NCHW", "mean": list(mean), "std": list(std), "tokenizer": tokenizer}


def created_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
