"""(image, caption) pairs of the single-object text-to-image set, for the GANs.

The set is the shapes world generated with one object per image at 128 px
(`glimpse data shapes --max-objects 1 --size 128`). Images are resized once to a
generator's side and held in memory as uint8; every distinct caption is embedded
once by a frozen text embedding phi(t). One example is one (image, caption) pair.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from training.data.images import load_images
from training.data.readers import load_captions
from training.data.shapes import load_scenes
from training.data.world import COLOURS, SIZES, object_class

log = logging.getLogger(__name__)

TextEmbedder = Callable[[Sequence[str]], torch.Tensor]  # texts -> phi(t), (N, E) on the CPU


@dataclass
class TextImagePairs:
    """Training pairs of the single-object set: images, their classes, caption embeddings."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    image_class: torch.Tensor  # (N,) class of each image's object (world.object_class)
    pair_image: torch.Tensor  # (P,) image of each (image, caption) pair
    pair_text: torch.Tensor  # (P,) row of the pair's caption in `embeddings`
    embeddings: torch.Tensor  # (U, E) phi(t) of every distinct caption

    def __len__(self) -> int:
        return len(self.pair_image)

    @property
    def pair_class(self) -> torch.Tensor:
        return self.image_class[self.pair_image]

    @property
    def pair_embeddings(self) -> torch.Tensor:
        """(P, E) phi(t) of every pair's caption: what the networks standardise phi(t) by."""
        return self.embeddings[self.pair_text]


def single_object_images(data_dir: Path, split: str = "train") -> list[tuple[str, list[str], int]]:
    """(image path, captions, class) of the split's images that hold exactly one object; the
    class is the object's shape, colour and size (world.object_class)."""
    scenes = load_scenes(data_dir)
    out = []
    for im in load_captions(data_dir, split):
        objects = scenes[im.imgid].objects
        if len(objects) == 1:
            obj = objects[0]
            out.append((im.path, list(im.captions), object_class(obj.shape, obj.colour, obj.size)))
    if not out:
        raise ValueError(f"{data_dir}: no single-object {split} images")
    return out


def embed_unique(embedder: TextEmbedder, texts: Sequence[str], chunk: int = 512
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of the distinct texts (U, E) and each text's row in them (N,)."""
    unique = list(dict.fromkeys(texts))
    row = {t: i for i, t in enumerate(unique)}
    table = torch.cat([embedder(unique[i:i + chunk]) for i in range(0, len(unique), chunk)])
    return table, torch.tensor([row[t] for t in texts], dtype=torch.long)


def load_pairs(data_dir: Path, image_size: int, embedder: TextEmbedder) -> TextImagePairs:
    """Every (image, caption) pair of the training split, images at `image_size`."""
    items = single_object_images(data_dir)
    t0 = time.perf_counter()
    images = load_images(data_dir, [path for path, _, _ in items], image_size)
    texts = [c for _, captions, _ in items for c in captions]
    embeddings, pair_text = embed_unique(embedder, texts)
    pair_image = torch.tensor([i for i, (_, captions, _) in enumerate(items) for _ in captions])
    log.info("%d images, %d pairs, %d distinct captions in %.1fs", len(items), len(texts),
             len(embeddings), time.perf_counter() - t0)
    return TextImagePairs(images=images, image_class=torch.tensor([c for _, _, c in items]),
                          pair_image=pair_image, pair_text=pair_text, embeddings=embeddings)


def mismatched_pairs(classes: torch.Tensor, chosen: torch.Tensor, *, tries: int = 20
                     ) -> torch.Tensor:
    """For each pair index in `chosen`, a random pair whose image is of another class
    (the "wrong text" of GAN-CLS: a caption that does not describe the image)."""
    n = len(classes)
    other = torch.randint(0, n, chosen.shape)
    for _ in range(tries):
        same = classes[other] == classes[chosen]
        if not same.any():
            return other
        other[same] = torch.randint(0, n, (int(same.sum()),))
    raise ValueError("mismatched texts need images of at least two classes")


class SameKeyDraws:
    """Random indices whose `key` equals that of each index in `chosen`: the keys sorted
    once, each draw uniform within its key's run of the sorted order."""

    def __init__(self, key: torch.Tensor, chosen: torch.Tensor) -> None:
        self.order = torch.argsort(key)
        self.start = torch.searchsorted(key[self.order], key[chosen])
        self.count = torch.searchsorted(key[self.order], key[chosen], right=True) - self.start

    def draw(self, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """One draw for each of the chosen indices selected by `rows` (a mask, or all)."""
        start, count = self.start[rows], self.count[rows]
        return self.order[start + (torch.rand(start.shape) * count).long()]


def shape_swapped_pairs(classes: torch.Tensor, chosen: torch.Tensor, fallback: torch.Tensor,
                        *, tries: int = 20) -> torch.Tensor:
    """For each pair index in `chosen`, a random pair whose object has the same colour and
    size but another shape (class ids of world.object_class): the wrong text that only a
    discriminator that checks the shape can tell from the right one. Where none is found
    in `tries` draws (one shape of that colour and size), the pair in `fallback`."""
    # the (colour, size) part of the class id
    draws = SameKeyDraws(classes % (len(COLOURS) * len(SIZES)), chosen)
    other = draws.draw()
    for _ in range(tries):
        same = classes[other] == classes[chosen]
        if not same.any():
            return other
        other[same] = draws.draw(same)
    same = classes[other] == classes[chosen]
    return torch.where(same, fallback, other)


def same_class_pairs(classes: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """For each pair index in `chosen`, a random pair whose image is of the same class (it
    may be the pair itself): the other members of a minibatch-std group."""
    return SameKeyDraws(classes, chosen).draw()


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range of the generators' tanh."""
    return images_uint8.float().div_(127.5).sub_(1.0)
