"""How fast a text-to-image discriminator's image trunk can learn to tell the attributes
apart: the trunk alone, with a linear head per attribute on its pooled features (D's
auxiliary classifier), trained *supervised* on real 64 px training images with the
GAN's optimiser (Adam, beta1 0.5, batch 64), scored on the validation images.

A generator only learns the distinctions its discriminator makes, so a trunk that
needs many thousand steps to name a shape cannot teach one within a short GAN run.

    python scripts/discriminator_probe.py --data data/t2i --trunks dcgan residual \\
        --steps 250 500 1000 --out runs/discriminator_probe.json

prints one JSON object per trunk: seconds per step, and validation accuracy of shape,
colour and size at each of --steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn

from models.gan import AttributeHead, attribute_loss, diff_augment, discriminator_trunk
from training.data.images import load_images
from training.data.text_image import single_object_images, to_unit_range
from training.tasks.gan import ATTRIBUTE_CLASSES, class_attributes

ATTRIBUTES = ("shape", "colour", "size")


def split_tensors(data: Path, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, size, size) uint8 and their (shape, colour, size) ids (N, 3)."""
    items = single_object_images(data, split)
    images = load_images(data, [path for path, _, _ in items], size)
    return images, class_attributes(torch.tensor([c for _, _, c in items]))


@torch.no_grad()
def accuracy(trunk: nn.Module, head: AttributeHead, images: torch.Tensor,
             labels: torch.Tensor) -> dict[str, float]:
    trunk.eval()
    named = [torch.cat(parts) for parts in zip(*(
        head(trunk(to_unit_range(images[i:i + 256]))) for i in range(0, len(images), 256)),
        strict=True)]
    trunk.train()
    return {name: round((logits.argmax(1) == labels[:, k]).float().mean().item(), 3)
            for k, (name, logits) in enumerate(zip(ATTRIBUTES, named, strict=True))}


def probe(kind: str, args: argparse.Namespace, train: tuple, val: tuple) -> dict:
    torch.manual_seed(args.seed)
    trunk = discriminator_trunk(kind, args.ndf, num_halvings=4, spectral_norm=args.spectral_norm)
    head = AttributeHead(args.ndf * 8, ATTRIBUTE_CLASSES)
    optimizer = torch.optim.Adam([*trunk.parameters(), *head.parameters()], lr=args.lr,
                                 betas=(0.5, 0.999))
    images, labels = train
    generator = torch.Generator().manual_seed(args.seed)
    out = {"trunk": kind, "ndf": args.ndf, "spectral_norm": args.spectral_norm, "lr": args.lr,
           "diff_augment": args.diff_augment, "parameters": sum(
               p.numel() for p in trunk.parameters()), "val": {}}
    seconds = 0.0
    for step in range(1, max(args.steps) + 1):
        batch = torch.randint(0, len(images), (args.batch_size,), generator=generator)
        x = to_unit_range(images[batch])
        if args.diff_augment:
            x = diff_augment(x, tuple(args.diff_augment))
        t0 = time.perf_counter()
        loss = attribute_loss(head(trunk(x)), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds += time.perf_counter() - t0
        if step in args.steps:
            out["val"][step] = accuracy(trunk, head, *val)
    out["seconds_per_step"] = round(seconds / max(args.steps), 4)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/t2i"))
    p.add_argument("--trunks", nargs="+", default=["dcgan", "residual"])
    p.add_argument("--ndf", type=int, default=16)
    p.add_argument("--spectral-norm", action="store_true")
    p.add_argument("--diff-augment", nargs="*", default=[])
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, nargs="+", default=[250, 500, 1000])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the results as one JSON list here")
    args = p.parse_args(argv)
    train = split_tensors(args.data, "train", args.image_size)
    val = split_tensors(args.data, "val", args.image_size)
    results = []
    for kind in args.trunks:
        results.append(probe(kind, args, train, val))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
