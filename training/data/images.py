"""A dataset's images as one uint8 tensor, resized the way the service resizes them."""

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
