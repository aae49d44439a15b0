"""Draw test images with Up-Down captions and, for each word, its attention over regions.

    python scripts/updown_figure.py --bundle model_repository/caption-updown/4 \
        --data data/shapes15k --features data/shapes15k/features/regions \
        --out docs/images/caption_updown.png

Each row is one image: the image with its R region boxes, then one panel per
generated word with every box drawn with opacity α_i,t (Eq. 3-4 of Anderson et
al. 2018) and the most attended box in red. Boxes come from the precomputed
region features of the split, which the bundle's RegionNet also computes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from service.pipelines.caption import CaptionModel
from training.data.readers import load_captions
from training.data.region_features import load_region_features

PANEL = 96
LABEL = 18


def boxes_panel(image: np.ndarray, boxes: np.ndarray, weights: np.ndarray | None) -> Image.Image:
    """The image with its boxes: grey when weights is None, else opacity α and the top in red."""
    panel = Image.fromarray(image).resize((PANEL, PANEL), Image.NEAREST).convert("RGBA")
    overlay = Image.new("RGBA", panel.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    top = None if weights is None else int(np.argmax(weights))
    for i, box in enumerate(boxes):
        xy = [float(v) * (PANEL - 1) for v in box]
        if weights is None:
            draw.rectangle(xy, outline=(160, 160, 160, 255))
            continue
        alpha = int(255 * min(1.0, float(weights[i]) / max(float(weights.max()), 1e-8)))
        colour = (255, 40, 40, 255) if i == top else (255, 255, 255, alpha)
        draw.rectangle(xy, outline=colour, width=2 if i == top else 1)
    return Image.alpha_composite(panel, overlay).convert("RGB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bundle", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--features", required=True, help="directory of the split's {split}.npz")
    p.add_argument("--split", default="test")
    p.add_argument("--images", type=int, nargs="+", default=[0, 1, 2, 4, 5, 7],
                   help="indices into the split")
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    model = CaptionModel.from_bundle(args.bundle)
    data = Path(args.data)
    split = load_captions(data, args.split)
    regions = load_region_features(Path(args.features) / f"{args.split}.npz")
    font = ImageFont.load_default(size=12)
    rows = []
    for index in args.images:
        path = data / split[index].path
        image = np.asarray(Image.open(path).convert("RGB"))
        boxes = regions.boxes[regions.index_of(split[index].imgid)]
        caption = model.caption(path.read_bytes(), beam_size=args.beam_size,
                                return_attention=True).captions[0]
        panels = [boxes_panel(image, boxes, None)]
        panels += [boxes_panel(image, boxes, a[:, 0]) for a in caption.attention]
        labels = [f"#{index}", *caption.words]
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
