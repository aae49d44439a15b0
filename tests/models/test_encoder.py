import sys

import pytest
import torch
import torch.nn as nn

from models.encoder import EncoderConfig, ImageEncoder

# TorchScript is deprecated in torch 2.13 but is the local-backbone format supported here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


@pytest.mark.parametrize("size, grid", [(64, 8), (128, 16)])
def test_default_encoder_gives_a_stride_8_grid_and_its_mean(size, grid):
    torch.manual_seed(0)
    encoder = ImageEncoder(EncoderConfig(out_dim=32)).eval()
    pooled, annotations = encoder(torch.rand(2, 3, size, size))
    assert annotations.shape == (2, grid * grid, 32)
    assert pooled.shape == (2, 32)
    torch.testing.assert_close(pooled, annotations.mean(dim=1))


def test_default_encoder_is_small():
    n_params = sum(p.numel() for p in ImageEncoder(EncoderConfig()).parameters())
    assert 100_000 < n_params <= 1_000_000


def test_normalisation_by_mean_and_std_happens_inside():
    torch.manual_seed(0)
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.1)
    encoder = ImageEncoder(EncoderConfig(out_dim=16, mean=mean, std=std)).eval()
    identity = ImageEncoder(EncoderConfig(out_dim=16, mean=(0.0,) * 3, std=(1.0,) * 3)).eval()
    identity.load_state_dict(encoder.state_dict())
    images = torch.rand(2, 3, 32, 32)
    normalised = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(encoder(images)[1], identity(normalised)[1])
    assert "mean" not in encoder.state_dict()  # carried by the config, not the checkpoint


def test_gradients_reach_every_parameter():
    encoder = ImageEncoder(EncoderConfig(out_dim=8, channels=(4, 8, 8), blocks_per_stage=2))
    pooled, annotations = encoder(torch.rand(2, 3, 32, 32))
    (pooled.square().sum() + annotations.sin().sum()).backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


class TinyResNet(nn.Module):
    """The attribute layout of torchvision's ResNet (stride 32), with a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(6, 10, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(10, 5)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(x).mean(dim=(2, 3)))


def test_torchscript_resnet_backbone_is_run_up_to_layer4(tmp_path):
    torch.manual_seed(0)
    net = TinyResNet().eval()
    path = tmp_path / "resnet.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    cfg = EncoderConfig(out_dim=12, backbone="torchscript", backbone_path=str(path))
    encoder = ImageEncoder(cfg).train()
    assert not encoder.backbone.training  # frozen: BatchNorm statistics stay as loaded
    assert [n for n, p in encoder.named_parameters() if p.requires_grad] == [
        "project.weight", "project.bias"]
    images = torch.rand(2, 3, 128, 128)
    pooled, annotations = encoder(images)
    assert annotations.shape == (2, 16, 12)  # stride 32: 4 x 4 locations
    expected = encoder.project(net.trunk((images - encoder.mean) / encoder.std))
    torch.testing.assert_close(annotations, expected.flatten(2).transpose(1, 2))


def test_torchscript_feature_extractor_without_resnet_layout(tmp_path):
    path = tmp_path / "features.pt"
    torch.jit.save(torch.jit.script(nn.Conv2d(3, 6, 4, stride=4)), str(path))
    cfg = EncoderConfig(out_dim=5, backbone="torchscript", backbone_path=str(path),
                        freeze_backbone=False)
    encoder = ImageEncoder(cfg)
    _, annotations = encoder(torch.rand(1, 3, 64, 64))
    assert annotations.shape == (1, 256, 5)
    assert all(p.requires_grad for p in encoder.parameters())


def test_torchvision_backbone_without_torchvision_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    cfg = EncoderConfig(backbone="torchvision", backbone_path=str(tmp_path / "r18.pth"))
    with pytest.raises(ImportError, match="needs torchvision"):
        ImageEncoder(cfg)


def test_local_backbone_needs_a_path():
    with pytest.raises(ValueError, match="backbone_path"):
        EncoderConfig(backbone="torchscript")
    with pytest.raises(ValueError, match="unknown backbone"):
        EncoderConfig(backbone="vgg")
