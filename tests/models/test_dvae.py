"""The discrete VAE: shapes, code ids, the relaxation, the KL term and the schedules."""

from __future__ import annotations

import math

import pytest
import torch

from models.dvae import DiscreteVAE, DVAEConfig, codebook_usage, cosine_ramp, kl_to_uniform, kmeans


def tiny(grid: int = 8, codebook_size: int = 16) -> DiscreteVAE:
    torch.manual_seed(0)
    cfg = DVAEConfig(image_size=32, grid=grid, codebook_size=codebook_size, channels=8,
                     max_channels=16, code_dim=8)
    return DiscreteVAE(cfg).eval()


@pytest.mark.parametrize("grid", [4, 8, 16])
def test_encode_gives_a_grid_of_code_ids_and_decode_an_image(grid: int) -> None:
    model = tiny(grid)
    images = torch.rand(3, 3, 32, 32)
    codes = model.encode(images)
    assert codes.shape == (3, grid, grid) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    with torch.no_grad():
        decoded = model.decode(codes)
    assert decoded.shape == (3, 3, 32, 32)
    assert float(decoded.min()) >= 0.0 and float(decoded.max()) <= 1.0


def test_encode_is_the_argmax_of_the_encoder_logits() -> None:
    model = tiny()
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.encode(images), model.encoder(images).argmax(dim=1))


def test_at_low_temperature_the_relaxation_decodes_like_the_hard_codes() -> None:
    """As tau -> 0 the Gumbel-softmax sample becomes one-hot; with logits whose margin
    dwarfs the Gumbel noise the sampled code is the argmax, so the forward pass
    reconstructs what `decode(encode(x))` does."""
    model = tiny()
    with torch.no_grad():
        model.encoder.net[-1].weight.mul_(1e4)
    images = torch.rand(2, 3, 32, 32)
    out = model(images, temperature=1e-3, kl_weight=0.0)
    torch.testing.assert_close(out.recon, model.decode(model.encode(images)), atol=1e-4,
                               rtol=0)


def test_loss_is_reconstruction_plus_weighted_kl() -> None:
    model = tiny()
    images = torch.rand(2, 3, 32, 32)
    torch.manual_seed(1)
    out = model(images, temperature=1.0, kl_weight=0.5)
    torch.testing.assert_close(out.recon_loss, ((out.recon - images) ** 2).mean())
    torch.testing.assert_close(out.kl, kl_to_uniform(out.logits))
    torch.testing.assert_close(out.loss, out.recon_loss + 0.5 * out.kl)
    out.loss.backward()
    assert model.encoder.net[0].weight.grad is not None  # gradients reach the encoder


def test_kl_to_uniform_is_zero_for_uniform_and_log_k_for_one_hot() -> None:
    assert kl_to_uniform(torch.zeros(2, 8, 3, 3)).item() == pytest.approx(0.0, abs=1e-6)
    one_hot = torch.full((1, 8, 1, 1), -1e4)
    one_hot[0, 3] = 1e4
    assert kl_to_uniform(one_hot).item() == pytest.approx(math.log(8), rel=1e-5)


def test_schedules_anneal_temperature_and_ramp_the_kl_weight() -> None:
    cfg = DVAEConfig(temperature_start=1.0, temperature_end=1 / 16, temperature_steps=100,
                     kl_weight=6.6, kl_steps=10)
    assert cfg.temperature(0) == 1.0 and cfg.temperature(100) == 1 / 16
    assert cfg.temperature(50) == pytest.approx((1 + 1 / 16) / 2)
    assert cfg.temperature(10_000) == 1 / 16
    assert cfg.kl_weight_at(0) == 0.0 and cfg.kl_weight_at(10) == 6.6
    temps = [cfg.temperature(s) for s in range(0, 101, 10)]
    assert temps == sorted(temps, reverse=True)
    assert cosine_ramp(5, 0, 1.0, 2.0) == 2.0  # no ramp: the final value at once


def test_grid_must_divide_the_image_by_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        DVAEConfig(image_size=64, grid=12)
    with pytest.raises(ValueError, match="power of two"):
        DVAEConfig(image_size=64, grid=64)
    assert DVAEConfig(image_size=64, grid=16).downsamplings == 2


def test_codebook_usage_counts_perplexity_and_dead_codes() -> None:
    uniform = codebook_usage(torch.arange(8).repeat(3), 8)
    assert uniform["perplexity"] == pytest.approx(8.0) and uniform["dead_codes"] == 0
    one = codebook_usage(torch.full((5, 2, 2), 3), 8)
    assert one["perplexity"] == pytest.approx(1.0) and one["dead_codes"] == 7


def test_config_round_trips() -> None:
    cfg = DVAEConfig(grid=16, codebook_size=256)
    assert DVAEConfig.from_dict(cfg.to_dict()) == cfg


def backbone_dvae() -> DiscreteVAE:
    torch.manual_seed(0)
    encoder = {"out_dim": 12, "channels": [8, 16, 16]}  # stride 8: a 4x4 grid at 32 px
    cfg = DVAEConfig(image_size=32, grid=4, codebook_size=16, channels=8, max_channels=16,
                     code_dim=8, backbone=encoder, head_channels=10)
    return DiscreteVAE(cfg)


def test_a_backbone_encoder_reads_the_logits_from_the_frozen_annotation_grid() -> None:
    assert not backbone_dvae().encoder.backbone.training  # from construction on
    model = backbone_dvae().train()
    encoder = model.encoder
    assert not encoder.backbone.training  # its BatchNorm statistics stay as pre-trained
    assert not any(p.requires_grad for p in encoder.backbone.parameters())
    images = torch.rand(2, 3, 32, 32)
    _, grid = encoder.backbone(images)
    expected = encoder.head(encoder.norm(grid).transpose(1, 2).reshape(2, 12, 4, 4))
    torch.testing.assert_close(encoder(images), expected)
    out = model(images, temperature=1.0, kl_weight=1e-3)
    out.loss.backward()
    assert all(p.grad is None for p in encoder.backbone.parameters())
    assert all(p.grad is not None for p in encoder.head.parameters())
    assert model.encode(images).shape == (2, 4, 4)


def test_a_backbone_must_give_the_code_grid() -> None:
    with pytest.raises(ValueError, match="grid at 32 px is 4, not grid 8"):
        DVAEConfig(image_size=32, grid=8, backbone={"channels": [8, 16, 16]})
    cfg = backbone_dvae().config
    assert DVAEConfig.from_dict(cfg.to_dict()) == cfg


def test_kmeans_finds_separated_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = (centres.repeat_interleave(50, 0) + 0.1 * torch.randn(150, 2, generator=gen))
    found = kmeans(x, 3, seed=1)
    nearest = torch.cdist(centres, found).min(1).values
    assert float(nearest.max()) < 0.1


def test_a_centroid_head_gives_each_cell_its_nearest_centroids_code() -> None:
    torch.manual_seed(0)
    cfg = DVAEConfig(image_size=32, grid=4, codebook_size=6, channels=8, max_channels=16,
                     code_dim=8, backbone={"out_dim": 12, "channels": [8, 16, 16]},
                     head_channels=0)
    model = DiscreteVAE(cfg).eval()
    images = torch.rand(3, 3, 32, 32)
    cells = model.encoder.cells(images).permute(0, 2, 3, 1).reshape(-1, 12)
    centroids = torch.randn(6, 12)
    model.encoder.init_from_centroids(centroids, scale=0.5)
    nearest = torch.cdist(cells, centroids).argmin(1).view(3, 4, 4)
    torch.testing.assert_close(model.encode(images), nearest)
    with pytest.raises(ValueError, match="one-layer head"):
        backbone_dvae().encoder.init_from_centroids(centroids, scale=1.0)
