"""Writing a bundle directory: its version, a staging directory, manifest pieces.

Every exporter writes into `staged_bundle`, so a failed export (a parity check,
say) leaves nothing half-written for the service to find, and describes its
files with `file_entry` and its image input with `image_preprocessing`. Once a
bundle is in place, files it holds byte for byte with other bundles of the
repository (a frozen network two models carry) are stored once (`share_identical_files`).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import onnx

from service.bundle import NAME_PATTERN, SHARED_DIR, bundle_dirs, file_sha256

# Smaller files are not worth a link (vocabularies, manifests).
SHARE_MIN_BYTES = 64 * 1024


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
    share_identical_files(repository)


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


def external_data_users(bundle: Path) -> set[str]:
    """Names of the files of `bundle` that are ONNX external data, and of the graphs that
    keep weights in them."""
    names: set[str] = set()
    for graph_file in bundle.glob("*.onnx"):
        graph = onnx.load(str(graph_file), load_external_data=False).graph
        locations = {entry.value for tensor in graph.initializer
                     if tensor.data_location == onnx.TensorProto.EXTERNAL
                     for entry in tensor.external_data if entry.key == "location"}
        if locations:
            names |= locations | {graph_file.name}
    return names


def share_identical_files(repository: Path, min_bytes: int = SHARE_MIN_BYTES) -> int:
    """Store every file that two or more bundles of `repository` hold byte for byte once,
    as REPOSITORY/.shared/SHA256.EXT, and make each bundle's copy a relative link to it.

    The manifests stay as they are (a file's name and sha256 do not change), and the
    service follows the links. ONNX external data, and the graphs that read it, stay in
    their bundle: ONNX Runtime refuses external data that resolves outside the graph's
    directory, and a linked graph would look for its data beside the shared copy.
    Returns the bytes saved.
    """
    repository = Path(repository)
    groups: dict[tuple[int, str, str], list[Path]] = {}
    for bundle in bundle_dirs(repository):
        kept = external_data_users(bundle)
        for path in sorted(bundle.iterdir()):
            if (path.is_symlink() or not path.is_file() or path.stat().st_size < min_bytes
                    or path.name in kept):
                continue
            key = (path.stat().st_size, file_sha256(path), path.suffix)
            groups.setdefault(key, []).append(path)
    shared = repository / SHARED_DIR
    saved = 0
    for (size, sha256, suffix), paths in groups.items():
        store = shared / f"{sha256}{suffix}"
        if not store.exists():
            if len(paths) < 2:
                continue
            shared.mkdir(exist_ok=True)
            shutil.copyfile(paths[0], store)
            saved -= size
        for path in paths:
            path.unlink()
            path.symlink_to(Path("..", "..", SHARED_DIR, store.name))
            saved += size
    linked = {path.resolve() for bundle in bundle_dirs(repository) for path in bundle.iterdir()
              if path.is_symlink()}
    if shared.is_dir():
        for store in shared.iterdir():
            if store.resolve() not in linked:  # its bundles are gone
                store.unlink()
        if not any(shared.iterdir()):
            shared.rmdir()
    return saved
