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

`--index hnsw` or `--index ivfpq` (with `--index-param KEY=VALUE`) also builds an
approximate index of each gallery (service/indexes.py), written as
`gallery_images.hnsw.faiss` etc. and recorded in the gallery's `index` with its kind and
parameters, its file in `files` with its sha256; `--rebuild` builds the index again from
the stored embeddings without embedding anything.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from service.bundle import FileSpec, Manifest, file_sha256, load_bundle, write_manifest
from service.indexes import index_class
from service.pipelines.retrieval import GALLERY_COLUMNS, RetrievalModel
from training.data.readers import CaptionImage, load_captions

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
Columns = dict[str, list]
IndexChoice = tuple[str, Mapping[str, int]]  # (kind, parameters given), e.g. ("hnsw", {"M": 16})
EXACT: IndexChoice = ("exact", {})


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


def write_gallery(bundle_dir: str | Path, galleries: dict[str, tuple[np.ndarray, Columns]],
                  indexes: Mapping[str, IndexChoice] | None = None, *,
                  progress: bool = False) -> Manifest:
    """Replace the bundle's gallery by `galleries` ({kind: (embeddings, columns)}), each
    searched by the index `indexes` names for it (exact when none)."""
    indexes = indexes or {}
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest.model_copy(deep=True)
    old = manifest.inference.get("galleries") or {}
    for spec in old.values():
        keys = [spec["embeddings"], spec["entries"], (spec.get("index") or {}).get("file")]
        for key in filter(None, keys):
            entry = manifest.files.pop(key, None)
            if entry is not None:
                (bundle.path / entry.file).unlink(missing_ok=True)
    recorded: dict[str, dict] = {}
    for kind, (embeddings, columns) in galleries.items():
        if sorted(columns) != sorted(GALLERY_COLUMNS[kind]):
            raise ValueError(f"{kind} gallery needs columns {GALLERY_COLUMNS[kind]}")
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        index_kind, given = indexes.get(kind, EXACT)
        cls = index_class(index_kind)
        params = cls.resolve_params(given, len(embeddings), embeddings.shape[1])
        stem = f"gallery_{kind}"
        _replace(bundle.path / f"{stem}.npy", lambda f, e=embeddings: np.save(f, e))
        _replace(bundle.path / f"{stem}.json",
                 lambda f, c=columns: f.write(json.dumps(c, separators=(",", ":")).encode()))
        recorded[kind] = {"embeddings": stem, "entries": f"{stem}_entries",
                          "index": {"kind": index_kind, "params": params}}
        written = [(stem, f"{stem}.npy"), (f"{stem}_entries", f"{stem}.json")]
        if cls.needs_file:
            file = f"{stem}.{index_kind}.faiss"
            tmp = bundle.path / f".{file}.tmp"
            cls.build(embeddings, params, tmp, progress=progress)
            os.replace(tmp, bundle.path / file)
            recorded[kind]["index"]["file"] = f"{stem}_index"
            written.append((f"{stem}_index", file))
        for key, file in written:
            manifest.files[key] = FileSpec(file=file, sha256=file_sha256(bundle.path / file))
    manifest.inference["galleries"] = recorded
    manifest = Manifest.model_validate(manifest.model_dump())
    write_manifest(bundle.path, manifest)
    return manifest


def stored_galleries(bundle_dir: str | Path) -> dict[str, tuple[np.ndarray, Columns]]:
    """The bundle's galleries as `write_gallery` takes them: embeddings and columns."""
    bundle = load_bundle(bundle_dir)
    out = {}
    for kind, spec in (bundle.manifest.inference.get("galleries") or {}).items():
        embeddings = np.load(bundle.file(spec["embeddings"]), allow_pickle=False)
        columns = json.loads(bundle.file(spec["entries"]).read_text(encoding="utf-8"))
        out[kind] = (embeddings, {name: columns[name] for name in GALLERY_COLUMNS[kind]})
    return out


def reindex(bundle_dir: str | Path, indexes: Mapping[str, IndexChoice], *,
            progress: bool = True) -> dict:
    """Build the stored galleries' indexes again (nothing is embedded)."""
    galleries = stored_galleries(bundle_dir)
    if not galleries:
        raise ValueError(f"{bundle_dir}: no gallery to index; embed one with --data or "
                         "--images")
    manifest = write_gallery(bundle_dir, galleries, indexes, progress=progress)
    return {"bundle": str(bundle_dir),
            **{kind: {"vectors": len(galleries[kind][0]), "index": spec["index"]}
               for kind, spec in manifest.inference["galleries"].items()}}


def _replace(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def index_split(bundle_dir: str | Path, dataset_dir: str | Path, split: str = "test", *,
                batch_size: int = 64, progress: bool = True,
                index: IndexChoice = EXACT) -> dict:
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
    }, {"images": index, "captions": index}, progress=progress)
    return {"bundle": str(bundle_dir), "split": split, "images": len(images),
            "captions": len(sentence_emb), "index": index[0]}


def index_folder(bundle_dir: str | Path, folder: str | Path, *, batch_size: int = 64,
                 progress: bool = True, index: IndexChoice = EXACT) -> dict:
    """Gallery of the images in `folder` (sorted by name; ids 0..N-1; no sentences)."""
    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    model = RetrievalModel.from_bundle(bundle_dir)
    embeddings = embed_image_files(model, paths, batch_size=batch_size, progress=progress)
    write_gallery(bundle_dir, {"images": (embeddings, {
        "ids": list(range(len(paths))), "files": [p.name for p in paths]})},
        {"images": index}, progress=progress)
    return {"bundle": str(bundle_dir), "folder": str(folder), "images": len(paths),
            "index": index[0]}


def index_params(pairs: Sequence[str]) -> dict[str, int]:
    """`KEY=VALUE` pairs of integers, as `--index-param` gives them."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value.lstrip("-").isdigit():
            raise ValueError(f"--index-param {pair!r}: expected KEY=INTEGER, e.g. M=32")
        params[key] = int(value)
    return params


def index(args: argparse.Namespace) -> int:
    """`glimpse index`: a split's images and sentences (--data), or a folder's images, or
    (--rebuild) the stored galleries' index only."""
    choice = (args.index, index_params(args.index_param or []))
    if args.rebuild:
        result = reindex(args.path, {kind: choice for kind in GALLERY_COLUMNS})
    elif args.images:
        result = index_folder(args.path, args.images, batch_size=args.batch_size,
                              index=choice)
    else:
        result = index_split(args.path, args.data, args.split, batch_size=args.batch_size,
                             index=choice)
    print(json.dumps(result, indent=2))
    return 0
