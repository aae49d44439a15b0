"""Karpathy & Fei-Fei's m-RNN generator: Eq. 13, with the image bias at t = 1 only."""

import pytest
import torch
import torch.nn.functional as F

from models.captioners import build_caption_model
from models.encoder import EncoderConfig
from models.mrnn import MultimodalRNN, MultimodalRNNConfig

V, B, T, S = 13, 3, 5, 32


def tiny_model(seed: int = 0, **overrides) -> MultimodalRNN:
    torch.manual_seed(seed)
    cfg = MultimodalRNNConfig(vocab_size=V, embed_dim=8, hidden_dim=12, dropout=0.0,
                              encoder=EncoderConfig(out_dim=8, channels=(4, 8, 8)), **overrides)
    return build_caption_model(cfg)


def captions(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.ones(B, 1, dtype=torch.long),
                      torch.randint(3, V, (B, T - 1), generator=g)], dim=1)


def reference_logits(model: MultimodalRNN, images: torch.Tensor,
                     captions_in: torch.Tensor) -> torch.Tensor:
    """Eq. 13 of Karpathy & Fei-Fei 2015 written out, with the indicator 1(t = 1); CNN(I)
    is the max-pooled grid of the frozen encoder, standardised across images. With
    image_every_step b_v is added at every t (Mao et al.'s m-RNN)."""
    _, grid = model.encoder(images)
    cnn = model.image.norm(grid.amax(dim=1))
    b_v = cnn @ model.image_bias.weight.T + model.image_bias.bias
    h = torch.zeros(images.shape[0], model.config.hidden_dim)
    out = []
    for t in range(captions_in.shape[1]):
        x = model.embed(captions_in[:, t])
        pre = x @ model.input.weight.T + model.input.bias + h @ model.recurrent.weight.T
        pre = pre + (b_v if t == 0 or model.config.image_every_step else 0.0)
        if model.config.layer_norm:  # Ba et al. 2016, Eq. 4: the whole summed input
            mu, var = pre.mean(-1, keepdim=True), pre.var(-1, unbiased=False, keepdim=True)
            pre = (pre - mu) / torch.sqrt(var + model.norm.eps)
            pre = pre * model.norm.weight + model.norm.bias
        h = torch.relu(pre)
        out.append(h @ model.out.weight.T + model.out.bias)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_teacher_forcing_is_eq_13_with_the_image_bias_at_the_first_step_only(layer_norm):
    model = tiny_model(layer_norm=layer_norm).eval()
    if layer_norm:  # gains and biases away from 1 and 0, so that the test sees them
        torch.nn.init.uniform_(model.norm.weight, 0.5, 1.5)
        torch.nn.init.uniform_(model.norm.bias, -0.5, 0.5)
    images = torch.rand(B, 3, S, S)
    caps = captions()
    with torch.no_grad():
        logits, _ = model(images, caps)
        torch.testing.assert_close(logits, reference_logits(model, images, caps))


def test_the_image_reaches_later_steps_only_through_the_first_hidden_state():
    model = tiny_model().eval()
    caps = captions()
    with torch.no_grad():
        _, state_a = model.encode(torch.rand(B, 3, S, S))
        _, state_b = model.encode(torch.rand(B, 3, S, S))
        assert (state_a["h"] == 0).all()
        assert not torch.allclose(state_a["image_bias"], state_b["image_bias"])
        _, after_a, _ = model.step(caps[:, 0], state_a, None)
        assert (after_a["image_bias"] == 0).all()  # the bias is spent on step 1
        # Image B's bias at step 2 would change the step; the recurrence never adds it there.
        h1 = after_a["h"]
        from_a, _, _ = model.step(caps[:, 1], after_a, None)
        with_b = model.step(caps[:, 1], {"h": h1, "image_bias": state_b["image_bias"]}, None)[0]
        assert not torch.allclose(from_a, with_b)
        again, _, _ = model.step(caps[:, 1], {"h": h1, "image_bias": torch.zeros_like(h1)}, None)
        torch.testing.assert_close(from_a, again)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_step_by_step_decoding_matches_teacher_forcing(layer_norm):
    model = tiny_model(layer_norm=layer_norm).eval()
    images, caps = torch.rand(B, 3, S, S), captions()
    with torch.no_grad():
        logits, _ = model(images, caps)
        context, state = model.encode(images)
        assert context is None
        for t in range(T):
            log_probs, state, alpha = model.step(caps[:, t], state, context)
            assert alpha is None
            torch.testing.assert_close(log_probs, F.log_softmax(logits[:, t], dim=-1))


def test_precomputed_features_give_the_same_loss_and_leave_the_encoder_frozen():
    model = tiny_model().train()
    images, caps = torch.rand(B, 3, S, S), captions()
    targets = torch.cat([caps[:, 1:], torch.full((B, 1), 2)], dim=1)
    _, from_images = model(images, caps, targets)
    with torch.no_grad():
        features = model.image_features(images)
    _, from_features = model(features, caps, targets)
    torch.testing.assert_close(from_images, from_features)
    from_features.backward()
    assert not model.encoder.training  # BatchNorm keeps its pre-trained statistics
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    assert model.image_bias.weight.grad.abs().sum() > 0


def test_layer_norm_holds_every_step_at_one_scale_whatever_w_hh():
    """A ReLU recurrence with a large W_hh explodes over the caption; the LN one does not."""
    caps = torch.cat([captions()] * 4, dim=1)  # 20 steps
    images = torch.rand(B, 3, S, S)
    norms = {}
    for layer_norm in (False, True):
        model = tiny_model(layer_norm=layer_norm).eval()
        with torch.no_grad():
            model.recurrent.weight.mul_(8.0)
            _, state = model.encode(images)
            for t in range(caps.shape[1]):
                _, state, _ = model.step(caps[:, t], state, None)
        norms[layer_norm] = state["h"].norm(dim=-1).max().item()
    assert norms[False] > 1e3
    assert norms[True] < 2 * 12 ** 0.5  # at most about sqrt(H) for unit-scale LN outputs


def test_the_encoder_is_frozen_unless_it_is_fine_tuned():
    from models.captioners import trains_on_features

    images = torch.rand(B, 3, S, S)
    captions_in = captions()
    for train_encoder in (False, True):
        model = tiny_model(train_encoder=train_encoder).train()
        _, loss = model(images, captions_in, captions_in.roll(-1, dims=1))
        loss.backward()
        reached = [p.grad is not None for p in model.encoder.parameters()]
        assert all(reached) if train_encoder else not any(reached)
        assert model.encoder.training is train_encoder  # BatchNorm statistics adapt only then
        assert trains_on_features(model.config) is not train_encoder


def test_identity_recurrence_hands_the_image_on_until_trained():
    """IRNN init: W_hh = I, so a step adds the word to the state and keeps the rest; the
    image written at t = 1 changes every later state by the same amount while h stays
    positive."""
    model = tiny_model(recurrent_init="identity").eval()
    torch.testing.assert_close(model.recurrent.weight, torch.eye(12))
    with torch.no_grad():
        model.input.weight.zero_()
        model.input.bias.fill_(0.1)  # every word adds 0.1 to every unit
        model.image_bias.bias.fill_(5.0)  # b_v positive: no unit is cut by the ReLU
        _, state = model.encode(torch.rand(B, 3, S, S))
        b_v = state["image_bias"].clone()
        for t, token in enumerate(captions()[0], start=1):
            _, state, _ = model.step(token.expand(B), state, None)
            torch.testing.assert_close(state["h"], b_v + 0.1 * t)


def test_an_unknown_recurrent_init_is_refused():
    with pytest.raises(ValueError, match="recurrent_init"):
        MultimodalRNNConfig(recurrent_init="orthogonal")


def test_the_image_at_every_step_adds_b_v_to_each_step():
    model = tiny_model(image_every_step=True).eval()
    images, caps = torch.rand(B, 3, S, S), captions()
    with torch.no_grad():
        logits, _ = model(images, caps)
        torch.testing.assert_close(logits, reference_logits(model, images, caps))
        context, state = model.encode(images)
        for t in range(T):
            log_probs, state, _ = model.step(caps[:, t], state, context)
            torch.testing.assert_close(log_probs, F.log_softmax(logits[:, t], dim=-1))
        once = tiny_model().eval()
        once.load_state_dict(model.state_dict())
        assert not torch.allclose(once(images, caps)[0][:, 1:], logits[:, 1:])
