"""StackGAN: conditioning augmentation, its KL term, the two stages, ONNX export."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.stackgan import (
    ConditioningAugmentation,
    StackGanConfig,
    StageDiscriminator,
    StageIGenerator,
    StageIIGenerator,
    kl_to_standard_normal,
)
from training.export.onnx import onnx_export

TINY = StackGanConfig(embed_dim=12, z_dim=8, c_dim=4, proj_dim=4, ngf=4, ndf=4, num_residual=1)


RESIDUAL = StackGanConfig(**{**TINY.to_dict(), "residual_output": True})


def tiny_stages(seed: int = 0, config: StackGanConfig = TINY
                ) -> tuple[StageIGenerator, StageIIGenerator]:
    torch.manual_seed(seed)
    stage1 = StageIGenerator(config)
    stage2 = StageIIGenerator(config, stage1)
    return stage1.eval(), stage2.eval()


def test_kl_of_the_standard_normal_is_zero_and_matches_hand_values():
    zeros = torch.zeros(3, 4)
    assert kl_to_standard_normal(zeros, zeros).item() == 0.0
    # mu = 1, sigma = 1: 0.5 per dimension; mu = 0, sigma = 2: 0.5 (4 - 1) - log 2.
    assert math.isclose(kl_to_standard_normal(torch.ones(2, 4), torch.zeros(2, 4)).item(), 2.0)
    log_sigma = torch.full((2, 4), math.log(2.0))
    expected = 4 * (1.5 - math.log(2.0))
    assert math.isclose(kl_to_standard_normal(torch.zeros(2, 4), log_sigma).item(), expected,
                        rel_tol=1e-6)


def test_conditioning_augmentation_is_mu_plus_sigma_times_eps():
    torch.manual_seed(0)
    ca = ConditioningAugmentation(12, 4)
    e = torch.randn(5, 12)
    c0, mu, log_sigma = ca(e, torch.zeros(5, 4))
    torch.testing.assert_close(c0, mu)
    eps = torch.randn(5, 4)
    c, _, _ = ca(e, eps)
    torch.testing.assert_close(c, mu + log_sigma.exp() * eps)


def test_stage_shapes_and_noise_layout():
    stage1, stage2 = tiny_stages()
    assert (stage1.noise_dim, stage1.embed_dim, stage1.image_size) == (12, 12, 64)
    assert (stage2.noise_dim, stage2.embed_dim, stage2.image_size) == (16, 12, 128)
    e, noise = torch.randn(3, 12), torch.randn(3, 16)
    high, low, mu, log_sigma = stage2(e, noise)
    assert high.shape == (3, 3, 128, 128) and mu.shape == log_sigma.shape == (3, 4)
    assert high.abs().max() <= 1.0
    # Stage-II reads the Stage-I image drawn from the first 12 noise values.
    torch.testing.assert_close(low, stage1.sample(e, noise[:, :12]))
    torch.testing.assert_close(stage2.sample(e, noise), stage2.sample(e, noise), rtol=0, atol=0)
    assert (stage2.sample(e, noise) - stage2.sample(e, torch.randn(3, 16))).abs().max() > 1e-4


def test_stage1_image_is_the_tanh_of_its_logits():
    stage1, _ = tiny_stages()
    e, noise = torch.randn(3, 12), torch.randn(3, 12)
    image, mu, _ = stage1(e, noise)
    logits, mu2, _ = stage1.logits(e, noise)
    torch.testing.assert_close(image, torch.tanh(logits))
    torch.testing.assert_close(mu, mu2)


def test_residual_stage2_starts_at_the_upsampled_stage1_image_and_learns_a_correction():
    stage1, stage2 = tiny_stages(config=RESIDUAL)
    stage2.init_weights()
    e, noise = torch.randn(2, 12), torch.randn(2, 16)
    high, low, _, _ = stage2(e, noise)
    logits = stage1.logits(e, noise[:, :12])[0]
    # Bilinear x2 by hand: each output pixel mixes its two nearest inputs 3:1 per axis
    # (edges repeat), the half-pixel-centred rule of align_corners=False.
    def up(x: torch.Tensor, dim: int) -> torch.Tensor:
        before = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, x.shape[dim] - 1)], dim)
        after = torch.cat([x.narrow(dim, 1, x.shape[dim] - 1), x.narrow(dim, -1, 1)], dim)
        even, odd = 0.75 * x + 0.25 * before, 0.75 * x + 0.25 * after
        return torch.stack([even, odd], dim + 1).flatten(dim, dim + 1)
    torch.testing.assert_close(high, torch.tanh(up(up(logits, 2), 3)))
    torch.testing.assert_close(low, torch.tanh(logits))
    # The zero output convolution still gets a gradient, so the correction can grow.
    stage2.train()
    stage2(e, noise)[0].sum().backward()
    assert stage2.up[-1][0].weight.grad.abs().sum() > 0


def test_stage2_training_mode_keeps_stage1_frozen_in_eval_mode():
    _, stage2 = tiny_stages()
    stage2.train()
    assert stage2.training and stage2.up.training
    assert not stage2.stage1.training


def test_discriminators_at_both_resolutions():
    d64, d128 = StageDiscriminator(TINY, 64), StageDiscriminator(TINY, 128)
    assert d64(torch.randn(2, 3, 64, 64), torch.randn(2, 12)).shape == (2,)
    assert d128(torch.randn(2, 3, 128, 128), torch.randn(2, 12)).shape == (2,)


def test_discriminators_take_gan_int_clss_options_at_both_resolutions():
    cfg = StackGanConfig(**{**TINY.to_dict(), "projection": True, "minibatch_std_group": 2,
                            "minibatch_std_features": 4, "attribute_classes": (7, 8, 2)})
    for side in (64, 128):
        d = StageDiscriminator(cfg, side)
        logits, named = d(torch.randn(4, 3, side, side), torch.randn(4, 12),
                          with_attributes=True)
        assert logits.shape == (4,) and [n.shape for n in named] == [(4, 7), (4, 8), (4, 2)]
        assert d.spread is not None and d.encode(torch.zeros(1, 3, side, side)).shape[2:] == (4, 4)
    # A D of Zhang et al.'s recipe has the keys of the D before the options existed, so the
    # runs trained then still load.
    plain = StageDiscriminator(TINY, 128)
    assert plain.spread is None and plain.attributes is None
    assert {k.split(".")[0] for k in plain.state_dict()} == {"embed_norm", "encode", "head"}
    with pytest.raises(ValueError):
        StageDiscriminator(cfg, 96)


@pytest.mark.parametrize("config", [TINY, RESIDUAL], ids=["redraw", "residual"])
def test_stage2_sample_exports_to_onnx(tmp_path, config):
    _, stage2 = tiny_stages(config=config)  # PyTorch's initialisation: a non-zero correction

    class Sample(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.g = stage2

        def forward(self, embedding, noise):
            return self.g.sample(embedding, noise)

    batch = torch.export.Dim("batch")
    path = tmp_path / "generator.onnx"
    onnx_export(Sample().eval(), (torch.randn(2, 12), torch.randn(2, 16)), path,
                 ("embedding", "noise"), ("image",),
                 {"embedding": {0: batch}, "noise": {0: batch}}, 18)
    rng = np.random.default_rng(2)
    e = rng.standard_normal((3, 12)).astype(np.float32)
    z = rng.standard_normal((3, 16)).astype(np.float32)
    (image,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"embedding": e, "noise": z})
    with torch.no_grad():
        expected = stage2.sample(torch.from_numpy(e), torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(image, expected, atol=1e-4, rtol=0)
