"""Bundles whose LSTMs read the change since the previous frame (frame_diff) carry it in
the step graphs' state, and the service's unrolled graphs give PyTorch's answers."""

import numpy as np
import torch
from tiny_video import ENCODER, FRAMES, SIZE, WORDS

from models.lrcn import (
    ActivityConfig,
    ActivityRecognizer,
    VideoCaptionConfig,
    build_video_caption_model,
)
from service.pipelines.activity import ActivityModel
from service.pipelines.video_caption import VideoCaptionModel
from training.data.tokenizer import WordVocab
from training.export.activity import Stream, write_activity_bundle
from training.export.video_caption import write_video_caption_bundle


def clips(seed: int, n: int = 3) -> torch.Tensor:
    return torch.from_numpy(
        np.random.default_rng(seed).random((n, FRAMES, 3, SIZE, SIZE), dtype=np.float32))


def with_trained_statistics(model: torch.nn.Module, run) -> torch.nn.Module:
    """BatchNorm running statistics of a few training passes, as after training."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            run(model)
    return model.eval()


def test_activity_bundle_with_frame_diff_is_the_torch_model(tmp_path):
    torch.manual_seed(0)
    x = clips(1)
    model = with_trained_statistics(ActivityRecognizer(ActivityConfig(
        num_classes=4, input="rgb", hidden_dim=6, frame_grid=2, frame_embed_dim=5,
        frame_diff=True, encoder=ENCODER)), lambda m: m(x))
    with torch.no_grad():
        model.head.weight.mul_(8.0)
    path = write_activity_bundle([Stream(model, 1.0)], tmp_path, "activity-diff", 1,
                                 image_size=SIZE, frames=FRAMES,
                                 class_names=["a", "b", "c", "d"], training={})
    pipeline = ActivityModel.from_bundle(path)
    assert pipeline.video.streams[0].state == ["h", "c", "prev"]
    with torch.no_grad():  # after the export, which rounds the weights to half
        want = model.clip_probs(x).numpy()
    got = pipeline.stream_frame_probs(x.numpy())["rgb"].mean(axis=1)
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_video_caption_bundle_with_frame_diff_hands_the_decoder_h_and_c(tmp_path):
    torch.manual_seed(4)
    vocab = WordVocab(WORDS)
    x = clips(2)
    model = with_trained_statistics(build_video_caption_model(VideoCaptionConfig(
        arch="lstm-encoder", vocab_size=len(vocab), embed_dim=6, hidden_dim=8, frame_grid=2,
        frame_embed_dim=6, feed_encoding=True, frame_diff=True, encoder=ENCODER)),
        lambda m: m.encode(x))
    path = write_video_caption_bundle(model, vocab, tmp_path, "video-caption-diff", 1,
                                      image_size=SIZE, frames=FRAMES, max_length=8,
                                      training={})
    pipeline = VideoCaptionModel.from_bundle(path)
    assert pipeline.encoder_state == ["h", "c", "prev"]
    state, context = pipeline.encode(x.numpy())
    assert set(state) == {"h", "c"}
    with torch.no_grad():
        want_context, want_state = model.encode(x)
    for name in ("h", "c"):
        np.testing.assert_allclose(state[name], want_state[name].numpy(), atol=1e-3)
    np.testing.assert_allclose(context["context"], want_context.numpy(), atol=1e-3)
