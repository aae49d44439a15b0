"""`glimpse eval generation`: score a text-to-image bundle on the single-object world.

Prompts are captions of the split's images that name the object's shape, colour
and size (so that every attribute the evaluator checks is asked for); R-precision
draws its mismatched prompts from the same kind of caption. The bundle
draws `n` samples per prompt through the service's runtime
(service.pipelines.generation.GenerationModel); PATH `real` instead answers each prompt
with real images of its class from the split, the ceiling a generator can reach.
FID compares the samples with every image of the split.

Each prompt is drawn with its own seed (derived from --seed and its place in the list),
so 200 x 4 samples are 800 noise draws. A request's seed fixes its noise, so drawing
every prompt with --seed itself (--shared-noise, how figures were drawn before) reuses
the same n noise vectors for every prompt: the scores then hang on n draws, and two
bundles whose noise differs in size (StackGAN's Stage I and Stage II) are compared on
different draws.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image, ImageDraw

from training.data.images import load_images
from training.data.language import parse_caption
from training.data.readers import load_captions
from training.data.shapes import single_objects
from training.evaluate import record_metrics
from training.metrics.generation import (
    TAGGER_SIZE,
    Attributes,
    GenerationEvaluator,
    attributes_class,
)

log = logging.getLogger(__name__)

REAL = "real"
METRIC_COLUMNS = (
    ("attribute_all", "attr. all"), ("attribute_shape", "shape"),
    ("attribute_colour", "colour"), ("attribute_size", "size"),
    ("inception_score", "IS"), ("fid", "FID"), ("r_precision", "R-prec."),
    ("diversity", "diversity"),
)


class Generator(Protocol):
    def generate(self, prompts: list[str], n: int, seed: int) -> np.ndarray:
        """uint8 (len(prompts) * n, S, S, 3), prompt-major."""


@dataclass(frozen=True)
class Prompt:
    text: str
    attributes: Attributes  # (shape, colour, size) of the object described
    imgid: int


@dataclass
class SplitImages:
    """A split's images at the tagger's size and what they show."""

    pixels: np.ndarray  # uint8 (N, S, S, 3), S the tagger's size
    attributes: list[Attributes]
    captions: list[tuple[str, ...]]
    imgids: list[int]


def load_split_images(dataset_dir: str | Path, split: str, size: int = TAGGER_SIZE
                      ) -> SplitImages:
    data = Path(dataset_dir)
    images = load_captions(data, split)
    attributes = [(o.shape, o.colour, o.size) for o in single_objects(data, images)]
    pixels = load_images(data, images, size).permute(0, 2, 3, 1).numpy()
    return SplitImages(pixels=pixels, attributes=attributes,
                       captions=[im.captions for im in images], imgids=[im.imgid for im in images])


def names_every_attribute(text: str, attributes: Attributes) -> bool:
    """Whether `text` describes exactly one object by its shape, colour and size."""
    caption = parse_caption(text)
    if caption is None or len(caption.clauses) != 1 or caption.clauses[0].relation is not None:
        return False
    phrase = caption.clauses[0].subject
    return (phrase.count is None and (phrase.shape, phrase.colour, phrase.size) == attributes)


def select_prompts(split: SplitImages, n: int, seed: int) -> list[Prompt]:
    """Up to `n` prompts from distinct images, in a seeded order: each image's first caption
    that names its object's shape, colour and size."""
    prompts = []
    for i in np.random.default_rng(seed).permutation(len(split.imgids)):
        text = next((c for c in split.captions[i] if names_every_attribute(c, split.attributes[i])),
                    None)
        if text is not None:
            prompts.append(Prompt(text, split.attributes[i], split.imgids[i]))
            if len(prompts) == n:
                break
    return prompts


class RealImages:
    """A stand-in generator that answers a prompt with real images of its class."""

    def __init__(self, split: SplitImages) -> None:
        self.split = split
        self.by_class: dict[Attributes, list[int]] = defaultdict(list)
        for i, a in enumerate(split.attributes):
            self.by_class[a].append(i)
        self.attributes_of_text = {c: a for caps, a in zip(split.captions, split.attributes,
                                                          strict=True) for c in caps}

    def generate(self, prompts: list[str], n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        picks = []
        for text in prompts:
            pool = self.by_class[self.attributes_of_text[text]]
            picks.extend(rng.choice(pool, size=n, replace=len(pool) < n).tolist())
        return self.split.pixels[picks]


def score(evaluator: GenerationEvaluator, images: np.ndarray, prompts: list[Prompt], n: int,
          split: SplitImages, seed: int) -> dict[str, float]:
    """Every metric of generated `images` (prompt-major, n per prompt)."""
    attributes = [p.attributes for p in prompts for _ in range(n)]
    accuracy = evaluator.attribute_accuracy(images, attributes)
    is_mean, is_std = evaluator.inception_score(images)
    metrics = {f"attribute_{k}": v for k, v in accuracy.items()}
    metrics |= {"inception_score": is_mean, "inception_score_std": is_std,
                "fid": evaluator.fid(split.pixels, images)}
    if evaluator.text_encoder is not None:
        # Mismatched prompts name all three attributes too: a vaguer caption of another
        # image ("a diamond") can be true of this one and would count against it.
        pool = [(c, attributes_class(a)) for caps, a in zip(split.captions, split.attributes,
                                                           strict=True)
                for c in caps if names_every_attribute(c, a)]
        pool_texts, pool_labels = [t for t, _ in pool], [label for _, label in pool]
        metrics["r_precision"] = evaluator.r_precision(
            images, [p.text for p in prompts for _ in range(n)],
            [attributes_class(a) for a in attributes], pool_texts, pool_labels, seed=seed)
    if n >= 2:
        metrics["diversity"] = evaluator.diversity(images, n)
    return metrics


def save_grid(images: np.ndarray, n: int, rows: int, labels: list[str], path: str | Path,
              label_width: int = 200) -> None:
    """A PNG grid: one row per prompt (its text on the left), its n samples across."""
    rows = min(rows, len(images) // n)
    side = images.shape[1]
    grid = Image.new("RGB", (label_width + n * side, rows * side), "white")
    draw = ImageDraw.Draw(grid)
    for r in range(rows):
        draw.text((4, r * side + side // 2 - 6), labels[r], fill="black")
        for c in range(n):
            grid.paste(Image.fromarray(images[r * n + c]), (label_width + c * side, r * side))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def markdown_row(name: str, split: str, metrics: dict[str, float]) -> str:
    cells = [f"{metrics[k]:.3f}" if k in metrics else "-" for k, _ in METRIC_COLUMNS]
    return f"| {name} | {split} | " + " | ".join(cells) + " |"


def markdown_header() -> str:
    names = [title for _, title in METRIC_COLUMNS]
    return ("| model | split | " + " | ".join(names) + " |\n"
            + "|---|---|" + "---:|" * len(names))


def generator_for(path: str, split: SplitImages) -> Generator:
    """The bundle at `path`, or REAL: the split's own images of each prompt's class."""
    if path == REAL:
        return RealImages(split)
    from service.pipelines.generation import GenerationModel

    return GenerationModel.from_bundle(path)


def prompt_seeds(seed: int, count: int) -> list[int]:
    """A seed of its own for each of `count` prompts, fixed by `seed`."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(count)]


def draw_samples(generator: Generator, texts: list[str], n: int, seed: int,
                 shared_noise: bool = False) -> np.ndarray:
    """uint8 (len(texts) * n, S, S, 3), prompt-major: each prompt's n samples drawn with its
    own seed (prompt_seeds), or with `seed` for every prompt when `shared_noise`."""
    if shared_noise:
        return np.asarray(generator.generate(texts, n, seed))
    return np.concatenate([np.asarray(generator.generate([text], n, s))
                           for text, s in zip(texts, prompt_seeds(seed, len(texts)),
                                              strict=True)])


def eval_generation(args: argparse.Namespace) -> int:
    """`glimpse eval generation`: prints the metrics and a markdown row; --write-manifest
    records them under metrics[split] with the prompts, samples per prompt and seed."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    n = args.samples_per_prompt
    if args.prompts < 1 or n < 1:
        print("glimpse eval generation: --prompts and --samples-per-prompt must be >= 1",
              file=sys.stderr)
        return 2
    evaluator = GenerationEvaluator.from_runs(args.tagger, args.text_encoder)
    # the real images (FID's reference, the REAL stand-in) at the size the tagger judges
    split = load_split_images(args.data, args.split, evaluator.image_size)
    prompts = select_prompts(split, args.prompts, args.seed)
    generator = generator_for(args.path, split)
    images = draw_samples(generator, [p.text for p in prompts], n, args.seed,
                          args.shared_noise)
    if images.dtype != np.uint8 or len(images) != len(prompts) * n:
        raise ValueError(f"the generator returned {images.shape} {images.dtype}; expected "
                         f"uint8 ({len(prompts) * n}, S, S, 3)")
    torch.manual_seed(args.seed)  # torchmetrics shuffles the Inception score's splits
    metrics = score(evaluator, images, prompts, n, split, args.seed)
    name = args.path if args.path == REAL else "/".join(Path(args.path).parts[-2:])
    result = {"model": name, "split": args.split, "prompts": len(prompts),
              "samples_per_prompt": n, "seed": args.seed,
              "noise": "shared" if args.shared_noise else "per-prompt", "metrics": metrics,
              "markdown": markdown_row(name, args.split, metrics)}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.grid:
        save_grid(images, n, args.grid_prompts, [p.text for p in prompts], args.grid)
    if args.write_manifest and args.path != REAL:
        sampling = {k: result[k] for k in ("prompts", "samples_per_prompt", "seed", "noise")}
        # a judge at another size than the default tagger's is recorded beside it
        key = (args.split if evaluator.image_size == TAGGER_SIZE
               else f"{args.split}_{evaluator.image_size}px")
        record_metrics(args.path, {**sampling, **metrics, "judge_size": evaluator.image_size},
                       at=(key,))
    print(json.dumps(metrics, indent=2))
    print(markdown_header())
    print(result["markdown"])
    return 0
