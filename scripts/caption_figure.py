"""Draw test images with their captions and, for attention models, each word's map.

    python scripts/caption_figure.py --bundle model_repository/caption-sat/8 \
        --data data/shapes --out docs/images/caption_attention.png

Each row is one image: the image, then one panel per generated word with the
attention weights α_t (upsampled from the annotation grid) over the image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from service.pipelines.caption import CaptionModel
from training.data.readers import load_captions

PANEL = 96
LABEL = 18


def heat(image: np.ndarray, weights: np.ndarray) -> Image.Image:
    """The image darkened where attention is low (weights scaled to their max)."""
    w = weights / max(float(weights.max()), 1e-8)
    mask = Image.fromarray((w * 255).astype(np.uint8)).resize((PANEL, PANEL), Image.BILINEAR)
    base = Image.fromarray(image).resize((PANEL, PANEL), Image.NEAREST).convert("RGB")
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    out = np.asarray(base, dtype=np.float32) * (0.15 + 0.85 * m)
    return Image.fromarray(out.astype(np.uint8))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bundle", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--images", type=int, nargs="+", default=[0, 1, 2, 4, 5, 7],
                   help="indices into the split")
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    model = CaptionModel.from_bundle(args.bundle)
    data = Path(args.data)
    split = load_captions(data, args.split)
    font = ImageFont.load_default(size=12)
    rows = []
    for index in args.images:
        path = data / split[index].path
        image = np.asarray(Image.open(path).convert("RGB"))
        result = model.caption(path.read_bytes(), beam_size=args.beam_size,
                               return_attention=model.has_attention)
        caption = result.captions[0]
        panels = [Image.fromarray(image).resize((PANEL, PANEL), Image.NEAREST)]
        labels = [f"#{index}"]
        if caption.attention is not None:
            panels += [heat(image, a) for a in caption.attention]
            labels += caption.words
        width = max(len(panels) * PANEL, 8 * len(caption.text) + 8)
        row = Image.new("RGB", (width, PANEL + 2 * LABEL), "white")
        draw = ImageDraw.Draw(row)
        draw.text((4, 2), caption.text, fill="black", font=font)
        for i, (panel, label) in enumerate(zip(panels, labels, strict=True)):
            row.paste(panel, (i * PANEL, LABEL))
            draw.text((i * PANEL + 4, LABEL + PANEL + 2), label, fill="black", font=font)
        rows.append(row)
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
