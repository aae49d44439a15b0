import json

import pytest
import torch
import torch.nn.functional as F

from models.encoder import EncoderConfig
from models.lrcn import (
    ActivityConfig,
    ActivityRecognizer,
    LateFusion,
    LSTMEncoderDecoder,
    MeanPoolDecoder,
    VideoCaptionConfig,
    build_video_caption_model,
    encode_frames,
    frame_feature_dim,
    motion_frames,
)

B, T, S, C, V, L = 3, 5, 16, 4, 11, 6
TINY_ENCODER = EncoderConfig(out_dim=8, channels=(4, 8, 8))


def clips(seed: int = 0) -> torch.Tensor:
    return torch.rand(B, T, 3, S, S, generator=torch.Generator().manual_seed(seed))


def activity_model(input: str = "rgb", temporal: str = "lstm", seed: int = 0,
                   **overrides) -> ActivityRecognizer:
    torch.manual_seed(seed)
    config = ActivityConfig(num_classes=C, input=input, temporal=temporal, hidden_dim=6,
                            dropout=0.0, encoder=TINY_ENCODER, **overrides)
    return ActivityRecognizer(config).eval()


def caption_model(arch: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = VideoCaptionConfig(arch=arch, vocab_size=V, embed_dim=5, hidden_dim=7, dropout=0.0,
                                encoder=TINY_ENCODER, **overrides)
    return build_video_caption_model(config).eval()


def captions(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing input and target, rows with 6, 3 and 4 targets (pad 0)."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(3, V, (B, L), generator=g)
    valid = torch.arange(L)[None, :] < torch.tensor([6, 3, 4])[:, None]
    captions_out = torch.where(valid, words, 0)
    captions_in = torch.cat([torch.ones(B, 1, dtype=torch.long), captions_out[:, :-1]], dim=1)
    return captions_in, captions_out


# --- activity recognition ------------------------------------------------------------

@pytest.mark.parametrize("input, frames", [("rgb", T), ("motion", T - 1)])
@pytest.mark.parametrize("temporal", ["lstm", "single-frame"])
def test_activity_shapes_and_loss(input, frames, temporal):
    model = activity_model(input, temporal)
    labels = torch.tensor([0, 3, 1])
    logits, loss = model(clips(), labels)
    assert logits.shape == (B, frames, C)
    # The loss puts the clip's label on every frame.
    expected = F.cross_entropy(logits.reshape(-1, C), labels.repeat_interleave(frames))
    torch.testing.assert_close(loss, expected)
    probs = model.clip_probs(clips())
    assert probs.shape == (B, C)
    torch.testing.assert_close(probs, F.softmax(logits, dim=-1).mean(dim=1))
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(B))
    assert model(clips())[1] is None


def test_motion_frames_are_frame_differences_in_the_unit_range():
    x = clips()
    motion = motion_frames(x)
    assert motion.shape == (B, T - 1, 3, S, S)
    torch.testing.assert_close(motion[:, 2], 0.5 + 0.5 * (x[:, 3] - x[:, 2]))
    assert motion.min() >= 0.0 and motion.max() <= 1.0
    still = x[:, :1].expand(-1, T, -1, -1, -1)
    torch.testing.assert_close(motion_frames(still), torch.full((B, T - 1, 3, S, S), 0.5))


def test_single_frame_baseline_ignores_frame_order_and_the_lstm_does_not():
    x = clips()
    order = torch.tensor([4, 2, 0, 3, 1])
    baseline, lrcn = activity_model(temporal="single-frame"), activity_model(temporal="lstm")
    torch.testing.assert_close(baseline.clip_probs(x[:, order]), baseline.clip_probs(x))
    # A single-frame prediction depends on its frame alone.
    torch.testing.assert_close(baseline(x[:, order])[0], baseline(x)[0][:, order])
    assert not torch.allclose(lrcn.clip_probs(x[:, order]), lrcn.clip_probs(x), atol=1e-6)
    # The LSTM's prediction at frame t depends on the frames before it only.
    prefix, _ = lrcn(x[:, :3])
    torch.testing.assert_close(prefix, lrcn(x)[0][:, :3])


def test_classify_step_unrolled_gives_the_forward_scores():
    model = activity_model("motion", "lstm")
    x = clips(1)
    features = model.frame_features(model.frame_inputs(x))  # (B, T - 1, D)
    state = model.initial_state(B, like=features)
    assert set(state) == set(model.state_names) == {"h", "c", "prev"}  # frame_diff: default
    steps = []
    for t in range(features.shape[1]):
        scores, state = model.classify_step(features[:, t], state)
        steps.append(scores)
    torch.testing.assert_close(torch.stack(steps, dim=1), model(x)[0])
    assert activity_model(temporal="single-frame").state_names == ()


def test_late_fusion_weighs_the_two_streams():
    rgb, motion = activity_model("rgb", seed=1), activity_model("motion", seed=2)
    x = clips()
    fused = LateFusion(rgb, motion, rgb_weight=0.25)(x)
    torch.testing.assert_close(fused, 0.25 * rgb.clip_probs(x) + 0.75 * motion.clip_probs(x))
    torch.testing.assert_close(fused.sum(dim=-1), torch.ones(B))
    with pytest.raises(ValueError, match="RGB model and a motion model"):
        LateFusion(motion, rgb)
    with pytest.raises(ValueError, match="rgb_weight"):
        LateFusion(rgb, motion, rgb_weight=1.5)


def test_frozen_encoder_gets_no_gradient_and_keeps_its_statistics():
    model = activity_model(freeze_encoder=True).train()
    running_mean = model.encoder.backbone.stem[1].running_mean.clone()
    _, loss = model(clips(), torch.tensor([0, 1, 2]))
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.head.weight.grad is not None and model.lstm.weight_ih.grad is not None
    torch.testing.assert_close(model.encoder.backbone.stem[1].running_mean, running_mean)
    assert not model.encoder.training


def test_activity_config_validates_and_survives_json():
    with pytest.raises(ValueError, match="input"):
        ActivityConfig(input="flow")
    with pytest.raises(ValueError, match="temporal"):
        ActivityConfig(temporal="gru")
    config = ActivityConfig(input="motion", temporal="single-frame", encoder=TINY_ENCODER)
    assert ActivityConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# --- video description ---------------------------------------------------------------

ARCHS = [("lstm-encoder", LSTMEncoderDecoder), ("mean-pool", MeanPoolDecoder)]


@pytest.mark.parametrize("arch, cls", ARCHS)
def test_caption_factory_and_encoded_shapes(arch, cls):
    model = caption_model(arch)
    assert isinstance(model, cls)
    context, state = model.encode(clips())
    assert set(state) == set(model.state_names) == {"h", "c"}
    assert state["h"].shape == state["c"].shape == (B, 7)
    if arch == "lstm-encoder":
        assert context is None and model.context_names == ()
    else:
        assert context.shape == (B, 1, 8) and model.context_names == ("context",)
    (features,) = model.image_features(clips())
    assert features.shape == (B, T, 8)


@pytest.mark.parametrize("arch", ["lstm-encoder", "mean-pool"])
def test_teacher_forced_logits_equal_stepwise_decoding(arch):
    model = caption_model(arch)
    x = clips(2)
    captions_in, captions_out = captions()
    logits, loss = model(x, captions_in, captions_out)
    assert logits.shape == (B, L, V)
    context, state = model.encode(x)
    steps = []
    for t in range(L):
        log_probs, state, alpha = model.step(captions_in[:, t], state, context)
        assert alpha is None
        steps.append(log_probs)
    torch.testing.assert_close(torch.stack(steps, dim=1), F.log_softmax(logits, dim=-1))
    # The loss is the token-averaged cross entropy over non-pad targets.
    mask = captions_out != 0
    expected = F.cross_entropy(logits[mask], captions_out[mask])
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("arch", ["lstm-encoder", "mean-pool"])
def test_precomputed_features_encode_and_train_like_clips(arch):
    model = caption_model(arch)
    x = clips(3)
    features = model.image_features(x)
    (context_a, state_a), (context_b, state_b) = model.encode(x), model.encode_features(*features)
    torch.testing.assert_close(state_a, state_b)
    if context_a is not None:
        torch.testing.assert_close(context_a, context_b)
    captions_in, captions_out = captions()
    torch.testing.assert_close(model(features, captions_in, captions_out)[1],
                               model(x, captions_in, captions_out)[1])


def test_encoder_decoder_depends_on_frame_order_and_mean_pool_does_not():
    x = clips(4)
    order = torch.tensor([1, 0, 4, 3, 2])
    encoder_decoder, mean_pool = caption_model("lstm-encoder"), caption_model("mean-pool")
    captions_in, _ = captions()
    torch.testing.assert_close(mean_pool(x[:, order], captions_in)[0],
                               mean_pool(x, captions_in)[0])
    assert not torch.allclose(encoder_decoder(x[:, order], captions_in)[0],
                              encoder_decoder(x, captions_in)[0], atol=1e-6)


def test_every_caption_parameter_learns_unless_the_encoder_is_frozen():
    for frozen in (False, True):
        model = caption_model("lstm-encoder", freeze_encoder=frozen).train()
        captions_in, captions_out = captions()
        model(clips(), captions_in, captions_out)[1].backward()
        for name, p in model.named_parameters():
            assert (p.grad is None) == (frozen and name.startswith("encoder.")), name


def test_video_caption_config_validates_and_survives_json():
    with pytest.raises(ValueError, match="arch"):
        VideoCaptionConfig(arch="s2vt")
    config = VideoCaptionConfig(arch="mean-pool", vocab_size=V, encoder=TINY_ENCODER)
    assert VideoCaptionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# --- frame features on a coarse grid ------------------------------------------------

def test_frame_grid_averages_the_annotation_grid_cell_by_cell():
    encoder = activity_model().encoder
    x = clips(5)
    pooled, cells = encoder(x.flatten(0, 1))  # cells: (B*T, 2*2 = 4, 8) at S = 16
    torch.testing.assert_close(encode_frames(encoder, x, 1), pooled.view(B, T, -1))
    torch.testing.assert_close(encode_frames(encoder, x, 2), cells.reshape(B, T, -1))
    bigger = x.repeat_interleave(2, -1).repeat_interleave(2, -2)  # S = 32: a 4 x 4 map
    coarse = encode_frames(encoder, bigger, 2)
    assert coarse.shape == (B, T, 4 * 8) and frame_feature_dim(TINY_ENCODER, 2) == 32
    # The first cell of a 2 x 2 grid over a 4 x 4 map is the mean of its top-left 2 x 2.
    _, big = encoder(bigger.flatten(0, 1))
    top_left = big.view(B * T, 4, 4, -1)[:, :2, :2].mean(dim=(1, 2))
    torch.testing.assert_close(coarse[:, :, :8].reshape(B * T, -1), top_left)


@pytest.mark.parametrize("temporal", ["lstm", "single-frame"])
def test_grid_features_and_frame_embedding_feed_the_classifier(temporal):
    model = activity_model("rgb", temporal, frame_grid=2, frame_embed_dim=5)
    features = model.frame_features(clips())
    assert features.shape == (B, T, 32)
    assert model.frame_embed[-2].in_features == 32 and model.head.in_features == (
        6 if temporal == "lstm" else 5)
    logits, _ = model(clips())
    torch.testing.assert_close(logits, model.frame_logits(features))
    with pytest.raises(ValueError, match="frame_grid"):
        ActivityConfig(frame_grid=0)


@pytest.mark.parametrize("arch", ["lstm-encoder", "mean-pool"])
def test_caption_models_read_grid_features(arch):
    model = caption_model(arch, frame_grid=2, frame_embed_dim=4)
    (features,) = model.image_features(clips())
    assert features.shape == (B, T, model.feature_dim) == (B, T, 32)
    context, state = model.encode_features(features)
    if arch == "lstm-encoder":
        unrolled = None
        for t in range(T):
            unrolled = model.encode_step(features[:, t], unrolled)
        assert set(unrolled) == {"h", "c", "prev"}  # the decoder gets h and c
        torch.testing.assert_close(state, {k: unrolled[k] for k in ("h", "c")})
    else:
        torch.testing.assert_close(context, features.mean(dim=1, keepdim=True))


def test_activity_forward_on_precomputed_features_equals_forward_on_clips():
    model = activity_model("motion", "lstm", frame_grid=2)
    x, labels = clips(6), torch.tensor([2, 0, 1])
    features = model.frame_features(model.frame_inputs(x))
    from_features, loss_a = model((features,), labels)
    from_clips, loss_b = model(x, labels)
    torch.testing.assert_close(from_features, from_clips)
    torch.testing.assert_close(loss_a, loss_b)


def test_frame_norm_normalises_each_frames_features_before_the_embedding():
    model = activity_model("rgb", "lstm", frame_grid=2, frame_embed_dim=5, frame_norm=True)
    norm, linear = model.frame_embed[0], model.frame_embed[1]
    assert isinstance(norm, torch.nn.LayerNorm) and norm.normalized_shape == (32,)
    features = model.frame_features(clips())
    # Scaling a frame's features changes nothing once they are normalised.
    torch.testing.assert_close(model.frame_logits(features * 7.0 + 3.0),
                               model.frame_logits(features), atol=1e-4, rtol=1e-4)
    assert linear.in_features == 32
    mean_pool = caption_model("mean-pool", frame_grid=2, frame_norm=True)
    captions_in, _ = captions()
    (f,) = mean_pool.image_features(clips())
    torch.testing.assert_close(mean_pool((f * 5.0,), captions_in)[0],
                               mean_pool((f,), captions_in)[0], atol=1e-4, rtol=1e-4)


def test_batch_frame_norm_standardises_every_feature_over_the_frames_of_the_batch():
    model = activity_model("rgb", "lstm", frame_grid=2, frame_embed_dim=5, frame_diff=False)
    assert model.config.frame_norm == "batch"  # the default
    norm = model.frame_embed[0]
    assert isinstance(norm, torch.nn.BatchNorm1d) and norm.num_features == 32
    features = model.frame_features(clips())
    # In training, a component every frame shares and a per-feature scale are gone.
    shift, scale = torch.randn(32) * 50, torch.rand(32) * 10 + 0.1
    model.train()
    torch.testing.assert_close(model.frame_logits(features * scale + shift),
                               model.frame_logits(features), atol=1e-3, rtol=1e-3)
    # The statistics come from all frames of all clips at once (B x T rows).
    out = model.frame_embed[0](features)
    torch.testing.assert_close(out.flatten(0, 1).mean(0), torch.zeros(32), atol=1e-5, rtol=0)
    # At eval time one step on a frame is what the unrolled model does with it.
    model.eval()
    logits = model.frame_logits(features)
    state = model.initial_state(B, like=features)
    first, _ = model.classify_step(features[:, 0], state)
    torch.testing.assert_close(first, logits[:, 0])
    encoder = caption_model("lstm-encoder", frame_grid=2, frame_embed_dim=5).eval()
    (f,) = encoder.image_features(clips())
    _, state = encoder.encode_features(f)
    unrolled = None
    for t in range(T):
        unrolled = encoder.encode_step(f[:, t], unrolled)
    torch.testing.assert_close(state, {k: unrolled[k] for k in ("h", "c")})


def test_frame_diff_feeds_the_change_since_the_previous_frame_through_the_state():
    model = activity_model("rgb", "lstm", frame_grid=2, frame_embed_dim=5, frame_diff=True)
    assert model.state_names == ("h", "c", "prev")
    features = model.frame_features(clips())
    model.train()
    model.frame_logits(features)  # running statistics of the change
    model.eval()
    logits = model.frame_logits(features)
    state = model.initial_state(B, like=features)
    assert state["prev"].shape == (B, 6) and not state["prev"].any()
    for t in range(T):
        scores, state = model.classify_step(features[:, t], state)
        torch.testing.assert_close(scores, logits[:, t])
    with pytest.raises(ValueError, match="frame_diff"):
        ActivityConfig(temporal="single-frame", frame_diff=True)


def test_cell_max_adds_the_maximum_over_the_grid_cells():
    model = caption_model("lstm-encoder", frame_grid=2, frame_embed_dim=4, cell_max=True)
    (features,) = model.image_features(clips())  # (B, T, 4 cells x 8)
    joined = model.frame_embed[0](features)
    assert joined.shape == (B, T, 40)
    torch.testing.assert_close(joined[..., 32:], features.view(B, T, 4, 8).amax(dim=2))
    assert model.frame_embed[-2].in_features == 40


def test_configs_saved_before_batch_norm_keep_their_frame_normalisation():
    saved = ActivityConfig(encoder=TINY_ENCODER).to_dict()
    del saved["frame_norm"], saved["frame_diff"]  # saved before the fields existed
    assert ActivityConfig.from_dict(saved).frame_norm is None
    assert ActivityConfig.from_dict(saved).frame_diff is False
    assert ActivityConfig(encoder=TINY_ENCODER).frame_diff is True  # new: on with the LSTM
    assert ActivityConfig(temporal="single-frame").frame_diff is False
    assert ActivityConfig.from_dict({**saved, "frame_norm": True}).frame_norm == "layer"
    assert ActivityConfig.from_dict({**saved, "frame_norm": False}).frame_norm is None
    caption = VideoCaptionConfig(encoder=TINY_ENCODER).to_dict()
    assert caption["frame_norm"] == "batch"
    assert caption["frame_diff"] is True and caption["cell_max"] is True
    del caption["frame_norm"], caption["frame_diff"], caption["cell_max"]
    old_caption = VideoCaptionConfig.from_dict(caption)
    assert (old_caption.frame_norm, old_caption.frame_diff, old_caption.cell_max) == \
        (None, False, False)
    assert VideoCaptionConfig(arch="mean-pool").frame_diff is False
    old = ActivityRecognizer(ActivityConfig.from_dict({**saved, "frame_norm": True}))
    assert isinstance(old.frame_embed, torch.nn.LayerNorm) or \
        isinstance(old.frame_embed[0], torch.nn.LayerNorm)
    with pytest.raises(ValueError, match="frame_norm"):
        ActivityConfig(frame_norm="group")


def test_fed_encoding_is_the_decoders_context_at_every_step():
    model = caption_model("lstm-encoder", feed_encoding=True)
    assert model.context_names == ("context",)
    x = clips(7)
    context, state = model.encode(x)
    torch.testing.assert_close(context[:, 0], state["h"])
    captions_in, captions_out = captions()
    logits, _ = model(x, captions_in, captions_out)
    steps = []
    for t in range(L):
        log_probs, state, _ = model.step(captions_in[:, t], state, context)
        steps.append(log_probs)
    torch.testing.assert_close(torch.stack(steps, dim=1), F.log_softmax(logits, dim=-1))
    # The context matters: another clip's encoding changes the next word's scores.
    other, _ = model.encode(clips(8))
    start = model.encode(x)[1]
    assert not torch.allclose(model.step(captions_in[:, 0], start, other)[0],
                              model.step(captions_in[:, 0], start, context)[0])
