"""Reed et al. 2016's text-conditional DCGAN: shapes, conditioning, determinism, ONNX."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.gan import Discriminator, EmbeddingNorm, GanConfig, Generator
from training.export.onnx import onnx_export

TINY = GanConfig(embed_dim=12, noise_dim=8, proj_dim=4, ngf=4, ndf=4)


def tiny_pair(seed: int = 0) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    g, d = Generator(TINY), Discriminator(TINY)
    return g.eval(), d.eval()


def test_generator_exposes_the_sampling_interface_and_draws_64px_in_tanh_range():
    g, _ = tiny_pair()
    assert (g.noise_dim, g.embed_dim, g.image_size) == (8, 12, 64)
    images = g.sample(torch.randn(5, 12), torch.randn(5, 8))
    assert images.shape == (5, 3, 64, 64)
    assert images.abs().max() <= 1.0 and images.std() > 0


def test_sample_is_deterministic_and_depends_on_noise_and_text():
    g, _ = tiny_pair()
    e, z = torch.randn(3, 12), torch.randn(3, 8)
    torch.testing.assert_close(g.sample(e, z), g.sample(e, z), rtol=0, atol=0)
    assert (g.sample(e, z) - g.sample(e, torch.randn(3, 8))).abs().max() > 1e-4
    assert (g.sample(e, z) - g.sample(torch.randn(3, 12), z)).abs().max() > 1e-4


def test_discriminator_scores_image_and_text_jointly():
    _, d = tiny_pair()
    x, e = torch.randn(4, 3, 64, 64), torch.randn(4, 12)
    logits = d(x, e)
    assert logits.shape == (4,)
    assert (logits - d(x, torch.randn(4, 12))).abs().max() > 1e-6


def test_embedding_norm_standardises_with_training_statistics():
    torch.manual_seed(0)
    norm = EmbeddingNorm(3)
    x = torch.randn(200, 3) * torch.tensor([0.1, 1.0, 5.0]) + torch.tensor([1.0, 0.0, -2.0])
    torch.testing.assert_close(norm(x), x)  # identity before statistics are set
    norm.set_statistics(x)
    y = norm(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(0), torch.ones(3), atol=1e-5, rtol=0)
    assert set(dict(norm.named_buffers())) == {"mean", "std"}


def test_only_64px_images_are_supported():
    with pytest.raises(ValueError, match="64x64"):
        GanConfig(image_size=128)


def test_sample_exports_to_onnx_with_a_symbolic_batch(tmp_path):
    g, _ = tiny_pair()

    class Sample(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.g = g

        def forward(self, embedding, noise):
            return self.g.sample(embedding, noise)

    batch = torch.export.Dim("batch")
    path = tmp_path / "generator.onnx"
    onnx_export(Sample().eval(), (torch.randn(2, 12), torch.randn(2, 8)), path,
                 ("embedding", "noise"), ("image",),
                 {"embedding": {0: batch}, "noise": {0: batch}}, 18)
    rng = np.random.default_rng(1)
    e = rng.standard_normal((3, 12)).astype(np.float32)
    z = rng.standard_normal((3, 8)).astype(np.float32)
    (image,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"embedding": e, "noise": z})
    with torch.no_grad():
        expected = g.sample(torch.from_numpy(e), torch.from_numpy(z)).numpy()
    assert image.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(image, expected, atol=1e-4, rtol=0)
