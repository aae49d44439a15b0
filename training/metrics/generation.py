"""In-domain scores of text-to-image models on the single-object shapes world.

StackGAN (Zhang et al. 2017, Sec. 5) scores birds and flowers with an Inception
network fine-tuned on those domains; glimpse does the same with the attribute
tagger of `glimpse train encoder` (models/attributes.py), trained on real
shapes-world images to name the shape, colour and size of the object in each
grid cell. From it come

- attribute accuracy: does the image hold an object of the prompt's shape,
  colour and size (per attribute and all three);
- the Inception score (Salimans et al. 2016) over the 112 (shape, colour, size)
  classes, and the Frechet distance (Heusel et al. 2017) between tagger features
  of generated and real images, both computed by torchmetrics with the tagger as
  the feature network;
- diversity: mean pairwise distance between the features of one prompt's samples.

R-precision (AttnGAN, Xu et al. 2018, Sec. 4) ranks each image's prompt among
99 prompts of other classes by the joint embedding of `glimpse train text-encoder`
(F(v, t) = phi(v)^T psi(t), Reed et al. 2016, Eq. 2) and counts how often the
prompt comes first (R = 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

from models.attributes import AttributeTagger
from models.text_encoder import CharCnnRnn, JointImageEncoder, grid_features
from training.data.tokenizer import CharAlphabet
from training.data.world import COLOURS, SHAPES, SIZES, object_class
from training.runs import (
    embed_texts,
    load_joint_image_encoder,
    load_tagger,
    load_text_encoder,
    tagger_image_size,
)

TAGGER_SIZE = 64  # the default tagger's training resolution (runs/encoder)
ATTRIBUTES = ("shape", "colour", "size")
Attributes = tuple[str, str, str]  # (shape, colour, size)
R_PRECISION_CANDIDATES = 100  # the prompt and 99 mismatched ones


def to_tagger_input(images: np.ndarray | torch.Tensor, size: int = TAGGER_SIZE) -> torch.Tensor:
    """uint8 (N, S, S, 3) or float (N, 3, S, S) in [0, 1] -> float (N, 3, size, size) in [0, 1].

    Every image goes through uint8 and Pillow's bilinear resize, the path real
    images take in training (training.data.images.load_images), so generated and real
    images reach the tagger alike.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected a batch of images (N, S, S, 3) or (N, 3, S, S), "
                         f"got shape {images.shape}")
    if images.dtype != np.uint8:
        if images.shape[1] != 3:
            raise ValueError(f"float images must be (N, 3, S, S), got shape {images.shape}")
        images = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    elif images.shape[-1] != 3:
        raise ValueError(f"uint8 images must be (N, S, S, 3), got shape {images.shape}")
    if images.shape[1:3] != (size, size):
        images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                           for im in images])
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)


class TaggerFeatures(nn.Module):
    """FID's feature network: (N, 3, S, S) in [0, 1] at the tagger's size -> (N, 2D) tagger
    grid features."""

    def __init__(self, tagger: AttributeTagger) -> None:
        super().__init__()
        self.tagger = tagger
        self.num_features = 2 * tagger.config.encoder.out_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return grid_features(self.tagger.encoder, images)


def object_cell_log_probs(logits: dict[str, torch.Tensor]
                          ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-cell log-probabilities of each attribute given an object there, (B, L, K) without
    the "nothing here" class, and the probability that a cell holds an object (B, L)."""
    objectness = 1.0 - logits["shape"].softmax(-1)[..., 0]
    return ({name: logits[name][..., 1:].log_softmax(-1) for name in ATTRIBUTES}, objectness)


class TaggerClassLogits(nn.Module):
    """The Inception score's classifier: (N, 3, S, S) -> (N, 112) log-probabilities of the
    (shape, colour, size) class of the image's most object-like cell."""

    def __init__(self, tagger: AttributeTagger) -> None:
        super().__init__()
        self.tagger = tagger

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits, _ = self.tagger(images)
        log_p, objectness = object_cell_log_probs(logits)
        cell = objectness.argmax(1)  # (B,)
        rows = torch.arange(len(cell))
        shape, colour, size = (log_p[name][rows, cell] for name in ATTRIBUTES)  # (B, K_a)
        # The heads are read as independent: log p(s, c, z) = log p(s) + log p(c) + log p(z),
        # laid out in object_class order (shape-major, then colour, then size).
        joint = (shape[:, :, None, None] + colour[:, None, :, None] + size[:, None, None, :])
        return joint.flatten(1)  # (B, 112)


def _batches(x: torch.Tensor, batch_size: int):
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size]


class GenerationEvaluator:
    """Scores generated images in domain. Images are uint8 (N, S, S, 3) or float
    (N, 3, S, S) in [0, 1], at any S: they are resized to the tagger's `image_size` (64 px
    for runs/encoder; a tagger trained at 128 px judges StackGAN's Stage II at its own
    size) and, for R-precision, to the joint image encoder's `joint_size`."""

    def __init__(self, tagger: AttributeTagger, *, joint_image: JointImageEncoder | None = None,
                 text_encoder: CharCnnRnn | None = None, alphabet: CharAlphabet | None = None,
                 max_length: int = 64, batch_size: int = 256, image_size: int = TAGGER_SIZE,
                 joint_size: int = TAGGER_SIZE) -> None:
        self.image_size, self.joint_size = image_size, joint_size
        self.tagger = tagger.eval().requires_grad_(False)
        self.features_net = TaggerFeatures(self.tagger)
        self.class_net = TaggerClassLogits(self.tagger)
        self.joint_image = joint_image
        self.text_encoder = text_encoder
        self.alphabet = alphabet
        self.max_length = max_length
        self.batch_size = batch_size

    @classmethod
    def from_runs(cls, tagger_run: str | Path, text_encoder_run: str | Path | None = None
                  ) -> GenerationEvaluator:
        """The tagger of a `glimpse train encoder` run and, for R-precision, both sides of a
        `glimpse train text-encoder` run."""
        tagger, size = load_tagger(tagger_run), tagger_image_size(tagger_run)
        if text_encoder_run is None:
            return cls(tagger, image_size=size)
        text_encoder, alphabet, info = load_text_encoder(text_encoder_run)
        return cls(tagger, joint_image=load_joint_image_encoder(text_encoder_run),
                   text_encoder=text_encoder, alphabet=alphabet, max_length=info["max_length"],
                   image_size=size, joint_size=info["image_size"])

    def judged(self, images) -> torch.Tensor:
        """`images` as the tagger sees them: float (N, 3, image_size, image_size) in [0, 1]."""
        return to_tagger_input(images, self.image_size)

    @torch.no_grad()
    def _map(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(b) for b in _batches(images, self.batch_size)])

    @torch.no_grad()
    def attribute_accuracy(self, images, prompts_attributes: Sequence[Attributes]
                           ) -> dict[str, float]:
        """Share of images holding an object of the prompt's shape, colour, size, and all three.

        An image's objects are the cells the tagger reads as holding one, and always its
        most object-like cell (so an image with no confident object is still judged).
        """
        x = self.judged(images)
        if len(x) != len(prompts_attributes):
            raise ValueError(f"{len(x)} images but {len(prompts_attributes)} prompt attributes")
        hits = {name: [] for name in (*ATTRIBUTES, "all")}
        for start in range(0, len(x), self.batch_size):
            logits, _ = self.tagger(x[start:start + self.batch_size])
            log_p, objectness = object_cell_log_probs(logits)
            objects = objectness > 0.5
            objects[torch.arange(len(objects)), objectness.argmax(1)] = True  # (B, L)
            pred = {name: log_p[name].argmax(-1) for name in ATTRIBUTES}  # (B, L) class index
            want = _attribute_indices(prompts_attributes[start:start + self.batch_size])
            match = {name: (pred[name] == want[name][:, None]) & objects for name in ATTRIBUTES}
            for name in ATTRIBUTES:
                hits[name].append(match[name].any(1))
            hits["all"].append((match["shape"] & match["colour"] & match["size"]).any(1))
        return {name: float(torch.cat(v).float().mean()) for name, v in hits.items()}

    @torch.no_grad()
    def features(self, images) -> torch.Tensor:
        """Tagger features (N, 2D), as FID and diversity see them."""
        return self._map(self.features_net, self.judged(images))

    @torch.no_grad()
    def class_logits(self, images) -> torch.Tensor:
        """(N, 112) log-probabilities over object_class ids."""
        return self._map(self.class_net, self.judged(images))

    @torch.no_grad()
    def inception_score(self, images, splits: int = 10) -> tuple[float, float]:
        """Mean and standard deviation over `splits` splits, torchmetrics' InceptionScore."""
        metric = InceptionScore(feature=self.class_net, splits=splits)
        for b in _batches(self.judged(images), self.batch_size):
            metric.update(b)
        mean, std = metric.compute()
        return float(mean), float(std)

    @torch.no_grad()
    def fid(self, real, fake) -> float:
        """Frechet distance between tagger features of real and generated images
        (torchmetrics' FrechetInceptionDistance with the tagger as its network)."""
        metric = FrechetInceptionDistance(feature=self.features_net)
        for images, is_real in ((real, True), (fake, False)):
            for b in _batches(self.judged(images), self.batch_size):
                metric.update(b, real=is_real)
        return float(metric.compute())

    @torch.no_grad()
    def diversity(self, images, samples_per_prompt: int) -> float:
        """Mean pairwise L2 distance between unit-normalised features of the samples of one
        prompt (images prompt-major: the first n are prompt 0's), averaged over prompts."""
        feats = F.normalize(self.features(images), dim=1)
        if samples_per_prompt < 2 or len(feats) % samples_per_prompt:
            raise ValueError(f"diversity needs >= 2 samples per prompt and a whole number of "
                             f"prompts; got {len(feats)} images, n={samples_per_prompt}")
        groups = feats.view(-1, samples_per_prompt, feats.shape[1])  # (P, n, d)
        dists = torch.cdist(groups, groups)  # (P, n, n)
        pairs = samples_per_prompt * (samples_per_prompt - 1)
        return float((dists.sum((1, 2)) / pairs).mean())

    @torch.no_grad()
    def r_precision(self, images, prompts: Sequence[str], labels: Sequence[int],
                    pool_texts: Sequence[str], pool_labels: Sequence[int], *,
                    seed: int = 0) -> float:
        """Share of images whose prompt scores highest among itself and 99 texts of the pool
        from other classes (fewer when the pool has fewer). labels: object_class of each
        image's prompt."""
        if self.joint_image is None or self.text_encoder is None or self.alphabet is None:
            raise ValueError("R-precision needs a text-encoder run (from_runs(..., text_run))")
        x = to_tagger_input(images, self.joint_size)
        image_emb = self._map(self.joint_image, x)  # (N, E)
        prompt_emb = self._embed(list(prompts))  # (N, E)
        pool_emb = self._embed(list(pool_texts))  # (M, E)
        pool_labels_t = torch.as_tensor(list(pool_labels))
        rng = np.random.default_rng(seed)
        hits = 0
        for i, label in enumerate(labels):
            others = torch.nonzero(pool_labels_t != int(label)).flatten().numpy()
            take = rng.choice(others, size=min(len(others), R_PRECISION_CANDIDATES - 1),
                              replace=False)
            true_score = image_emb[i] @ prompt_emb[i]
            wrong_scores = pool_emb[torch.from_numpy(take)] @ image_emb[i]
            hits += bool((wrong_scores < true_score).all())  # a tie counts against the model
        return hits / len(labels)

    def _embed(self, texts: list[str]) -> torch.Tensor:
        return embed_texts(self.text_encoder, self.alphabet, texts, self.max_length,
                           on_unknown="replace")


def _attribute_indices(attributes: Sequence[Attributes]) -> dict[str, torch.Tensor]:
    """Head class indices (without the "nothing here" class) of (shape, colour, size) triples."""
    colours = list(COLOURS)
    return {"shape": torch.tensor([SHAPES.index(a[0]) for a in attributes]),
            "colour": torch.tensor([colours.index(a[1]) for a in attributes]),
            "size": torch.tensor([SIZES.index(a[2]) for a in attributes])}


def attributes_class(attributes: Attributes) -> int:
    return object_class(*attributes)

