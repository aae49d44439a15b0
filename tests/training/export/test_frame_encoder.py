"""The video bundles' frame encoder graph keeps its convolutions in half precision."""

import copy

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from models.encoder import EncoderConfig, ImageEncoder
from models.lrcn import encode_frames
from training.export.frames import export_frame_encoder, fold_batch_norms


def trained_encoder() -> ImageEncoder:
    torch.manual_seed(0)
    encoder = ImageEncoder(EncoderConfig(out_dim=8, channels=(8, 16, 32)))
    encoder.train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for _ in range(3):
            encoder(torch.rand(6, 3, 16, 16) * 3)
    return encoder.eval()


def test_folding_batch_norms_changes_no_feature():
    encoder = trained_encoder()
    folded = fold_batch_norms(copy.deepcopy(encoder))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(encode_frames(folded, x, 2), encode_frames(encoder, x, 2),
                                   atol=1e-5, rtol=1e-4)


def test_frame_encoder_graph_stores_its_convolutions_in_half(tmp_path):
    encoder = trained_encoder()
    before = copy.deepcopy(encoder.state_dict())
    export_frame_encoder(encoder, 2, tmp_path / "frame_encoder.onnx", 16)
    graph = onnx.load(str(tmp_path / "frame_encoder.onnx")).graph
    big = [numpy_helper.to_array(t) for t in graph.initializer
           if numpy_helper.to_array(t).size >= 1024]
    assert big and all(a.dtype == np.float16 for a in big)
    # the encoder it was given is left as it was (the folding works on a copy)
    for name, value in encoder.state_dict().items():
        torch.testing.assert_close(value, before[name])
