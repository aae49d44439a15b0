"""A dataset's images as one uint8 tensor, resized the way the service resizes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.data.readers import CaptionImage


def load_images(dataset_dir: Path, images: list[CaptionImage], size: int) -> torch.Tensor:
    """(N, 3, size, size) uint8, resized bilinearly as the service does."""
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        with Image.open(dataset_dir / im.path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            out[i] = np.asarray(img)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
