"""Bottom-up region features on disk: glimpse's own files and the published formats.

A model that attends over regions (Up-Down captioning, VQA, region-word
alignment) reads, per image, up to R boxes with a feature vector each. Three
sources give them:

- glimpse's split files, DIR/features/regions/{split}.npz, written by
  `glimpse features regions` (keys image_ids, boxes, scores, features,
  num_regions as in `RegionFeatures`); the last real row of every image is the
  whole image;
- the TSV of Anderson et al.'s bottom-up-attention release (tab-separated
  image_id, image_w, image_h, num_boxes, boxes, features; boxes and features
  are base64 float32 buffers, boxes in pixels);
- a directory of per-image .npz files as the bottom-up-attention repositories'
  extraction tools write them (`x` or `features` (num_boxes, D), `bbox` or
  `boxes` in pixels, `image_w`, `image_h`, optional `num_bbox`); the image id is
  the file stem (its trailing digits for names like COCO_val2014_000000000042).

Everything is returned as `RegionFeatures`: boxes normalised [x0, y0, x1, y1] in
[0, 1], images with fewer regions zero-padded, `num_regions` saying how many are
real. The published formats carry no detection scores: their regions get score
1. A malformed file raises DatasetFormatError naming the file and the entry.
"""

from __future__ import annotations

import base64
import binascii
import csv
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data.readers import DatasetFormatError

TSV_FIELDS: tuple[str, ...] = ("image_id", "image_w", "image_h", "num_boxes", "boxes",
                               "features")
NPZ_KEYS: tuple[str, ...] = ("image_ids", "boxes", "scores", "features", "num_regions")


@dataclass
class RegionFeatures:
    """Regions of N images, padded to R per image (F-dimensional features)."""

    image_ids: np.ndarray  # int64 (N,)
    boxes: np.ndarray  # float32 (N, R, 4), normalised [x0, y0, x1, y1]
    scores: np.ndarray  # float32 (N, R)
    features: np.ndarray  # float32 (N, R, F)
    num_regions: np.ndarray  # int64 (N,): rows of each image that are real regions
    _index: dict[int, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.image_ids = np.asarray(self.image_ids, dtype=np.int64)
        self.boxes = np.asarray(self.boxes, dtype=np.float32)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        self.features = np.asarray(self.features, dtype=np.float32)
        self.num_regions = np.asarray(self.num_regions, dtype=np.int64)
        n = len(self.image_ids)
        if self.features.ndim != 3 or self.features.shape[0] != n:
            raise ValueError(f"features must be (N={n}, R, F), got {self.features.shape}")
        r = self.features.shape[1]
        expected = {"image_ids": (n,), "boxes": (n, r, 4), "scores": (n, r),
                    "num_regions": (n,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} must be {shape}, got {getattr(self, name).shape}")
        if n and (self.num_regions.min() < 0 or self.num_regions.max() > r):
            raise ValueError(f"num_regions must lie in 0..{r}")
        self._index = {int(i): k for k, i in enumerate(self.image_ids)}
        if len(self._index) != n:
            raise ValueError("image_ids repeat")

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def max_regions(self) -> int:
        return self.features.shape[1]

    @property
    def feature_dim(self) -> int:
        return self.features.shape[2]

    def index_of(self, image_id: int) -> int:
        """Row of this image (KeyError names an image without features)."""
        try:
            return self._index[int(image_id)]
        except KeyError:
            raise KeyError(f"no region features for image {image_id}") from None


def save_region_features(path: str | Path, rf: RegionFeatures) -> Path:
    """Write `rf` as glimpse's .npz (uncompressed: it is read far more often than written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **{key: getattr(rf, key) for key in NPZ_KEYS})
    tmp.replace(path)
    return path


def load_region_features(path: str | Path) -> RegionFeatures:
    """Read a glimpse .npz, a bottom-up-attention .tsv, or a directory of per-image .npz."""
    path = Path(path)
    if path.is_dir():
        return _load_npz_directory(path)
    if not path.exists():
        raise DatasetFormatError(f"{path}: no such file or directory")
    if path.suffix == ".tsv":
        return _load_tsv(path)
    if path.suffix == ".npz":
        return _load_glimpse_npz(path)
    raise DatasetFormatError(f"{path}: expected a .npz, a .tsv or a directory of .npz files")


# -- glimpse's split files ----------------------------------------------------------------

def _load_glimpse_npz(path: Path) -> RegionFeatures:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in NPZ_KEYS if k not in data]
            if missing:
                raise DatasetFormatError(f"{path}: missing {', '.join(missing)} "
                                         f"(has {', '.join(sorted(data.files))})")
            arrays = {k: data[k] for k in NPZ_KEYS}
    except (OSError, ValueError) as err:
        if isinstance(err, DatasetFormatError):
            raise
        raise DatasetFormatError(f"{path}: not a readable .npz ({err})") from None
    try:
        return RegionFeatures(**arrays)
    except ValueError as err:
        raise DatasetFormatError(f"{path}: {err}") from None


# -- per-image records of the published formats --------------------------------------------

@dataclass
class _ImageRegions:
    image_id: int
    boxes: np.ndarray  # (n, 4) normalised
    features: np.ndarray  # (n, D)


def _normalised(boxes: np.ndarray, width: float, height: float, where: str) -> np.ndarray:
    if width <= 0 or height <= 0:
        raise DatasetFormatError(f"{where}: image size {width} x {height} is not positive")
    scale = np.array([width, height, width, height], dtype=np.float32)
    return np.clip(boxes.astype(np.float32) / scale, 0.0, 1.0)


def _stack(records: list[_ImageRegions], source: Path) -> RegionFeatures:
    if not records:
        raise DatasetFormatError(f"{source}: holds no images")
    dims = {r.features.shape[1] for r in records if len(r.boxes)}
    if len(dims) > 1:
        raise DatasetFormatError(f"{source}: feature sizes differ between images ({sorted(dims)})")
    n, r, d = len(records), max(len(r.boxes) for r in records), dims.pop() if dims else 0
    boxes = np.zeros((n, r, 4), np.float32)
    scores = np.zeros((n, r), np.float32)
    features = np.zeros((n, r, d), np.float32)
    counts = np.zeros(n, np.int64)
    for i, rec in enumerate(records):
        k = len(rec.boxes)
        boxes[i, :k], scores[i, :k], features[i, :k], counts[i] = rec.boxes, 1.0, rec.features, k
    ids = np.array([rec.image_id for rec in records], np.int64)
    try:
        return RegionFeatures(ids, boxes, scores, features, counts)
    except ValueError as err:
        raise DatasetFormatError(f"{source}: {err}") from None


# -- bottom-up-attention TSV ----------------------------------------------------------------

def _decode(text: str, columns: int, rows: int, where: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DatasetFormatError(f"{where}: not valid base64") from None
    if len(raw) % 4:
        raise DatasetFormatError(f"{where}: {len(raw)} bytes is not a float32 buffer")
    values = np.frombuffer(raw, dtype=np.float32)
    if columns and values.size != rows * columns:
        raise DatasetFormatError(f"{where}: {values.size} values, expected {rows} x {columns}")
    if values.size % max(rows, 1) or (rows == 0 and values.size):
        raise DatasetFormatError(f"{where}: {values.size} values do not split into {rows} rows")
    return values.reshape(rows, -1) if rows else values.reshape(0, columns)


def _tsv_record(row: list[str], where: str) -> _ImageRegions:
    if len(row) != len(TSV_FIELDS):
        raise DatasetFormatError(f"{where}: {len(row)} fields, expected {len(TSV_FIELDS)} "
                                 f"({', '.join(TSV_FIELDS)})")
    entry = dict(zip(TSV_FIELDS, row, strict=True))
    try:
        image_id = int(entry["image_id"])
        width, height = float(entry["image_w"]), float(entry["image_h"])
        num_boxes = int(entry["num_boxes"])
    except ValueError as err:
        raise DatasetFormatError(f"{where}: {err}") from None
    if num_boxes < 0:
        raise DatasetFormatError(f"{where}: num_boxes {num_boxes} is negative")
    boxes = _decode(entry["boxes"], 4, num_boxes, f"{where}, boxes")
    features = _decode(entry["features"], 0, num_boxes, f"{where}, features")
    return _ImageRegions(image_id, _normalised(boxes, width, height, where), features)


def _load_tsv(path: Path) -> RegionFeatures:
    # A row holds num_boxes x 2048 floats in base64: far beyond csv's default field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    records = []
    with path.open(newline="") as f:
        for line, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if row:
                records.append(_tsv_record(row, f"{path}: line {line}"))
    return _stack(records, path)


# -- directory of per-image .npz -------------------------------------------------------------

def _first(data, keys: Iterable[str], where: str) -> np.ndarray:
    for key in keys:
        if key in data:
            return data[key]
    raise DatasetFormatError(f"{where}: has none of {', '.join(keys)} "
                             f"(has {', '.join(sorted(data.files))})")


def _image_id_of(path: Path) -> int:
    match = re.search(r"(\d+)$", path.stem)
    if not match:
        raise DatasetFormatError(f"{path}: the file name holds no image id")
    return int(match.group(1))


def _npz_record(path: Path) -> _ImageRegions:
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            features = np.asarray(_first(data, ("x", "features"), where))
            boxes = np.asarray(_first(data, ("bbox", "boxes"), where))
            width = float(_first(data, ("image_w",), where))
            height = float(_first(data, ("image_h",), where))
            num = int(data["num_bbox"]) if "num_bbox" in data else len(boxes)
    except (OSError, ValueError, TypeError) as err:
        if isinstance(err, DatasetFormatError):
            raise
        raise DatasetFormatError(f"{where}: not a readable region .npz ({err})") from None
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DatasetFormatError(f"{where}: boxes are {boxes.shape}, expected (num_boxes, 4)")
    if features.ndim != 2 or features.shape[0] != len(boxes):
        raise DatasetFormatError(f"{where}: features are {features.shape}, expected "
                                 f"({len(boxes)}, D) for {len(boxes)} boxes")
    if not 0 <= num <= len(boxes):
        raise DatasetFormatError(f"{where}: num_bbox {num} but {len(boxes)} boxes")
    return _ImageRegions(_image_id_of(path), _normalised(boxes[:num], width, height, where),
                         features[:num].astype(np.float32))


def _load_npz_directory(path: Path) -> RegionFeatures:
    files = sorted(path.glob("*.npz"))
    records = sorted((_npz_record(f) for f in files), key=lambda r: r.image_id)
    ids = [r.image_id for r in records]
    if len(set(ids)) != len(ids):
        raise DatasetFormatError(f"{path}: two files name the same image id")
    return _stack(records, path)
