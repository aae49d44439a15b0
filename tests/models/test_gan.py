"""Reed et al. 2016's text-conditional DCGAN: shapes, conditioning, determinism, ONNX."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.gan import (
    ADVERSARIAL_LOSSES,
    Discriminator,
    EmbeddingNorm,
    GanConfig,
    Generator,
    MinibatchStd,
    ProjectionHead,
    attribute_loss,
    cutout,
    diff_augment,
    ema_update,
    hinge_discriminator_loss,
    hinge_generator_loss,
    mode_seeking_loss,
    r1_penalty,
    translate,
)
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


# ------------------------------------------------------------------------- stabilisers


def spectrally_normalised_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if torch.nn.utils.parametrize.is_parametrized(m, "weight")]


def test_spectral_norm_bounds_every_discriminator_layer_and_drops_batch_norm():
    torch.manual_seed(0)
    d = Discriminator(GanConfig(embed_dim=12, noise_dim=8, proj_dim=4, ngf=4, ndf=4,
                                spectral_norm=True))
    layers = spectrally_normalised_layers(d)
    # 4 down convolutions, the text projection, the joint 1x1 and the logit convolution
    assert len(layers) == 7
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    x, e = torch.randn(4, 3, 64, 64), torch.randn(4, 12)
    for _ in range(30):  # one power iteration per training forward
        d(x, e)
    for layer in layers:
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        assert abs(sigma.item() - 1.0) < 0.05, layer
    assert not spectrally_normalised_layers(tiny_pair()[1])  # off by default


def test_projection_head_is_psi_of_pooled_features_plus_their_inner_product_with_the_text():
    torch.manual_seed(0)
    d = Discriminator(GanConfig(embed_dim=12, noise_dim=8, proj_dim=4, ngf=4, ndf=4,
                                projection=True)).eval()
    assert isinstance(d.head, ProjectionHead)
    x, e = torch.randn(3, 3, 64, 64), torch.randn(3, 12)
    with torch.no_grad():
        h = d.encode(x).sum(dim=(2, 3))  # (3, 32)
        expected = d.head.psi(h).flatten() + (d.head.embed(d.embed_norm(e)) * h).sum(1)
        torch.testing.assert_close(d(x, e), expected)
        # The text acts only through the inner product: zeroing V leaves psi(h).
        d.head.embed.weight.zero_()
        torch.testing.assert_close(d(x, e), d(x, torch.randn(3, 12)))


def test_hinge_losses_on_hand_set_logits():
    real, fake, wrong = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0]), torch.tensor([1.0])
    # max(0, 1 - s_r): 0, 0.5 -> 0.25; max(0, 1 + s_f): 0, 1 -> 0.5; max(0, 1 + s_w): 2
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.75)
    assert hinge_discriminator_loss(real, fake, wrong).item() == pytest.approx(0.25 + 0.5 * 2.5)
    assert hinge_generator_loss(fake).item() == pytest.approx(1.0)
    assert hinge_generator_loss(fake, torch.tensor([3.0])).item() == pytest.approx(-2.0)
    assert set(ADVERSARIAL_LOSSES) == {"bce", "hinge"}


def test_ema_update_is_the_moving_average_and_copies_buffers():
    torch.manual_seed(0)
    average, model = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        average.weight.fill_(1.0)
        model.weight.fill_(3.0)
        model.running_mean.fill_(7.0)
    ema_update(average, model, decay=0.9)
    torch.testing.assert_close(average.weight, torch.full((3,), 0.9 * 1.0 + 0.1 * 3.0))
    torch.testing.assert_close(average.running_mean, torch.full((3,), 7.0))
    torch.testing.assert_close(model.weight, torch.full((3,), 3.0))  # the model is untouched


def test_r1_penalty_is_the_squared_gradient_norm():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    x = torch.randn(5, 2, 2, requires_grad=True)
    logits = (x * w).sum(dim=(1, 2))  # D linear in x: grad_x D = w for every image
    assert r1_penalty(logits, x).item() == pytest.approx(1 + 4 + 0.25)


def test_translation_shifts_whole_images_by_at_most_an_eighth_and_repeats_the_border():
    torch.manual_seed(0)
    x = torch.arange(64.0).reshape(1, 1, 8, 8).repeat(16, 1, 1, 1)
    y = translate(x)
    assert y.shape == x.shape
    for image in y[:, 0]:  # each is x shifted by (dy, dx) in [-1, 1], clamped at the border
        shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                  if torch.equal(image, x[0, 0][(torch.arange(8) + dy).clamp(0, 7)][
                      :, (torch.arange(8) + dx).clamp(0, 7)])]
        assert shifts
    assert len({tuple(image.flatten().tolist()) for image in y[:, 0]}) > 1


def test_cutout_blanks_one_square_of_half_the_side_and_keeps_the_rest():
    torch.manual_seed(0)
    x = torch.ones(32, 3, 16, 16)
    y = cutout(x)
    blank = (y == 0).all(dim=1)  # (32, 16, 16), the same square in every channel
    assert ((y == 0) | (y == 1)).all()
    counts = blank.flatten(1).sum(1)
    assert (counts <= 64).all() and (counts > 0).all() and (counts == 64).any()


def test_diff_augment_lets_gradients_through_to_the_generator():
    x = torch.randn(4, 3, 64, 64, requires_grad=True)
    diff_augment(x, ("translation", "cutout")).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_checkpoints_made_before_the_stabilisers_load_with_them_off():
    old = {k: v for k, v in TINY.to_dict().items() if k not in ("spectral_norm", "projection")}
    cfg = GanConfig.from_dict(old)
    assert not cfg.spectral_norm and not cfg.projection
    assert set(Discriminator(cfg).state_dict()) == set(tiny_pair()[1].state_dict())


def test_mode_seeking_loss_is_the_inverse_of_image_over_noise_distance():
    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    za, zb = torch.zeros(2, 8), torch.full((2, 8), 2.0)
    # ratio = 0.5 / 2 = 0.25 -> 1 / 0.25
    assert mode_seeking_loss(a, b, za, zb, eps=0.0).item() == pytest.approx(4.0)
    assert mode_seeking_loss(a, a, za, zb).item() == pytest.approx(1e5)  # G deaf to z


def test_attribute_head_names_each_attribute_from_the_pooled_features():
    torch.manual_seed(0)
    d = Discriminator(GanConfig(embed_dim=12, noise_dim=8, proj_dim=4, ngf=4, ndf=4,
                                attribute_classes=(7, 8, 2))).eval()
    x, e = torch.randn(3, 3, 64, 64), torch.randn(3, 12)
    logits, named = d(x, e, with_attributes=True)
    torch.testing.assert_close(logits, d(x, e))
    assert [n.shape for n in named] == [(3, 7), (3, 8), (3, 2)]
    labels = torch.tensor([[0, 1, 0], [6, 7, 1], [3, 0, 1]])
    expected = sum(torch.nn.functional.cross_entropy(n, labels[:, k])
                   for k, n in enumerate(named))
    torch.testing.assert_close(attribute_loss(named, labels), expected)
    assert tiny_pair()[1].attributes is None  # off by default


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_residual_trunk_gives_the_dcgan_trunks_feature_grid_and_trains(spectral_norm):
    torch.manual_seed(0)
    cfg = dict(embed_dim=12, noise_dim=8, proj_dim=4, ngf=4, ndf=4, projection=True,
               spectral_norm=spectral_norm, attribute_classes=(7, 8, 2))
    dcgan, residual = Discriminator(GanConfig(**cfg)), Discriminator(GanConfig(**cfg,
                                                                               d_trunk="residual"))
    x, e = torch.randn(3, 3, 64, 64), torch.randn(3, 12)
    assert residual.encode(x).shape == dcgan.encode(x).shape == (3, 32, 4, 4)
    logits, named = residual(x, e, with_attributes=True)
    assert logits.shape == (3,) and [n.shape[1] for n in named] == [7, 8, 2]
    (logits.sum() + sum(n.sum() for n in named)).backward()
    assert all(p.grad is not None for p in residual.encode.parameters())
    # spectral norm bounds each of its convolutions as it does the DCGAN trunk's
    assert bool(spectrally_normalised_layers(residual.encode)) == spectral_norm


def test_unknown_discriminator_trunk_is_refused():
    with pytest.raises(ValueError, match="trunk"):
        GanConfig(d_trunk="vgg")


def test_separate_attribute_trunk_is_trained_by_the_attribute_loss_alone():
    torch.manual_seed(0)
    d = Discriminator(GanConfig(embed_dim=12, noise_dim=8, proj_dim=4, ngf=4, ndf=4,
                                projection=True, attribute_classes=(7, 8, 2),
                                attribute_trunk="separate"))
    x, e = torch.randn(3, 3, 64, 64), torch.randn(3, 12)
    logits, named = d(x, e, with_attributes=True)
    torch.testing.assert_close(named[0], d.attributes(d.classifier_trunk(x))[0])
    logits.sum().backward()  # the adversarial logit does not reach the classifier's trunk
    assert all(p.grad is None for p in d.classifier_trunk.parameters())
    d.zero_grad()
    sum(n.sum() for n in d.name_attributes(x)).backward()  # nor the classifier D's trunk
    assert all(p.grad is None for p in d.encode.parameters())
    assert all(p.grad is not None for p in d.classifier_trunk.parameters())
    with pytest.raises(ValueError, match="attribute_trunk"):
        GanConfig(attribute_trunk="both")


def test_minibatch_std_gives_each_row_its_groups_feature_spread():
    layer = MinibatchStd(2)
    features = torch.zeros(4, 3, 2, 2)
    features[0] = 1.0  # group 0 differs by 1 everywhere; group 1 is two equal rows
    out = layer(features)
    assert out.shape == (4, 4, 2, 2)
    torch.testing.assert_close(out[:, :3], features)
    spread = out[:, 3, 0, 0]
    assert spread[0] == spread[1] and abs(spread[0].item() - 0.5) < 1e-3
    assert spread[2] == spread[3] and spread[2].item() < 1e-3
    with pytest.raises(ValueError, match="multiple"):
        layer(torch.zeros(3, 3, 2, 2))
    # two parts of two channels each: the spread of each part apart
    features = torch.zeros(2, 4, 1, 1)
    features[0, 2:] = 2.0  # only the second part differs within the group
    out = MinibatchStd(2, parts=2)(features)
    assert out.shape == (2, 6, 1, 1)
    assert out[0, 4].item() < 1e-3 and abs(out[0, 5].item() - 1.0) < 1e-3
    torch.testing.assert_close(out[1, 4:], out[0, 4:])


def test_discriminator_with_minibatch_std_scores_a_group_by_how_alike_its_images_are():
    torch.manual_seed(0)
    cfg = GanConfig(embed_dim=12, noise_dim=8, proj_dim=4, ngf=4, ndf=4, projection=True,
                    minibatch_std_group=2, attribute_classes=(7, 8, 2))
    d = Discriminator(cfg).eval()
    x, e = torch.randn(4, 3, 64, 64), torch.randn(4, 12)
    alike = torch.cat([x[:1], x[:1], x[2:]])  # the first group: one image twice
    with torch.no_grad():
        scores, named = d(x, e, with_attributes=True)
        # row 0's image is the same in both batches, yet its logit moves with its group's
        # spread; the second group's logits do not move at all
        changed = d(alike, e) != scores
        assert changed[0] and not changed[2:].any()
        # the attribute classifier reads each image alone
        for a, b in zip(named, d.name_attributes(x[2:]), strict=True):
            torch.testing.assert_close(a[2:], b)
    with pytest.raises(ValueError, match="group size"):
        GanConfig(minibatch_std_group=1)
    with pytest.raises(ValueError, match="divide"):
        GanConfig(ndf=4, minibatch_std_group=2, minibatch_std_features=5)
