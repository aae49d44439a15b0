import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import training.evaluate.generation as eval_generation
from models.attributes import AttributeConfig, AttributeTagger
from models.encoder import EncoderConfig
from models.text_encoder import JointEmbedding, JointImageConfig, TextEncoderConfig
from training.checkpoint import save_checkpoint
from training.cli import main
from training.data.language import parse_caption
from training.data.shapes import generate_shapes_world
from training.data.tokenizer import CharAlphabet
from training.data.world import COLOURS, SHAPES, SIZES, object_class
from training.metrics.generation import GenerationEvaluator, to_tagger_input

_spec = importlib.util.spec_from_file_location(
    "tiny_generation", Path(__file__).parents[1] / "service" / "tiny_generation.py")
tiny_generation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_generation)

TINY_ENCODER = EncoderConfig(out_dim=8, channels=(4, 8, 8))


def _key(image: torch.Tensor) -> str:
    return hashlib.sha1((image * 255).round().byte().numpy().tobytes()).hexdigest()


def _one_hot_logits(index: torch.Tensor, classes: int) -> torch.Tensor:
    return nn.functional.one_hot(index, classes).float() * 20.0


class OracleTagger(nn.Module):
    """Knows each world image's object: names it in cell 0, every other cell empty.
    Its features come from a tiny random encoder."""

    def __init__(self, truth: dict[str, tuple[str, str, str]]) -> None:
        super().__init__()
        self.config = AttributeConfig(encoder=TINY_ENCODER)
        self.encoder = AttributeTagger(self.config).encoder
        self.truth = truth

    def forward(self, images, targets=None):
        cells = 64
        index = {"shape": [], "colour": [], "size": []}
        for image in images:
            shape, colour, size = self.truth.get(_key(image), ("circle", "red", "small"))
            index["shape"].append(SHAPES.index(shape) + 1)
            index["colour"].append(list(COLOURS).index(colour) + 1)
            index["size"].append(SIZES.index(size) + 1)
        logits = {}
        for name, k in (("shape", 7), ("colour", 8), ("size", 2)):
            cell0 = _one_hot_logits(torch.tensor(index[name]), k + 1)  # (B, K+1)
            empty = _one_hot_logits(torch.zeros(len(images), cells - 1, dtype=torch.long), k + 1)
            logits[name] = torch.cat([cell0[:, None], empty], 1)
        return logits, None


class OracleJointImage(nn.Module):
    """phi(v): the one-hot class of the image's object."""

    def __init__(self, truth) -> None:
        super().__init__()
        self.truth = truth

    def forward(self, images):
        labels = [object_class(*self.truth[_key(im)]) for im in images]
        return nn.functional.one_hot(torch.tensor(labels), 112).float()


class OracleText(nn.Module):
    """psi(t): the one-hot class the caption names (parsed from its characters)."""

    def __init__(self, alphabet: CharAlphabet) -> None:
        super().__init__()
        self.alphabet = alphabet
        self.config = TextEncoderConfig()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, chars):
        out = torch.zeros(len(chars), 112)
        for i, row in enumerate(chars.tolist()):
            phrase = parse_caption(self.alphabet.decode(row)).clauses[0].subject
            out[i, object_class(phrase.shape, phrase.colour, phrase.size)] = 1.0
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "t2i"
    generate_shapes_world(out, {"train": 2, "val": 12, "test": 40}, workers=1, progress=False,
                          max_objects=1)
    return out


@pytest.fixture(scope="module")
def split(world):
    return eval_generation.load_split_images(world, "test")


@pytest.fixture(scope="module")
def oracle(split) -> GenerationEvaluator:
    truth = {_key(im): a for im, a in zip(to_tagger_input(split.pixels), split.attributes,
                                          strict=True)}
    torch.manual_seed(0)
    alphabet = CharAlphabet()
    return GenerationEvaluator(OracleTagger(truth), joint_image=OracleJointImage(truth),
                               text_encoder=OracleText(alphabet), alphabet=alphabet)


def test_tagger_input_takes_uint8_nhwc_or_float_nchw_at_any_size():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    x = to_tagger_input(pixels)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    torch.testing.assert_close(to_tagger_input(x), x)
    big = np.repeat(np.repeat(pixels, 2, axis=1), 2, axis=2)  # 128 px
    assert to_tagger_input(big).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError):
        to_tagger_input(pixels[0])


def test_a_tagger_trained_at_128_px_sees_images_at_128_px(split):
    seen = []

    class SizeRecorder(OracleTagger):
        def forward(self, images, targets=None):
            seen.append(images.shape[-1])
            return super().forward(images, targets)

    evaluator = GenerationEvaluator(SizeRecorder({}), image_size=128)
    evaluator.attribute_accuracy(split.pixels[:2], split.attributes[:2])  # 64 px in
    assert seen == [128]
    assert evaluator.judged(split.pixels[:2]).shape == (2, 3, 128, 128)
    assert GenerationEvaluator(SizeRecorder({})).judged(split.pixels[:2]).shape[-1] == 64


def test_real_images_hold_their_own_attributes_and_not_shuffled_ones(oracle, split):
    own = oracle.attribute_accuracy(split.pixels, split.attributes)
    assert own == {"shape": 1.0, "colour": 1.0, "size": 1.0, "all": 1.0}
    shuffled = split.attributes[1:] + split.attributes[:1]
    expected = np.mean([a == b for a, b in zip(split.attributes, shuffled, strict=True)])
    assert oracle.attribute_accuracy(split.pixels, shuffled)["all"] == pytest.approx(expected)
    assert expected < 0.2


def test_inception_score_is_the_exponentiated_class_entropy_for_confident_labels(oracle, split):
    labels = [object_class(*a) for a in split.attributes]
    assert oracle.class_logits(split.pixels).argmax(1).tolist() == labels
    p = np.bincount(labels) / len(labels)
    entropy = -(p[p > 0] * np.log(p[p > 0])).sum()
    mean, _ = oracle.inception_score(split.pixels, splits=1)
    assert mean == pytest.approx(np.exp(entropy), rel=1e-3)
    one_class = np.repeat(split.pixels[:1], 10, axis=0)
    assert oracle.inception_score(one_class, splits=1)[0] == pytest.approx(1.0, abs=1e-3)


def test_fid_of_real_against_real_is_zero_and_against_noise_is_large(oracle, split):
    assert oracle.fid(split.pixels, split.pixels) == pytest.approx(0.0, abs=1e-4)
    noise = np.random.default_rng(1).integers(0, 256, split.pixels.shape, dtype=np.uint8)
    halves = oracle.fid(split.pixels[:20], split.pixels[20:])
    assert oracle.fid(split.pixels, noise) > 3 * halves > 0


def test_r_precision_ranks_own_prompts_first_and_shuffled_ones_rarely(oracle, split):
    prompts = eval_generation.select_prompts(split, 40, seed=0)
    by_id = dict(zip(split.imgids, range(len(split.imgids)), strict=True))
    images = split.pixels[[by_id[p.imgid] for p in prompts]]
    labels = [object_class(*p.attributes) for p in prompts]
    pool, pool_labels = [p.text for p in prompts], labels
    assert oracle.r_precision(images, [p.text for p in prompts], labels, pool, pool_labels) == 1.0
    rolled = [p.text for p in prompts[1:] + prompts[:1]]
    rolled_labels = labels[1:] + labels[:1]
    assert oracle.r_precision(images, rolled, rolled_labels, pool, pool_labels) < 0.2


def test_diversity_is_zero_for_copies_and_positive_for_distinct_samples(oracle, split):
    copies = np.repeat(split.pixels[:3], 4, axis=0)
    assert oracle.diversity(copies, 4) == pytest.approx(0.0, abs=1e-4)
    assert oracle.diversity(split.pixels[:12], 4) > 0.01
    with pytest.raises(ValueError):
        oracle.diversity(split.pixels[:10], 4)


def test_prompts_name_the_shape_colour_and_size_of_their_image(split):
    prompts = eval_generation.select_prompts(split, 10, seed=3)
    assert len(prompts) == 10 and len({p.imgid for p in prompts}) == 10
    for p in prompts:
        phrase = parse_caption(p.text).clauses[0].subject
        assert (phrase.shape, phrase.colour, phrase.size) == p.attributes


def _tiny_runs(root: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    tagger_cfg = AttributeConfig(encoder=TINY_ENCODER)
    tagger = AttributeTagger(tagger_cfg)
    save_checkpoint(root / "enc" / "checkpoints" / "best", model=tagger,
                    config={"model": {"task": "attributes", "attributes": tagger_cfg.to_dict()}})
    text_cfg = TextEncoderConfig(max_length=48, char_dim=4, conv_channels=(4,), kernel_sizes=(3,),
                                 pool_sizes=(2,), rnn_size=4, embed_dim=4)
    image_cfg = JointImageConfig(encoder=TINY_ENCODER, embed_dim=4)
    joint = JointEmbedding(text_cfg, image_cfg)
    joint.image.encoder.load_state_dict(tagger.encoder.state_dict())
    save_checkpoint(root / "text" / "checkpoints" / "best", model=joint, config={"model": {
        "task": "text-encoder", "text": text_cfg.to_dict(), "image": image_cfg.to_dict(),
        "alphabet": CharAlphabet().to_dict(), "max_length": 48, "embed_dim": 4}})
    return root / "enc", root / "text"


class NoiseModel:
    """Stands in for service.pipelines.generation.GenerationModel."""

    def generate(self, prompts: list[str], n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (len(prompts) * n, 128, 128, 3), dtype=np.uint8)


@pytest.mark.slow
def test_eval_generation_cli_scores_real_images_above_a_noise_generator(world, tmp_path,
                                                                        monkeypatch, capsys):
    tagger, text = _tiny_runs(tmp_path)
    common = ["--data", str(world), "--split", "test", "--prompts", "6",
              "--samples-per-prompt", "3", "--tagger", str(tagger), "--text-encoder", str(text)]
    assert main(["eval", "generation", "real", *common, "--out", str(tmp_path / "real.json"),
                 "--grid", str(tmp_path / "grid.png"), "--grid-prompts", "2"]) == 0
    real = json.loads((tmp_path / "real.json").read_text())
    assert real["prompts"] == 6 and real["markdown"].startswith("| real | test |")
    assert Image.open(tmp_path / "grid.png").size == (200 + 3 * 64, 2 * 64)

    monkeypatch.setattr(eval_generation, "generator_for", lambda path, split: NoiseModel())
    bundle = tiny_generation.tiny_generation_bundle(tmp_path / "repo", name="t2i")
    assert main(["eval", "generation", str(bundle), *common,
                 "--out", str(tmp_path / "noise.json"), "--write-manifest"]) == 0
    noise = json.loads((tmp_path / "noise.json").read_text())
    assert noise["model"] == "t2i/1"
    recorded = json.loads((bundle / "manifest.json").read_text())["metrics"]["test"]
    assert recorded["fid"] == noise["metrics"]["fid"] and recorded["prompts"] == 6
    assert noise["metrics"]["fid"] > real["metrics"]["fid"]
    assert set(noise["metrics"]) >= {"attribute_all", "inception_score", "r_precision",
                                     "diversity"}
    assert "| t2i/1 | test |" in capsys.readouterr().out


def test_eval_generation_cli_scores_the_val_split_for_choosing_checkpoints(world, tmp_path):
    tagger, text = _tiny_runs(tmp_path)
    assert main(["eval", "generation", "real", "--data", str(world), "--split", "val",
                 "--prompts", "4", "--samples-per-prompt", "2", "--tagger", str(tagger),
                 "--text-encoder", str(text), "--out", str(tmp_path / "val.json")]) == 0
    result = json.loads((tmp_path / "val.json").read_text())
    assert result["split"] == "val" and result["markdown"].startswith("| real | val |")
    assert result["prompts"] == 4 and result["noise"] == "per-prompt"


class SeedEcho:
    """A generator whose every image is filled with the seed it was drawn with (mod 256)."""

    def generate(self, prompts: list[str], n: int, seed: int) -> np.ndarray:
        return np.full((len(prompts) * n, 2, 2, 3), seed % 256, np.uint8)


def test_each_prompt_is_drawn_with_its_own_seed_unless_noise_is_shared():
    texts = [f"prompt {i}" for i in range(50)]
    own = eval_generation.draw_samples(SeedEcho(), texts, 3, seed=7)
    seeds = own[::3, 0, 0, 0]
    assert own.shape == (150, 2, 2, 3) and (own.reshape(50, 3, -1) == seeds[:, None, None]).all()
    assert len(set(eval_generation.prompt_seeds(7, 50))) == 50
    assert len(set(seeds.tolist())) > 25  # distinct seeds, not one seed for all
    assert (eval_generation.draw_samples(SeedEcho(), texts, 3, seed=7) == own).all()
    assert (eval_generation.draw_samples(SeedEcho(), texts, 3, seed=8) != own).any()
    shared = eval_generation.draw_samples(SeedEcho(), texts, 3, seed=7, shared_noise=True)
    assert (shared == 7).all()
