"""From a generated shapes world to a served DALL-E bundle: `glimpse train dvae`, then
`glimpse train dalle` on its codes, then `glimpse export` and the service's pipeline;
and `glimpse eval judge` of real images and of that bundle's samples."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.attributes import AttributeConfig, AttributeTagger
from models.encoder import EncoderConfig, ImageEncoder
from service.bundle import load_bundle
from service.pipelines.dalle import DalleModel
from training.checkpoint import save_checkpoint
from training.cli import main as glimpse
from training.data.images import load_images
from training.data.readers import load_captions
from training.data.shapes import generate_shapes_world
from training.evaluate.judge import load_split, reconstruct
from training.runs import load_dvae, pretrained_encoder
from training.tasks.dvae import DVAETaskConfig, FeatureMatch, psnr

ROOT = Path(__file__).resolve().parents[3]
TINY_DVAE = str(ROOT / "configs" / "tiny" / "dvae.json")
TINY_DALLE = str(ROOT / "configs" / "tiny" / "dalle.json")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dalle") / "world"
    generate_shapes_world(out, {"train": 60, "val": 16, "test": 12, "novel": 12}, size=64,
                          seed=3, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def dvae_run(world, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("dalle") / "dvae"
    assert glimpse(["train", "dvae", "--data", str(world), "--out", str(run),
                    "--config", TINY_DVAE]) == 0
    return run


@pytest.fixture(scope="module")
def dalle_run(world, dvae_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("dalle") / "dalle"
    assert glimpse(["train", "dalle", "--data", str(world), "--dvae-run", str(dvae_run),
                    "--out", str(run), "--config", TINY_DALLE]) == 0
    return run


def mean_image_psnr(world: Path, size: int) -> float:
    """PSNR on the test split of always answering the mean training image."""
    train = load_images(world, load_captions(world, "train"), size).float() / 255
    test = load_images(world, load_captions(world, "test"), size).float() / 255
    return float(psnr(train.mean(0, keepdim=True).expand_as(test), test).mean())


def test_dvae_reconstructs_better_than_the_mean_image(dvae_run, world):
    summary = json.loads((dvae_run / "summary.json").read_text())
    assert summary["steps"] == 6 * math.ceil(60 / 8)  # 6 epochs of 60 images, batch 8
    assert {"psnr", "perplexity", "dead_codes"} <= set(summary["history"][-1])
    final = summary["final"]
    assert set(final) == {"world/test", "world/novel"}
    baseline = mean_image_psnr(world, 16)
    assert final["world/test"]["psnr"] > baseline + 0.5, (final, baseline)
    assert final["world/test"]["perplexity"] > 1.0  # more than one code in use
    assert (dvae_run / "samples" / "reconstructions.png").is_file()


def tiny_encoder_run(root: Path) -> Path:
    """A `glimpse train encoder` checkpoint of a random tiny encoder (stride 8)."""
    torch.manual_seed(0)
    cfg = AttributeConfig(encoder={"out_dim": 16, "channels": [8, 16, 16]})
    save_checkpoint(root / "encoder" / "checkpoints" / "best", model=AttributeTagger(cfg),
                    config={"model": {"task": "attributes", "attributes": cfg.to_dict()}})
    return root / "encoder"


@pytest.mark.parametrize("head_channels", [8, 0])  # 0: one layer, started by k-means
def test_dvae_reads_its_codes_from_a_frozen_pretrained_encoder(world, tmp_path, head_channels):
    encoder = tiny_encoder_run(tmp_path)
    config = json.loads(Path(TINY_DVAE).read_text())
    config |= {"image_size": 32,
               "model": {**config["model"], "grid": 4, "head_channels": head_channels}}
    config["trainer"] |= {"epochs": 1}
    (tmp_path / "dvae.json").write_text(json.dumps(config))
    run = tmp_path / "dvae"
    assert glimpse(["train", "dvae", "--data", str(world), "--out", str(run), "--config",
                    str(tmp_path / "dvae.json"), "--encoder-init", str(encoder)]) == 0
    _, pretrained = pretrained_encoder(encoder)
    dvae = load_dvae(run)
    assert dvae.config.backbone["channels"] == [8, 16, 16]
    for name, weight in dvae.encoder.backbone.state_dict().items():
        torch.testing.assert_close(weight, pretrained[name])  # loaded, then left frozen
    assert load_dvae(run).encode(torch.rand(1, 3, 32, 32)).shape == (1, 4, 4)


def test_feature_matching_is_zero_on_the_image_and_trains_only_the_reconstruction(tmp_path):
    _, weights = pretrained_encoder(tiny_encoder_run(tmp_path))
    encoder = ImageEncoder(EncoderConfig(out_dim=16, channels=(8, 16, 16)))
    encoder.load_state_dict(weights)
    match = FeatureMatch(encoder)
    match.train()  # stays in eval: the encoder's BatchNorm statistics are not updated
    assert not match.encoder.training
    images = torch.rand(2, 3, 32, 32)
    assert float(match(images, images)) == 0.0
    recon = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss = match(recon, images)
    loss.backward()
    assert loss.item() > 0 and recon.grad.abs().sum() > 0
    assert all(p.grad is None for p in match.encoder.parameters())


def test_dvae_with_feature_matching_trains_and_logs_the_term(world, tmp_path):
    encoder = tiny_encoder_run(tmp_path)
    config = json.loads(Path(TINY_DVAE).read_text())
    config |= {"image_size": 32, "perceptual_weight": 0.1,
               "model": {**config["model"], "grid": 4}}
    config["trainer"] |= {"epochs": 1, "log_every": 2}
    (tmp_path / "dvae.json").write_text(json.dumps(config))
    run = tmp_path / "dvae"
    assert glimpse(["train", "dvae", "--data", str(world), "--out", str(run), "--config",
                    str(tmp_path / "dvae.json"), "--perceptual-init", str(encoder)]) == 0
    logged = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert any("feature_mse" in row and row["feature_mse"] > 0 for row in logged)
    # the frozen encoder is the loss's, not the model's: not in the dVAE's checkpoint
    assert load_dvae(run).encode(torch.rand(1, 3, 32, 32)).shape == (1, 4, 4)


def test_feature_matching_needs_an_encoder_run() -> None:
    with pytest.raises(ValueError, match="needs perceptual_init"):
        DVAETaskConfig.from_dict({"perceptual_weight": 0.1})
    with pytest.raises(ValueError, match="perceptual_weight must be >= 0"):
        DVAETaskConfig.from_dict({"perceptual_init": "runs/encoder", "perceptual_weight": -1})


def test_dalle_learns_the_image_codes(dalle_run, dvae_run):
    summary = json.loads((dalle_run / "summary.json").read_text())
    assert summary["steps"] == 2 * math.ceil(300 / 32)  # 60 images x 5 captions, batch 32
    last = summary["history"][-1]
    # below the cross-entropy of guessing among the dVAE's 32 codes uniformly
    assert last["image_loss"] < math.log(32)
    assert last["image_loss"] < summary["history"][0]["image_loss"]
    assert (dalle_run / "codes.npz").is_file() and (dalle_run / "vocab.json").is_file()
    assert len(list((dalle_run / "samples").glob("step_*.png"))) == 1


def test_export_gives_a_bundle_the_dalle_pipeline_serves(dalle_run, dvae_run, tmp_path):
    assert glimpse(["export", str(dalle_run), "--repository", str(tmp_path / "repo"),
                    "--name", "dalle-tiny"]) == 0
    bundle = tmp_path / "repo" / "dalle-tiny" / "1"
    manifest = load_bundle(bundle).manifest
    assert (manifest.task, manifest.architecture) == ("generation", "dalle")
    assert manifest.inference["grid"] == 8 and manifest.inference["codebook_size"] == 32
    assert manifest.training["dvae_run"] == str(dvae_run)
    model = DalleModel.from_bundle(bundle, device="cpu")
    images = model.generate(["a large red circle"], n=2, seed=0)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, model.generate(["a large red circle"], n=2, seed=0))


@pytest.fixture(scope="module")
def regions_run(world, tmp_path_factory) -> Path:
    """A two-epoch `glimpse train regions` run on a random tiny encoder: a judge that
    runs, not one that sees (its scores are not checked here)."""
    root = tmp_path_factory.mktemp("judge")
    tiny_encoder_run(root)
    (root / "regions.json").write_text(json.dumps({
        "val_images": 8, "regions": {"head_channels": 8, "feature_dim": 12, "max_proposals": 4},
        "trainer": {"batch_size": 16, "warmup_steps": 1, "progress": False}}))
    assert glimpse(["train", "regions", "--data", str(world), "--out", str(root / "regions"),
                    "--encoder-init", str(root / "encoder"), "--config",
                    str(root / "regions.json"), "--epochs", "2"]) == 0
    return root / "regions"


def test_judge_reads_real_images_and_a_bundles_samples(dalle_run, world, regions_run,
                                                       tmp_path):
    judged = {"regions-run": str(regions_run), "data": str(world), "prompts": "4"}
    flags = [a for k, v in judged.items() for a in (f"--{k}", v)]
    assert glimpse(["eval", "judge", "real", *flags, "--out", str(tmp_path / "real.json")]) == 0
    real = json.loads((tmp_path / "real.json").read_text())
    assert real["metrics"]["prompts"] == 20  # 4 images x 5 captions, each against its image
    assert 0 <= real["metrics"]["satisfied"] <= real["metrics"]["coverage"] <= 1
    assert glimpse(["export", str(dalle_run), "--repository", str(tmp_path / "repo"),
                    "--name", "dalle-tiny"]) == 0
    assert glimpse(["eval", "judge", str(tmp_path / "repo" / "dalle-tiny" / "1"), *flags,
                    "--samples-per-prompt", "2", "--out", str(tmp_path / "bundle.json"),
                    "--grid", str(tmp_path / "grid.png")]) == 0
    drawn = json.loads((tmp_path / "bundle.json").read_text())
    assert drawn["architecture"] == "dalle" and drawn["model"] == "dalle-tiny/1"
    assert drawn["metrics"]["prompts"] == 4 and drawn["metrics"]["images"] == 8
    assert 0 <= drawn["metrics"]["satisfied"] <= 1 and drawn["metrics"]["refused"] == 0
    assert (tmp_path / "grid.png").is_file()


def test_judge_reads_a_dvaes_reconstructions(dvae_run, world, regions_run, tmp_path):
    """A dVAE run in place of a bundle: each caption against the dVAE's reconstruction of
    its image (hard codes, decoded, at the judge's 64 px)."""
    assert glimpse(["eval", "judge", str(dvae_run), "--regions-run", str(regions_run),
                    "--data", str(world), "--prompts", "4",
                    "--out", str(tmp_path / "recon.json")]) == 0
    judged = json.loads((tmp_path / "recon.json").read_text())
    assert judged["metrics"]["prompts"] == 20 and judged["model"].endswith("dvae")
    split = load_split(world, "test", 2)
    recon = reconstruct(str(dvae_run), split.images)
    assert recon.shape == split.images.shape and recon.dtype == np.uint8
    dvae = load_dvae(dvae_run)
    x = torch.nn.functional.interpolate(
        torch.from_numpy(split.images).permute(0, 3, 1, 2).float() / 255, size=(16, 16),
        mode="bilinear", antialias=True, align_corners=False)
    small = dvae.decode(dvae.encode(x))
    assert not np.array_equal(recon, split.images)
    np.testing.assert_allclose(  # the decode, brought back to 64 px
        recon.astype(float) / 255, torch.nn.functional.interpolate(
            small, size=(64, 64), mode="bilinear", align_corners=False
        ).clamp(0, 1).permute(0, 2, 3, 1).numpy(), atol=1 / 255 + 1e-6)
