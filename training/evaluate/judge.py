"""`glimpse eval judge`: does a text-to-image model draw what its prompt says?

The judge parses each image into a scene and checks the prompt against it:

1. the bottom-up region detector of a `glimpse train regions` run (models/regions.py,
   RegionNet on the frozen encoder of `glimpse train encoder`) proposes boxes with a
   centre score and names each box's shape, colour and size with its attribute heads;
2. the proposals scoring at least a threshold (chosen on the validation split to get
   the number of objects right most often), after suppressing a box that overlaps a
   stronger one, become the scene's objects. Each is placed at the centroid of the
   pixels of its colour inside its box: the world's relations compare the centres of
   the shapes' circumscribed circles, which for these regular shapes is their centroid,
   while the centre of a box is off by a pixel or more (a triangle's box is not
   centred on its circumcentre) and flips relations between near-diagonal objects;
3. the prompt is read with the caption grammar and checked against that scene by the
   project's semantic checker (training.metrics.semantic): it is *satisfied* when
   every object it names is there with the stated attributes and counts, and every
   relation it states holds.

Single-object prompts (a dataset whose scenes hold one object each, data/t2i) are
captions naming the object's shape, colour and size; besides satisfaction the judge
reports whether the most confident region has each attribute of the prompt.
Multi-object prompts (the default world, data/shapes) are one caption per image.

`real` in place of a bundle judges every caption of the split's images against the
image it describes: how often the judge agrees with the truth, which every figure
of a model is read beside (a model cannot score above its judge's blind spots). A
`glimpse train dvae` run in its place judges the dVAE's reconstructions of those images
(encode to hard codes, decode) the same way: the most a DALL-E drawing through those
codes can reach without reranking. A
bundle draws its images through the service's own pipeline (the GANs' or DALL-E's),
with `--candidates N` reranked by DALL-E's reranker; prompts a model refuses (words
it was not trained on) count as not satisfied and are reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.regions import RegionNet
from service.bundle import load_bundle
from service.errors import InvalidParameter
from service.pipelines import pipeline_for
from service.pipelines.generation import SamplingOptions
from training.data.images import load_images
from training.data.language import parse_caption
from training.data.readers import load_captions
from training.data.shapes import load_scenes
from training.data.world import COLOURS, SHAPES, SIZE_RADIUS, SIZES, Scene, ShapeObject
from training.evaluate import record_metrics
from training.evaluate.generation import names_every_attribute, save_grid
from training.metrics.generation import to_tagger_input
from training.metrics.semantic import semantic_scores
from training.runs import load_dvae, load_region_net

log = logging.getLogger(__name__)

REAL = "real"
NMS_IOU = 0.5  # a proposal overlapping a stronger one this much is the same object
THRESHOLDS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))
BATCH = 256
# A pixel is the object's when it is this close to the object's colour (RGB distance,
# 0-255); with fewer than CENTROID_MIN_PIXELS such pixels the box centre is used.
COLOUR_DISTANCE = 60.0
CENTROID_MIN_PIXELS = 4


# ---------------------------------------------------------------------------- scenes


@dataclass
class Detections:
    """RegionNet's proposals of a batch of images (whole-image row dropped)."""

    boxes: np.ndarray  # (N, k, 4) normalised xyxy
    scores: np.ndarray  # (N, k) centre score, best first
    attributes: np.ndarray  # (N, k, 3) shape, colour, size ids (world.SHAPES, ...)
    centres: np.ndarray  # (N, k, 2) normalised (x, y): see `colour_centroid`


def colour_centroid(pixels: np.ndarray, box: np.ndarray, colour: tuple[int, int, int]
                    ) -> tuple[float, float]:
    """Normalised (x, y) centroid of the pixels of `colour` inside `box` (normalised xyxy,
    one pixel of margin) of a uint8 image (S, S, 3); the box centre if too few."""
    side = pixels.shape[0]
    x0, y0 = (max(int(np.floor(v * side)) - 1, 0) for v in box[:2])
    x1, y1 = (min(int(np.ceil(v * side)) + 1, side) for v in box[2:])
    patch = pixels[y0:y1, x0:x1].astype(np.float32)
    near = np.linalg.norm(patch - np.asarray(colour, np.float32), axis=-1) < COLOUR_DISTANCE
    if near.sum() < CENTROID_MIN_PIXELS:
        return float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    ys, xs = np.nonzero(near)
    return (x0 + xs.mean() + 0.5) / side, (y0 + ys.mean() + 0.5) / side


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class SceneReader:
    """Images -> scenes, by a trained RegionNet."""

    def __init__(self, net: RegionNet, threshold: float = 0.5) -> None:
        self.net = net.eval()
        self.threshold = threshold

    @classmethod
    def from_run(cls, run_dir: str | Path, threshold: float = 0.5) -> SceneReader:
        return cls(load_region_net(run_dir), threshold)

    @torch.no_grad()
    def detect(self, images: np.ndarray) -> Detections:
        """Proposals of uint8 images (N, S, S, 3), resized to 64 px as real images are."""
        boxes, scores, attributes, centres = [], [], [], []
        k = self.net.config.max_proposals
        palette = list(COLOURS.values())
        for start in range(0, len(images), BATCH):
            x = to_tagger_input(images[start:start + BATCH])
            b, s, features = self.net(x)
            ids = torch.stack([self.net.attributes[name](features[:, :k]).argmax(-1)
                               for name in ("shape", "colour", "size")], dim=-1).numpy()
            b = b[:, :k].numpy()
            pixels = x.mul(255).round().byte().permute(0, 2, 3, 1).numpy()
            centres.append(np.array([[colour_centroid(pixels[i], b[i, j], palette[ids[i, j, 1]])
                                      for j in range(k)] for i in range(len(b))]))
            boxes.append(b)
            scores.append(s[:, :k].numpy())
            attributes.append(ids)
        return Detections(*(np.concatenate(a) for a in (boxes, scores, attributes, centres)))

    @staticmethod
    def objects(d: Detections, i: int, threshold: float) -> list[int]:
        """Proposals of image i that are objects: score >= threshold, strongest first,
        none overlapping a stronger kept one by NMS_IOU or more."""
        kept: list[int] = []
        for j in np.flatnonzero(d.scores[i] >= threshold):
            if all(box_iou(d.boxes[i, j], d.boxes[i, m]) < NMS_IOU for m in kept):
                kept.append(int(j))
        return kept

    @staticmethod
    def scene(d: Detections, i: int, kept: list[int]) -> Scene:
        colours = list(COLOURS)
        objects = []
        for j in kept:
            shape, colour, size = d.attributes[i, j]
            x, y = d.centres[i, j]
            objects.append(ShapeObject(SHAPES[shape], colours[colour], SIZES[size],
                                       x=float(x), y=float(y), radius=SIZE_RADIUS[SIZES[size]]))
        return Scene(objects)

    def scenes(self, d: Detections, threshold: float | None = None) -> list[Scene]:
        t = self.threshold if threshold is None else threshold
        return [self.scene(d, i, self.objects(d, i, t)) for i in range(len(d.scores))]

    def read(self, images: np.ndarray) -> list[Scene]:
        return self.scenes(self.detect(images))

    def calibrate(self, images: np.ndarray, truth: list[Scene]) -> dict[str, float]:
        """Set the threshold that gets the number of objects right most often on
        `images` (real ones, with their true scenes); returns it and that accuracy."""
        d = self.detect(images)
        counts = np.array([len(s.objects) for s in truth])
        best = max(THRESHOLDS, key=lambda t: (
            np.mean([len(self.objects(d, i, t)) == counts[i] for i in range(len(counts))]),
            -abs(t - 0.5)))
        self.threshold = float(best)
        accuracy = np.mean([len(self.objects(d, i, best)) == counts[i]
                            for i in range(len(counts))])
        return {"threshold": self.threshold, "count_accuracy": float(accuracy)}


# ---------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompt:
    text: str
    imgid: int  # the image it describes
    attributes: tuple[str, str, str] | None = None  # a single object's (shape, colour, size)


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, 64, 64, 3)
    scenes: list[Scene]
    captions: list[tuple[str, ...]]
    imgids: list[int]

    @property
    def single_object(self) -> bool:
        return all(len(s.objects) == 1 for s in self.scenes)


def load_split(data: str | Path, split: str, limit: int | None = None) -> Split:
    data = Path(data)
    images = load_captions(data, split)[:limit]
    scenes = load_scenes(data)
    pixels = load_images(data, images, 64).permute(0, 2, 3, 1).numpy()
    return Split(pixels, [scenes[im.imgid] for im in images], [im.captions for im in images],
                 [im.imgid for im in images])


def select_prompts(split: Split, n: int, seed: int) -> list[Prompt]:
    """Up to n prompts from distinct images in a seeded order: for single-object scenes the
    first caption naming shape, colour and size; otherwise a seeded choice of caption."""
    rng = np.random.default_rng(seed)
    prompts = []
    for i in rng.permutation(len(split.imgids)):
        if split.single_object:
            o = split.scenes[i].objects[0]
            attributes = (o.shape, o.colour, o.size)
            text = next((c for c in split.captions[i] if names_every_attribute(c, attributes)),
                        None)
            if text is None:
                continue
            prompts.append(Prompt(text, split.imgids[i], attributes))
        else:
            prompts.append(Prompt(split.captions[i][rng.integers(len(split.captions[i]))],
                                  split.imgids[i]))
        if len(prompts) == n:
            break
    return prompts


def every_caption(split: Split) -> list[Prompt]:
    """Every caption of every image (the judge's validation on real images)."""
    out = []
    for i, captions in enumerate(split.captions):
        o = split.scenes[i].objects[0] if split.single_object else None
        for c in captions:
            attributes = (o.shape, o.colour, o.size) if o and names_every_attribute(
                c, (o.shape, o.colour, o.size)) else None
            out.append(Prompt(c, split.imgids[i], attributes))
    return out


# ---------------------------------------------------------------------------- scoring


def judge(reader: SceneReader, images: np.ndarray, prompts: list[Prompt], n: int,
          refused: set[int] = frozenset()) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of `images` (prompt-major, n per prompt) and whether each satisfies its
    prompt. Prompts at indices `refused` were not drawn: their images count as failures."""
    detections = reader.detect(images)
    scenes = reader.scenes(detections)
    keys = [(p, s) for p in range(len(prompts)) for s in range(n)]
    texts = {k: prompts[p].text for k, (p, _) in enumerate(keys)}
    truth = {k: scenes[k] for k in range(len(keys))}
    scores = semantic_scores(texts, truth)
    satisfied = np.array([parse_caption(texts[k]) is not None and
                          semantic_scores({0: texts[k]}, {0: truth[k]})["semantic_exactness"] == 1
                          and keys[k][0] not in refused for k in range(len(keys))])
    metrics = {"satisfied": float(satisfied.mean()),
               "coverage": float(scores["coverage"]),
               "images": len(keys), "prompts": len(prompts), "refused": len(refused)}
    single = [k for k, (p, _) in enumerate(keys) if prompts[p].attributes is not None]
    if single:
        metrics |= top_region_accuracy(reader, detections, prompts, keys, single, refused)
    return metrics, satisfied


def top_region_accuracy(reader: SceneReader, d: Detections, prompts: list[Prompt],
                        keys: list[tuple[int, int]], rows: list[int],
                        refused: set[int]) -> dict[str, float]:
    """Whether the most confident object of each single-object image has the prompt's
    shape, colour and size (each, and all three)."""
    colours = list(COLOURS)
    right = np.zeros((len(rows), 3), bool)
    for r, k in enumerate(rows):
        p = keys[k][0]
        if p in refused:
            continue
        shape, colour, size = prompts[p].attributes
        want = (SHAPES.index(shape), colours.index(colour), SIZES.index(size))
        right[r] = d.attributes[k, 0] == want
    return {"attribute_shape": float(right[:, 0].mean()),
            "attribute_colour": float(right[:, 1].mean()),
            "attribute_size": float(right[:, 2].mean()),
            "attribute_all": float(right.all(axis=1).mean())}


def draw(path: str, prompts: list[Prompt], n: int, seed: int, candidates: int | None
         ) -> tuple[np.ndarray, set[int], dict]:
    """uint8 images (len(prompts) * n, S, S, 3) of a generation bundle through its service
    pipeline; refused prompts get black images and are returned by index."""
    bundle = load_bundle(path)
    model = pipeline_for(bundle.manifest).from_bundle(bundle)
    options = None if candidates is None else SamplingOptions(candidates=candidates)
    refused, accepted = set(), []
    for i, p in enumerate(prompts):
        try:
            model.request(p.text, n, seed, options)
            accepted.append(i)
        except InvalidParameter as err:
            log.info("refused %r: %s", p.text, err)
            refused.add(i)
    kwargs = {} if options is None else {"options": options}
    started = time.perf_counter()
    drawn = model.generate([prompts[i].text for i in accepted], n, seed, **kwargs)
    seconds = time.perf_counter() - started
    side = drawn.shape[1] if len(drawn) else 64
    images = np.zeros((len(prompts) * n, side, side, 3), np.uint8)
    for row, i in enumerate(accepted):
        images[i * n:(i + 1) * n] = drawn[row * n:(row + 1) * n]
    return images, refused, {"architecture": bundle.manifest.architecture,
                             "generate_seconds": round(seconds, 1)}


def is_run(path: str) -> bool:
    """A training run directory (a dVAE's), not a bundle or 'real'."""
    return path != REAL and (Path(path) / "task.json").is_file()


@torch.no_grad()
def reconstruct(run_dir: str, images: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, 3) images through a dVAE run's hard codes and decoder."""
    dvae = load_dvae(run_dir)
    out = []
    for start in range(0, len(images), BATCH):
        x = torch.from_numpy(images[start:start + BATCH]).permute(0, 3, 1, 2).float() / 255
        size = dvae.config.image_size
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                                antialias=True, align_corners=False)
        recon = dvae.decode(dvae.encode(x))
        if recon.shape[-1] != images.shape[1]:
            recon = torch.nn.functional.interpolate(recon, size=images.shape[1:3],
                                                    mode="bilinear", align_corners=False)
        out.append(recon.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def eval_judge(args: argparse.Namespace) -> int:
    """`glimpse eval judge`: prints the metrics as JSON; --out writes them."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    reader = SceneReader.from_run(args.regions_run)
    calibration = None
    if args.threshold is None:
        val = load_split(args.calibrate_on or args.data, "val")
        calibration = reader.calibrate(val.images, val.scenes)
    else:
        reader.threshold = args.threshold
    split = load_split(args.data, args.split)
    n = args.samples_per_prompt
    info: dict = {}
    dvae_run = is_run(args.path)
    if args.path == REAL or dvae_run:
        prompts = every_caption(split)[:args.prompts * 5 if args.prompts else None]
        index = {imgid: i for i, imgid in enumerate(split.imgids)}
        images = split.images[[index[p.imgid] for p in prompts]]
        if dvae_run:
            images = reconstruct(args.path, images)
        n, refused = 1, set()
    else:
        prompts = select_prompts(split, args.prompts, args.seed)
        images, refused, info = draw(args.path, prompts, n, args.seed, args.candidates)
    metrics, _ = judge(reader, images, prompts, n, refused)
    name = args.path if args.path == REAL else "/".join(Path(args.path).parts[-2:])
    result = {"model": name, "data": str(args.data), "split": args.split,
              "kind": "single-object" if split.single_object else "scenes",
              "samples_per_prompt": n, "candidates": args.candidates, "seed": args.seed,
              "judge": {"regions_run": str(args.regions_run), "threshold": reader.threshold,
                        **({"calibration": calibration} if calibration else {})},
              **info, "metrics": metrics}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.grid:
        rows = min(args.grid_prompts, len(prompts))
        save_grid(images[:rows * n], n, rows, [p.text for p in prompts[:rows]], args.grid,
                  label_width=args.grid_label_width)
    if args.write_manifest and args.path != REAL and not dvae_run:
        key = f"judge_{Path(args.data).name}_c{args.candidates or 1}"
        record_metrics(args.path, {**metrics, "threshold": reader.threshold},
                       at=(args.split, key))
    print(json.dumps(result, indent=2))
    return 0
