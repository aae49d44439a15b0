"""A dataset's images as one uint8 tensor, resized the way the service resizes them; and
images written side by side as one PNG (sample grids)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.data.readers import CaptionImage


def load_images(dataset_dir: Path, images: Sequence[CaptionImage | str], size: int
                ) -> torch.Tensor:
    """(N, 3, size, size) uint8 of the images (or image paths relative to the dataset),
    resized bilinearly as the service does."""
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        path = im if isinstance(im, str) else im.path
        with Image.open(dataset_dir / path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            out[i] = np.asarray(img)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def save_image_rows(images: np.ndarray, columns: int, path: str | Path) -> None:
    """uint8 images (N, S, S, 3) as one PNG, `columns` to a row, 2 white pixels apart."""
    n, s = len(images), images.shape[1]
    rows = -(-n // columns)
    canvas = np.full((rows * (s + 2), columns * (s + 2), 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * (s + 2):r * (s + 2) + s, c * (s + 2):c * (s + 2) + s] = image
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
