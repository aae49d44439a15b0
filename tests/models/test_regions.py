"""RegionNet: proposals from heatmap peaks, ROI-align features, loss, and ONNX parity."""

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from models.regions import (
    RegionConfig,
    RegionNet,
    centre_heat_targets,
    dense_boxes,
    peak_mask,
    roi_align,
)

TINY = {"out_dim": 16, "channels": [8, 16, 16]}


def tiny_net(**overrides) -> RegionNet:
    torch.manual_seed(0)
    return RegionNet(RegionConfig(encoder=TINY, feature_dim=24, **overrides)).eval()


def targets_two_images() -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor([[[0.10, 0.10, 0.30, 0.30], [0.50, 0.55, 0.90, 0.80]],
                               [[0.20, 0.20, 0.40, 0.50], [0.0, 0.0, 0.0, 0.0]]]),
        "valid": torch.tensor([[True, True], [True, False]]),
        "shape": torch.tensor([[1, 2], [3, 0]]),
        "colour": torch.tensor([[4, 7], [0, 0]]),
        "size": torch.tensor([[1, 0], [0, 0]]),
    }


def test_forward_shapes_order_and_whole_image_row():
    net = tiny_net(max_proposals=5)
    assert net.num_regions == 6 and net.feature_dim == 24
    with torch.no_grad():
        boxes, scores, feats = net(torch.rand(3, 3, 64, 64))
    assert boxes.shape == (3, 6, 4) and scores.shape == (3, 6) and feats.shape == (3, 6, 24)
    assert torch.equal(boxes[:, -1], torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3))
    assert torch.equal(scores[:, -1], torch.ones(3))
    proposals = scores[:, :-1]
    assert torch.all(proposals[:, :-1] >= proposals[:, 1:])
    assert boxes.min() >= 0 and boxes.max() <= 1
    assert torch.all(boxes[..., 2] >= boxes[..., 0]) and torch.all(boxes[..., 3] >= boxes[..., 1])


def test_peak_mask_keeps_only_local_maxima():
    heat = torch.zeros(1, 1, 5, 5)
    heat[0, 0, 1, 1], heat[0, 0, 1, 2] = 0.9, 0.5  # neighbours: only the stronger is a peak
    heat[0, 0, 3, 4] = 0.4
    mask = peak_mask(heat)[0, 0]
    assert mask[1, 1] == 1 and mask[1, 2] == 0 and mask[3, 4] == 1
    assert mask[0, 0] == 0  # 0 next to 0.9 is not a maximum


def test_proposals_are_the_peaks_with_their_boxes():
    net = tiny_net(max_proposals=3)
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    logits = (-9.0 - rows - cols).view(1, 1, 4, 4)  # falls away from (0, 0): no peaks
    logits[0, 0, 0, 0], logits[0, 0, 2, 3], logits[0, 0, 0, 1] = 3.0, 1.0, 2.0
    size = torch.full((1, 2, 4, 4), 2.0)  # 2 x 2 cells = half the image side
    offset = torch.full((1, 2, 4, 4), 0.5)
    boxes, scores = net.propose(logits, size, offset)
    # (0, 1) is suppressed by its stronger neighbour (0, 0); being the best of the
    # remaining cells, it fills the third slot with score 0.
    torch.testing.assert_close(scores[0, :2], torch.sigmoid(torch.tensor([3.0, 1.0])))
    assert scores[0, 2] == 0
    torch.testing.assert_close(boxes[0, 0], torch.tensor([0.0, 0.0, 0.375, 0.375]))
    torch.testing.assert_close(boxes[0, 1], torch.tensor([0.625, 0.375, 1.0, 0.875]))
    torch.testing.assert_close(boxes[0, 2], torch.tensor([0.125, 0.0, 0.625, 0.375]))


def test_dense_boxes_place_centres_inside_cells():
    size = torch.zeros(1, 2, 2, 2)
    size[0, 0], size[0, 1] = 1.0, 0.5  # one cell wide, half a cell tall
    offset = torch.full((1, 2, 2, 2), 0.25)
    boxes = dense_boxes(size, offset)[0]  # cells in row-major order
    torch.testing.assert_close(boxes[3], torch.tensor([0.375, 0.5, 0.875, 0.75]))


def test_roi_align_of_whole_image_is_the_mean_over_each_bin():
    fmap = torch.randn(2, 5, 8, 8)
    whole = torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(2, 1, 4)
    pooled = roi_align(fmap, whole, pool=2, sampling=4)  # (2, 1, 2, 2, 5)
    expected = F.avg_pool2d(fmap, 4).permute(0, 2, 3, 1)  # (2, 2, 2, 5)
    torch.testing.assert_close(pooled[:, 0], expected)


def test_roi_align_samples_inside_the_box():
    fmap = torch.arange(16.0).view(1, 1, 4, 4)  # value = 4 * row + col
    box = torch.tensor([[[0.5, 0.0, 1.0, 0.5]]])  # top-right quarter: rows 0-1, cols 2-3
    pooled = roi_align(fmap, box, pool=2, sampling=1)[0, 0, :, :, 0]
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 3.0], [6.0, 7.0]]))


def test_centre_targets_mark_each_object_centre():
    t = targets_two_images()
    heat, index, offset = centre_heat_targets(t["boxes"], t["valid"].float(), 16, 16)
    assert heat.shape == (2, 16, 16)
    # object 0 of image 0: centre (0.2, 0.2) * 16 = cell (3, 3), offset 0.2
    assert index[0, 0] == 3 * 16 + 3 and heat[0, 3, 3] == 1.0
    torch.testing.assert_close(offset[0, 0], torch.tensor([0.2, 0.2]))
    assert int((heat[1] == 1.0).sum()) == 1  # the padded slot adds nothing
    assert 0 < heat[0, 3, 4] < 1


def test_loss_terms_and_training_lowers_the_loss():
    net = tiny_net(head_channels=16)
    net.train()
    images, targets = torch.rand(2, 3, 64, 64), targets_two_images()
    loss, terms = net.loss(images, targets)
    assert set(terms) == {"focal", "size", "offset", "attributes"}
    assert all(v > 0 for v in terms.values())
    assert not any(p.requires_grad for p in net.encoder.parameters())
    with torch.no_grad():
        maps = net.feature_maps(images)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(20):
        loss, _ = net.loss_from_maps(*maps, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final, _ = net.loss(images, targets)
    assert final.item() < 0.5 * terms_total(terms, net.config)
    assert not net.encoder.training  # the frozen encoder keeps its BatchNorm statistics


def terms_total(terms: dict[str, float], cfg: RegionConfig) -> float:
    return (terms["focal"] + cfg.size_weight * terms["size"]
            + cfg.offset_weight * terms["offset"] + cfg.attribute_weight * terms["attributes"])


def test_config_round_trips_through_a_dict():
    cfg = RegionConfig(max_proposals=4, pool=3, encoder=TINY)
    again = RegionConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.encoder.channels == (8, 16, 16)


def test_onnx_export_matches_pytorch_with_symbolic_batch(tmp_path):
    net = tiny_net()
    path = tmp_path / "regions.onnx"
    torch.onnx.export(net, (torch.rand(2, 3, 64, 64),), str(path), dynamo=True,
                      opset_version=18, input_names=["image"],
                      output_names=["boxes", "scores", "features"],
                      dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_outputs()[2].shape == ["batch", 7, 24]
    images = np.random.default_rng(1).random((5, 3, 64, 64), dtype=np.float32)
    onnx_out = sess.run(None, {"image": images})
    with torch.no_grad():
        torch_out = net(torch.from_numpy(images))
    for name, o, t in zip(("boxes", "scores", "features"), onnx_out, torch_out, strict=True):
        np.testing.assert_allclose(o, t.numpy(), atol=1e-4, err_msg=name)
