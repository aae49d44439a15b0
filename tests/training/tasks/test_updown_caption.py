"""Up-Down and m-RNN captioners from a generated world to a served bundle.

Up-Down trains on precomputed RegionNet features and exports with the frozen
RegionNet inside its encoder graph; the m-RNN trains on its frozen encoder's
pooled vectors and carries its first-step image bias in the recurrent state.
Both bundles must decode through the service exactly as the PyTorch model does.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.attributes import AttributeConfig, AttributeTagger
from models.encoder import EncoderConfig
from models.regions import RegionConfig, RegionNet
from service.decoding import beam_search
from service.errors import InvalidParameter
from service.pipelines.caption import CaptionModel, CaptionRequest
from training.checkpoint import save_checkpoint
from training.cli import main as glimpse
from training.data.images import load_images
from training.data.readers import load_captions
from training.data.region_features import RegionFeatures, save_region_features
from training.data.shapes import generate_shapes_world
from training.export.caption import TorchCaptionStep, export_caption, load_caption_model
from training.tasks.caption import CaptionTask, CaptionTaskConfig
from training.tasks.regions import run_region_net

S, K = 32, 3  # image side; region proposals (R = K + 1)
ENCODER = {"out_dim": 8, "channels": [4, 8, 8]}
TRAINER = {"epochs": 1, "batch_size": 16, "warmup_steps": 2, "progress": False, "amp": False}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_shapes_world(out, {"train": 16, "val": 4, "test": 4, "novel": 0}, size=S,
                          seed=5, workers=1, progress=False)
    return out


def write_run(run_dir: Path, model: torch.nn.Module, model_config: dict) -> Path:
    """A training run directory as the trainer leaves it (best checkpoint)."""
    save_checkpoint(run_dir / "checkpoints" / "best", model=model,
                    config={"model": model_config})
    return run_dir


@pytest.fixture(scope="module")
def regions(world, tmp_path_factory) -> tuple[Path, Path]:
    """A RegionNet run and its features of every split, as `glimpse features regions`."""
    torch.manual_seed(0)
    cfg = RegionConfig(max_proposals=K, feature_dim=6, head_channels=4,
                       encoder=EncoderConfig(**ENCODER))
    net = RegionNet(cfg).eval()
    root = tmp_path_factory.mktemp("regions")
    run = write_run(root / "run", net, {"task": "regions", "regions": cfg.to_dict()})
    for split in ("train", "val", "test"):
        images = load_captions(world, split)
        boxes, scores, feats = run_region_net(net, load_images(world, images, S))
        save_region_features(root / "features" / f"{split}.npz", RegionFeatures(
            image_ids=[im.imgid for im in images], boxes=boxes.numpy(), scores=scores.numpy(),
            features=feats.numpy(), num_regions=np.full(len(images), K + 1)))
    return run, root / "features"


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = AttributeConfig(encoder=EncoderConfig(**ENCODER))
    return write_run(tmp_path_factory.mktemp("encoder"), AttributeTagger(cfg).eval(),
                     {"task": "attributes", "attributes": cfg.to_dict()})


def train(world: Path, out: Path, arch: str, *extra: str) -> Path:
    config = out.parent / f"{arch}.json"
    config.write_text(json.dumps({
        "arch": arch, "image_size": S, "val_images": 4, "trainer": TRAINER,
        "model": {"embed_dim": 8, "hidden_dim": 12, "attention_dim": 6, "dropout": 0.0}}))
    assert glimpse(["train", "caption", "--data", str(world), "--out", str(out),
                    "--config", str(config), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def updown_bundle(world, regions, tmp_path_factory) -> tuple[Path, Path]:
    run_dir, features = regions
    root = tmp_path_factory.mktemp("updown")
    run = train(world, root / "run", "updown", "--regions-run", str(run_dir),
                "--features", str(features))
    return run, export_caption(run, root / "repo", "caption-updown")


@pytest.fixture(scope="module")
def mrnn_bundle(world, encoder_run, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mrnn")
    run = train(world, root / "run", "mrnn", "--encoder-init", str(encoder_run))
    return run, export_caption(run, root / "repo", "caption-mrnn")


def served_and_torch(run: Path, bundle: Path, world: Path, **params):
    """Beam-search answers for the test images from the bundle and from PyTorch."""
    model, vocab, _ = load_caption_model(run / "checkpoints" / "best")
    served = CaptionModel.from_bundle(bundle)
    arrays = [served.as_array(world / im.path) for im in load_captions(world, "test")]
    search = served.params(beam_size=3, max_length=8, **params)
    onnx_out = served.caption_batch([CaptionRequest(a, search) for a in arrays])
    step = TorchCaptionStep(model, top_k=served.decoding.top_k)
    context, state = step.encode(np.stack(arrays))
    torch_out = beam_search(step, state, context, bos_id=vocab.bos_id, eos_id=vocab.eos_id,
                            beam_size=3, max_length=8, top_k=served.decoding.top_k)
    return served, onnx_out, torch_out


def assert_same_captions(onnx_out, torch_out) -> None:
    for got, want in zip(onnx_out, torch_out, strict=True):
        assert got.captions[0].tokens == want[0].tokens
        np.testing.assert_allclose(got.captions[0].log_prob, want[0].log_prob, atol=1e-4)


def test_updown_bundle_attends_over_the_regions_and_decodes_like_pytorch(updown_bundle, world):
    run, bundle = updown_bundle
    served, onnx_out, torch_out = served_and_torch(run, bundle, world, return_attention=True)
    manifest = served.bundle.manifest
    assert manifest.architecture == "updown"
    assert manifest.decoding.state == ["h1", "c1", "h2", "c2"]
    assert manifest.decoding.context == ["context"]
    assert manifest.decoding.attention.grid == (K + 1, 1)
    assert max(manifest.training["parity_max_abs_diff"].values()) <= 1e-4
    assert manifest.graphs["encoder"].outputs[0].shape == ["batch", K + 1, 12]
    assert_same_captions(onnx_out, torch_out)
    for result in onnx_out:
        caption = result.captions[0]
        assert caption.attention.shape == (len(caption.words), K + 1, 1)
        np.testing.assert_allclose(caption.attention.sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_updown_trains_on_the_precomputed_features_of_its_images(regions, world):
    run_dir, features = regions
    task = CaptionTask(CaptionTaskConfig(data=str(world), arch="updown", image_size=S,
                                         regions_run=str(run_dir), features=str(features)))
    assert not hasattr(task, "train_images")  # pixels are never loaded
    model = task.build_model()
    images = load_captions(world, "train")
    pixels = load_images(world, images[:3], S).float() / 255
    with torch.no_grad():
        boxes, _, feats = model.image_features(pixels)
    # The whole-image region (the last) is the one a random RegionNet gives without ties.
    torch.testing.assert_close(task.train_features[0][:3, -1], boxes[:, -1])
    torch.testing.assert_close(task.train_features[2][:3, -1], feats[:, -1])
    assert not torch.allclose(feats[0, -1], feats[1, -1])
    inputs, captions_in, _ = task.batch(torch.tensor([0, 5]), torch.device("cpu"))
    assert isinstance(inputs, tuple) and inputs[2].shape == (2, K + 1, 6)
    assert captions_in.shape[0] == 2


def test_updown_needs_its_features_and_regions_run(world, regions):
    with pytest.raises(ValueError, match="--features"):
        CaptionTask(CaptionTaskConfig(data=str(world), arch="updown", image_size=S))
    with pytest.raises(ValueError, match="--regions-run"):
        CaptionTask(CaptionTaskConfig(data=str(world), arch="updown", image_size=S,
                                      features=str(regions[1])))


def test_mrnn_bundle_adds_the_image_bias_at_the_first_step_only(mrnn_bundle, world):
    run, bundle = mrnn_bundle
    served, onnx_out, torch_out = served_and_torch(run, bundle, world)
    manifest = served.bundle.manifest
    assert manifest.architecture == "mrnn" and manifest.decoding.attention is None
    assert manifest.decoding.state == ["h", "image_bias"] and manifest.decoding.context == []
    assert max(manifest.training["parity_max_abs_diff"].values()) <= 1e-4
    assert_same_captions(onnx_out, torch_out)
    images = np.stack([served.as_array(world / im.path) for im in load_captions(world, "test")])
    encoded = served.encoder.run({"image": images})
    assert (encoded["h"] == 0).all() and np.abs(encoded["image_bias"]).max() > 0
    n = len(images)
    feeds = {"tokens": np.ones(n, dtype=np.int64), "parents": np.arange(n),
             "h": encoded["h"], "image_bias": encoded["image_bias"]}
    first = served.decoder.run(feeds)
    assert (first["image_bias_out"] == 0).all()  # spent: later steps see no image bias
    unbiased = served.decoder.run({**feeds, "image_bias": np.zeros_like(feeds["image_bias"])})
    assert np.abs(first["log_probs"] - unbiased["log_probs"]).max() > 1e-4
    with pytest.raises(InvalidParameter, match="no attention"):
        served.params(return_attention=True)


def test_mrnn_needs_a_trained_encoder(world):
    with pytest.raises(ValueError, match="--encoder-init"):
        CaptionTask(CaptionTaskConfig(data=str(world), arch="mrnn", image_size=S))
