"""Quality floors of every committed bundle, on freshly generated scenes and clips.

Each model is taken by name at the version the service serves (tests/service/committed.py)
and run through the service's own pipeline, in batches, on a small shapes world made here
with a seed none of them was trained or evaluated on. The floors below sit just under
what the committed bundles reach in exactly this setting (the measured figure is in the
comment beside each); raise them when a retrained model does better.

Models that are known to be poor today still get floors that a worse regression fails:
- caption-nic and caption-mrnn see the image since their version 3 (BatchNorm-
  standardised CNN(I)); NIC (version 10) is below the attention captioners, the m-RNN
  (version 10, the image at every step) close to them. Their floors sit under today's
  figures and tests/service/test_committed_batches.py gives each of their batched answers
  its solo answer.
- gan-int-cls draws the prompt's shape on seen combinations (version 11: 0.81 of test
  prompts by the in-domain judge), at some cost in this check's colour figure against
  version 4, which drew blobs, and gets held-out combinations' shapes and sizes wrong
  (their colours mostly right), which this check's prompts include; StackGAN draws
  the prompt's colour and poor shapes.
  Their judge here reads nothing but the images and the world's palette (the in-domain judge of
  training/evaluate/generation.py needs a tagger run that is not committed): among the
  eight images drawn with one noise vector for the eight colour words of a prompt, the
  one drawn for "red" must be the reddest, and so on; a "large" prompt must give more
  foreground than the same "small" one; two seeds must give two images. A generator
  deaf to the prompt draws eight equal images and scores 0 on colour and size, one
  that draws random colours 1/8 on colour; one deaf to the noise fails the seed check.
  DALL-E is held to the same checks at its manifest's sampling settings (four reranked
  candidates per image); its draws differ per prompt, so its colour check compares eight
  independent images rather than one noise vector's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from committed import served_bundle, served_bundles

from service.pipelines import pipeline_for
from service.pipelines.activity import ActivityModel
from service.pipelines.alignment import AlignmentModel
from service.pipelines.caption import CaptionModel
from service.pipelines.generation import TextToImage
from service.pipelines.retrieval import RetrievalModel
from service.pipelines.video_caption import VideoCaptionModel
from service.pipelines.vqa import VqaModel
from training.data.clips import generate_clips, load_clips
from training.data.language import parse_caption
from training.data.readers import load_captions, load_vqa_split
from training.data.shapes import generate_shapes_world, load_scenes
from training.data.world import COLOURS, SHAPES, SIZES
from training.evaluate.activity import pair_accuracy, split_probs
from training.evaluate.caption import caption_split
from training.evaluate.video_caption import describe_split
from training.evaluate.vqa import answer_split
from training.index import embed_split
from training.metrics.alignment import IOU_THRESHOLD, box_iou, phrase_heads, scene_objects
from training.metrics.captions import caption_metrics
from training.metrics.cli import evaluate_caption_results
from training.metrics.retrieval import retrieval_metrics
from training.metrics.semantic import clip_semantic_scores, semantic_scores
from training.metrics.vqa import vqa_accuracy

WORLD_SEED = 41  # not the seed (0) of the world the committed models were made on
NUM_IMAGES = 100
BATCH_SIZE = 25  # requests per pipeline batch, so that a batch mix-up shows

# ---------------------------------------------------------------------------- floors
# model -> floor  # figure measured with the committed bundles in this setting

CAPTION_EXACTNESS = {  # share of captions entirely true of their scene
    "caption-updown": 0.95,  # 0.99 (version 2: 0.88)
    "caption-sat": 0.90,  # 0.95 (version 6: 0.87; version 4: 0.85; version 2: 0.79)
    "caption-nic": 0.69,  # 0.75 (version 8: 0.67; version 2, image-blind: 0.01)
    "caption-mrnn": 0.82,  # 0.88 (version 8: 0.62; version 6: 0.43; version 2, blind: 0.00)
}
CAPTION_GRAMMATICAL = {  # share of captions the shapes world's grammar parses
    "caption-updown": 0.95,  # 1.00
    "caption-sat": 0.95,  # 1.00
    "caption-nic": 0.95,  # 1.00
    "caption-mrnn": 0.95,  # 1.00
}
CAPTION_BLEU4 = {
    "caption-updown": 0.57,  # 0.622
    "caption-sat": 0.59,  # 0.636 (version 6: 0.631; version 4: 0.628; version 2: 0.577)
    "caption-nic": 0.53,  # 0.592
    "caption-mrnn": 0.57,  # 0.620 (version 8: 0.554; version 6: 0.469)
}
VQA_ACCURACY = {"vqa-updown": 95.0}  # 99.4 here (percent); 98.9 on the 15k world's test split
ALIGNMENT_GROUNDING = {"align-brnn": 0.95}  # 0.991: noun phrases whose box is on their object
RETRIEVAL_R1 = {"retrieval-vse": {"i2t_r1": 88.0, "t2i_r1": 83.0}}  # 94.0, 88.8 (percent)
GENERATION_COLOUR = {  # colour_follows_prompt: chance 1/8, a prompt-deaf generator 0
    "dalle": 0.75,  # 0.812 (version 1: 0.719; its own draws per prompt: no shared noise)
    "gan-int-cls": 0.78,  # 0.812 (version 9: 0.821; version 4, blobs: 0.911)
    "stackgan": 0.74,  # 0.795 (version 10: 0.799; version 3, Zhang et al.'s recipe: 0.379)
}
# Share of (colour, shape, noise) whose "large" image has more foreground than its "small"
# one (a prompt-deaf generator: 0).
GENERATION_SIZE = {
    "dalle": 0.88,  # 0.946 (version 1: 0.929)
    "gan-int-cls": 0.78,  # 0.848 (version 9: 0.839; version 4, blobs of the right size: 0.982)
    "stackgan": 0.82,  # 0.884 (version 10: 0.777; version 3: 0.714, with colour 0.379)
}
# Least mean |difference| (levels) between the two images of one prompt (deaf to the
# noise: 0); measured 15.9 (gan-int-cls; version 9: 8.1), 4.5 (stackgan; version 10: 3.9)
# and 3.5 (dalle; version 1: 10.5).
GENERATION_SEED_DIFFERENCE = 3.0

# Activity recognition on fresh clips (NUM_CLIPS, seed WORLD_SEED): top-1 accuracy of the
# fused distribution and of each stream, and the pair accuracy on the activities a single
# frame cannot tell apart (left / right, up / down, grow / shrink, appear / vanish; a
# single-frame model sits at 0.5 there).
ACTIVITY_ACCURACY = {"activity-lrcn": {"fused": 0.95, "rgb": 0.93, "motion": 0.72}}
# 0.982, 0.964, 0.791
ACTIVITY_PAIRS = {"activity-lrcn": 0.95}  # 1.000
# Video description on the same clips at the bundle's beam (5): far from the 0.85 the
# describer is meant to reach (docs/results.md), but well above an image-blind one (~0.005).
VIDEO_CAPTION = {"video-caption-lrcn": {"semantic_exactness": 0.38, "coverage": 0.52,
                                        "cider_d": 2.3}}  # 0.418, 0.568, 2.555
NUM_CLIPS = 110

# A pixel is foreground when it lies this far (RGB distance) from its image's median colour.
FOREGROUND_DISTANCE = 60.0


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fresh_clips")
    generate_clips(out, {"test": NUM_CLIPS}, frames=16, size=64, seed=WORLD_SEED, workers=1,
                   progress=False)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fresh_world")
    generate_shapes_world(out, {"test": NUM_IMAGES}, seed=WORLD_SEED, workers=1, progress=False)
    return out


def served(name: str):
    """The pipeline the service runs for model `name`."""
    bundle = served_bundle(name)
    return pipeline_for(bundle.manifest).from_bundle(bundle, device="cpu")


def test_every_committed_model_has_floors() -> None:
    floored = (set(CAPTION_BLEU4) | set(VQA_ACCURACY) | set(ALIGNMENT_GROUNDING)
               | set(RETRIEVAL_R1) | set(GENERATION_COLOUR) | set(ACTIVITY_ACCURACY)
               | set(VIDEO_CAPTION))
    assert floored == set(served_bundles())
    assert set(CAPTION_EXACTNESS) == set(CAPTION_GRAMMATICAL) == set(CAPTION_BLEU4)
    assert set(GENERATION_SIZE) == set(GENERATION_COLOUR)


@pytest.mark.parametrize("name", sorted(CAPTION_BLEU4))
def test_captioner_floor(name: str, world: Path) -> None:
    model: CaptionModel = served(name)
    captions, _ = caption_split(model, world, "test", beam_size=model.decoding.beam_size,
                                batch_size=BATCH_SIZE, progress=False)
    exactness = semantic_scores(captions, load_scenes(world))["semantic_exactness"]
    grammatical = np.mean([parse_caption(text) is not None for text in captions.values()])
    bleu4 = evaluate_caption_results(captions, world, "test", meteor=False)["bleu_4"]
    figures = f"{name}: exactness {exactness:.3f}, grammatical {grammatical:.3f}, " \
              f"BLEU-4 {bleu4:.3f}"
    assert exactness >= CAPTION_EXACTNESS[name], figures
    assert grammatical >= CAPTION_GRAMMATICAL[name], figures
    assert bleu4 >= CAPTION_BLEU4[name], figures


def test_vqa_floor(world: Path) -> None:
    (name, floor), = VQA_ACCURACY.items()
    model: VqaModel = served(name)
    questions = load_vqa_split(world, "test")
    answers, refused, _ = answer_split(model, world, questions, split="test",
                                       batch_size=BATCH_SIZE, progress=False)
    accuracy = vqa_accuracy(answers, {q.question_id: q for q in questions})
    assert refused == 0
    assert accuracy["overall"] >= floor, f"{name}: {accuracy['overall']:.1f}, per type " \
                                         f"{accuracy['per_question_type']}"


def test_alignment_puts_noun_phrases_on_their_objects(world: Path) -> None:
    """Each reference caption's noun phrases: the box of the segment holding the head noun,
    as /v1/alignments answers it, must overlap an object the phrase describes."""
    (name, floor), = ALIGNMENT_GROUNDING.items()
    model: AlignmentModel = served(name)
    images = load_captions(world, "test")
    scenes, object_boxes = scene_objects(world, [im.imgid for im in images])
    requests = [(k, model.request(world / im.path, caption))
                for k, im in enumerate(images) for caption in im.captions[:2]]
    grounded, phrases = 0, 0
    for start in range(0, len(requests), BATCH_SIZE):
        chunk = requests[start:start + BATCH_SIZE]
        for (k, request), result in zip(chunk, model.run_batch([r for _, r in chunk]),
                                        strict=True):
            width, height = request.image_size
            for head, objects in phrase_heads(result.words, " ".join(result.words), scenes[k]):
                segment = next(s for s in result.segments if s.start <= head < s.end)
                box = np.array(segment.box) / [width, height, width, height]
                phrases += 1
                grounded += bool(box_iou(box, object_boxes[k])[objects].max() >= IOU_THRESHOLD)
    assert phrases > 2 * NUM_IMAGES  # the captions' phrases were read
    assert grounded / phrases >= floor, f"{name}: {grounded}/{phrases} phrases grounded"


def test_retrieval_floor(world: Path) -> None:
    (name, floors), = RETRIEVAL_R1.items()
    model: RetrievalModel = served(name)
    images, image_emb, sentence_emb = embed_split(model, world, "test", batch_size=BATCH_SIZE,
                                                  progress=False)
    image_of_sentence = np.array([i for i, im in enumerate(images) for _ in im.captions])
    recall = retrieval_metrics(image_emb @ sentence_emb.T, image_of_sentence)
    for key, floor in floors.items():
        assert recall[key] >= floor, f"{name}: {recall}"


@pytest.mark.parametrize("name", sorted(ACTIVITY_ACCURACY))
def test_activity_floor(name: str, clips: Path) -> None:
    model: ActivityModel = served(name)
    probs, streams, labels, _ = split_probs(model, clips, "test", batch_size=BATCH_SIZE,
                                            progress=False)
    accuracy = {"fused": float((probs.argmax(1) == labels).mean())}
    accuracy |= {k: float((p.argmax(1) == labels).mean()) for k, p in streams.items()}
    pairs = pair_accuracy(probs, labels, list(model.classes))
    figures = f"{name}: accuracy {accuracy}, pairs {pairs}"
    for key, floor in ACTIVITY_ACCURACY[name].items():
        assert accuracy[key] >= floor, figures
    assert pairs["mean"] >= ACTIVITY_PAIRS[name], figures


@pytest.mark.parametrize("name", sorted(VIDEO_CAPTION))
def test_video_caption_floor(name: str, clips: Path) -> None:
    model: VideoCaptionModel = served(name)
    descriptions, references, _ = describe_split(model, clips, "test",
                                                 beam_size=model.decoding.beam_size,
                                                 batch_size=BATCH_SIZE, progress=False)
    truth = load_clips(clips)
    figures = clip_semantic_scores(descriptions, {k: truth[k] for k in descriptions})
    figures = {"semantic_exactness": figures["semantic_exactness"],
               "coverage": figures["coverage"],
               "cider_d": caption_metrics(descriptions, references, meteor=False)["cider_d"]}
    for key, floor in VIDEO_CAPTION[name].items():
        assert figures[key] >= floor, f"{name}: {figures}"


# ---------------------------------------------------------------------------- generation


# Every (size, colour, shape), colour-major, so the eight colour words of one (size, shape)
# form a group of prompts drawn with the same noise.
PROMPTS = [(size, colour, shape) for colour in COLOURS for shape in SHAPES for size in SIZES]
SAMPLES = 2  # images per prompt: every prompt is drawn with the same two noise vectors


def object_pixels(images: np.ndarray, share: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (n, P, 3) of each image and the mask (n, P) of its `share` of pixels farthest
    from its median colour: the object, whatever its size, over the textured background."""
    pixels = images.reshape(len(images), -1, 3).astype(np.float32)
    away = np.linalg.norm(pixels - np.median(pixels, axis=1, keepdims=True), axis=-1)
    return pixels, away >= np.quantile(away, 1 - share, axis=1, keepdims=True)


def colour_distances(images: np.ndarray) -> np.ndarray:
    """(n, colours): mean RGB distance of each image's object pixels to each palette colour."""
    pixels, mask = object_pixels(images)
    palette = np.array(list(COLOURS.values()), np.float32)
    distance = np.linalg.norm(pixels[:, :, None] - palette, axis=-1)  # (n, P, colours)
    return (distance * mask[..., None]).sum(1) / mask.sum(1)[:, None]


def colour_follows_prompt(images: np.ndarray) -> float:
    """Share of (colour c, size, shape, noise) whose image, among the eight drawn with that
    noise for the eight colour words, is the one nearest to palette colour c; a tie is a
    miss. Chance for images of random colours: 1/8; a generator deaf to the prompt: 0."""
    distance = colour_distances(images).reshape(len(COLOURS), -1, len(COLOURS))
    hits = []
    for c in range(len(COLOURS)):
        to_c = distance[:, :, c]  # (colour word, group): distance of each image to colour c
        nearest = to_c.min(0)
        alone = (to_c == nearest).sum(0) == 1
        hits.append((to_c[c] == nearest) & alone)
    return float(np.mean(hits))


def foreground_share(images: np.ndarray) -> np.ndarray:
    """Share of each image's pixels farther than FOREGROUND_DISTANCE from its median colour."""
    pixels = images.reshape(len(images), -1, 3).astype(np.float32)
    median = np.median(pixels, axis=1, keepdims=True)
    return (np.linalg.norm(pixels - median, axis=-1) > FOREGROUND_DISTANCE).mean(-1)


@pytest.mark.parametrize("name", sorted(GENERATION_COLOUR))
def test_generated_images_follow_the_prompt_and_the_seed(name: str) -> None:
    model: TextToImage = served(name)
    prompts = [f"a {size} {colour} {shape}" for size, colour, shape in PROMPTS]
    images = model.generate(prompts, n=SAMPLES, seed=WORLD_SEED)
    assert images.shape[0] == len(prompts) * SAMPLES
    colour = colour_follows_prompt(images)
    # PROMPTS lists "small" then "large" of each (colour, shape): compare them noise by noise.
    share = foreground_share(images).reshape(-1, len(SIZES), SAMPLES)
    size = float(np.mean(share[:, SIZES.index("large")] > share[:, SIZES.index("small")]))
    per_prompt = images.reshape(len(prompts), SAMPLES, -1).astype(np.float32)
    seed_difference = float(np.abs(per_prompt[:, 0] - per_prompt[:, 1]).mean(-1).min())
    figures = f"{name}: colour {colour:.3f}, size {size:.3f}, seeds {seed_difference:.1f}"
    assert colour >= GENERATION_COLOUR[name], figures
    assert size >= GENERATION_SIZE[name], figures
    assert seed_difference >= GENERATION_SEED_DIFFERENCE, figures
