"""`glimpse index`: a retrieval bundle's gallery, embedded from a set of images.

A gallery is embedded through the bundle's ONNX graphs with the service's own
pipeline (`service.pipelines.retrieval.RetrievalModel`: same image decoding, resizing,
tokeniser), so it holds exactly the vectors a query is compared with; `glimpse
eval retrieval` (training.evaluate.retrieval) embeds a split the same way, so the
published recall is the recall users get.

`glimpse index BUNDLE --data DIR --split test` embeds a split's images and all of
their sentences; `--images FOLDER` embeds the images of a folder only. The gallery
is written beside the graphs (`gallery_images.npy` [N, E] float32 +
`gallery_images.json`, and for a split `gallery_captions.npy` + `.json`) and
recorded in the manifest's `files` (with sha256) and `inference.galleries`;
indexing again replaces the whole gallery.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from service.bundle import FileSpec, Manifest, file_sha256, load_bundle, write_manifest
from service.pipelines.retrieval import GALLERY_COLUMNS, RetrievalModel
from training.data.readers import CaptionImage, load_captions

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
Columns = dict[str, list]


def embed_image_files(model: RetrievalModel, paths: Sequence[Path], *, batch_size: int = 64,
                      progress: bool = True) -> np.ndarray:
    """[N, E] embeddings of image files, decoded and resized as the service does."""
    out = [np.zeros((0, model.dimensions), dtype=np.float32)]
    for start in tqdm(range(0, len(paths), batch_size), disable=not progress,
                      desc="images", unit="batch"):
        chunk = paths[start:start + batch_size]
        out.append(model.embed_images([model.load_image(p) for p in chunk]))
    return np.concatenate(out)


def sentence_ids(model: RetrievalModel, text: str) -> list[int]:
    """Ids of a gallery sentence: unknown words as <unk>, cut to the graph's T words."""
    ids = model.words.encode(text).ids[:model.text_length]
    return ids or [model.words.UNK_ID]


def embed_sentences(model: RetrievalModel, texts: Sequence[str], *, batch_size: int = 256,
                    progress: bool = True) -> np.ndarray:
    """[N, E] embeddings of sentences."""
    out = [np.zeros((0, model.dimensions), dtype=np.float32)]
    for start in tqdm(range(0, len(texts), batch_size), disable=not progress,
                      desc="sentences", unit="batch"):
        out.append(model.embed_texts([sentence_ids(model, t)
                                      for t in texts[start:start + batch_size]]))
    return np.concatenate(out)


def split_images(dataset_dir: Path, split: str) -> list[CaptionImage]:
    images = load_captions(dataset_dir, split)
    if not images:
        raise ValueError(f"{dataset_dir}: split {split!r} has no images")
    return images


def embed_split(model: RetrievalModel, dataset_dir: Path, split: str, *, batch_size: int = 64,
                progress: bool = True) -> tuple[list[CaptionImage], np.ndarray, np.ndarray]:
    """The split's images, their embeddings [I, E] and their sentences' [C, E] (image order)."""
    images = split_images(dataset_dir, split)
    image_emb = embed_image_files(model, [dataset_dir / im.path for im in images],
                                  batch_size=batch_size, progress=progress)
    texts = [text for im in images for text in im.captions]
    return images, image_emb, embed_sentences(model, texts, progress=progress)


# ---------------------------------------------------------------------------- galleries


def write_gallery(bundle_dir: str | Path, galleries: dict[str, tuple[np.ndarray, Columns]]
                  ) -> Manifest:
    """Replace the bundle's gallery by `galleries` ({kind: (embeddings, columns)})."""
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest.model_copy(deep=True)
    old = manifest.inference.get("galleries") or {}
    for spec in old.values():
        for key in spec.values():
            entry = manifest.files.pop(key, None)
            if entry is not None:
                (bundle.path / entry.file).unlink(missing_ok=True)
    recorded: dict[str, dict[str, str]] = {}
    for kind, (embeddings, columns) in galleries.items():
        if sorted(columns) != sorted(GALLERY_COLUMNS[kind]):
            raise ValueError(f"{kind} gallery needs columns {GALLERY_COLUMNS[kind]}")
        stem = f"gallery_{kind}"
        _replace(bundle.path / f"{stem}.npy",
                 lambda f, e=embeddings: np.save(f, np.ascontiguousarray(e, dtype=np.float32)))
        _replace(bundle.path / f"{stem}.json",
                 lambda f, c=columns: f.write(json.dumps(c, separators=(",", ":")).encode()))
        recorded[kind] = {"embeddings": stem, "entries": f"{stem}_entries"}
        for key, file in ((stem, f"{stem}.npy"), (f"{stem}_entries", f"{stem}.json")):
            manifest.files[key] = FileSpec(file=file, sha256=file_sha256(bundle.path / file))
    manifest.inference["galleries"] = recorded
    manifest = Manifest.model_validate(manifest.model_dump())
    write_manifest(bundle.path, manifest)
    return manifest


def _replace(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def index_split(bundle_dir: str | Path, dataset_dir: str | Path, split: str = "test", *,
                batch_size: int = 64, progress: bool = True) -> dict:
    """Gallery of a dataset split: its images and every sentence written for them."""
    model = RetrievalModel.from_bundle(bundle_dir)
    dataset_dir = Path(dataset_dir)
    images, image_emb, sentence_emb = embed_split(model, dataset_dir, split,
                                                  batch_size=batch_size, progress=progress)
    write_gallery(bundle_dir, {
        "images": (image_emb, {"ids": [im.imgid for im in images],
                               "files": [im.path for im in images]}),
        "captions": (sentence_emb, {"texts": [t for im in images for t in im.captions],
                                    "image_ids": [im.imgid for im in images
                                                  for _ in im.captions]}),
    })
    return {"bundle": str(bundle_dir), "split": split, "images": len(images),
            "captions": len(sentence_emb)}


def index_folder(bundle_dir: str | Path, folder: str | Path, *, batch_size: int = 64,
                 progress: bool = True) -> dict:
    """Gallery of the images in `folder` (sorted by name; ids 0..N-1; no sentences)."""
    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    model = RetrievalModel.from_bundle(bundle_dir)
    embeddings = embed_image_files(model, paths, batch_size=batch_size, progress=progress)
    write_gallery(bundle_dir, {"images": (embeddings, {
        "ids": list(range(len(paths))), "files": [p.name for p in paths]})})
    return {"bundle": str(bundle_dir), "folder": str(folder), "images": len(paths)}


def index(args: argparse.Namespace) -> int:
    """`glimpse index`: a split's images and sentences (--data), or a folder's images."""
    if args.images:
        result = index_folder(args.path, args.images, batch_size=args.batch_size)
    else:
        result = index_split(args.path, args.data, args.split, batch_size=args.batch_size)
    print(json.dumps(result, indent=2))
    return 0
