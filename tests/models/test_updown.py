"""Bottom-Up and Top-Down captioner (Anderson et al. 2018) over tiny random regions."""

import pytest
import torch
import torch.nn.functional as F

from models.captioners import build_caption_model, caption_config
from models.encoder import EncoderConfig
from models.regions import RegionConfig
from models.updown import UpDownCaptioner, UpDownConfig

V, B, T, S, R, FEAT = 13, 3, 5, 32, 4, 6


def tiny_config(layer_norm: bool = False, with_regions: bool = True) -> UpDownConfig:
    regions = RegionConfig(max_proposals=R - 1, feature_dim=FEAT, head_channels=4,
                           encoder=EncoderConfig(out_dim=8, channels=(4, 8, 8)))
    return UpDownConfig(arch="updown", layer_norm=layer_norm, vocab_size=V, embed_dim=8,
                        hidden_dim=12, attention_dim=6, dropout=0.0, region_feature_dim=FEAT,
                        regions=regions.to_dict() if with_regions else None)


def tiny_model(layer_norm: bool = False, with_regions: bool = True) -> UpDownCaptioner:
    torch.manual_seed(0)
    return build_caption_model(tiny_config(layer_norm, with_regions))


def random_regions(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(B, R, 2, generator=g) * 0.5
    boxes = torch.cat([corner, corner + 0.5], dim=-1)
    return boxes, torch.rand(B, R, generator=g), torch.rand(B, R, FEAT, generator=g)


def captions(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.ones(B, 1, dtype=torch.long),
                      torch.randint(3, V, (B, T - 1), generator=g)], dim=1)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_step_by_step_decoding_matches_teacher_forcing(layer_norm):
    model = tiny_model(layer_norm, with_regions=False).eval()
    features, caps = random_regions(), captions()
    with torch.no_grad():
        logits, _ = model(features, caps)
        context, state = model.encode_features(*features)
        assert context.shape == (B, R, 12) and set(state) == {"h1", "c1", "h2", "c2"}
        assert all((s == 0).all() for s in state.values())
        for t in range(T):
            log_probs, state, alpha = model.step(caps[:, t], state, context)
            torch.testing.assert_close(log_probs, F.log_softmax(logits[:, t], dim=-1))
            assert alpha.shape == (B, R)
            torch.testing.assert_close(alpha.sum(-1), torch.ones(B))


def test_one_step_follows_the_papers_equations():
    model = tiny_model(with_regions=False).eval()
    boxes, scores, feats = random_regions()
    tokens = captions()[:, 1]
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(B, 12, generator=g) for k in ("h1", "c1", "h2", "c2")}
    with torch.no_grad():
        v = torch.relu(model.region_proj(torch.cat([feats, boxes], -1)))  # v_i
        x1 = torch.cat([state["h2"], v.mean(1), model.embed(tokens)], -1)  # Eq. 2
        h1, c1 = model.attention_lstm(x1, (state["h1"], state["c1"]))
        att = model.attention
        a = (torch.tanh(att.context_proj(v) + att.hidden_proj(h1)[:, None]) @
             att.score.weight.T).squeeze(-1)  # Eq. 3
        alpha = torch.softmax(a, -1)
        v_hat = (alpha[..., None] * v).sum(1)  # Eq. 4
        h2, _ = model.language_lstm(torch.cat([v_hat, h1], -1), (state["h2"], state["c2"]))
        expected = torch.log_softmax(model.out(h2), -1)  # Eq. 5-6
        log_probs, new_state, got_alpha = model.step(tokens, state, v)
    torch.testing.assert_close(log_probs, expected)
    torch.testing.assert_close(got_alpha, alpha)
    torch.testing.assert_close(new_state["h2"], h2)


def test_regions_are_a_set_permuting_them_permutes_only_the_attention():
    model = tiny_model(with_regions=False).eval()
    boxes, scores, feats = random_regions()
    perm = torch.tensor([2, 0, 3, 1])
    caps = captions()
    with torch.no_grad():
        context, state = model.encode_features(boxes, scores, feats)
        context_p, state_p = model.encode_features(boxes[:, perm], scores[:, perm],
                                                   feats[:, perm])
        for t in range(T):
            lp, state, alpha = model.step(caps[:, t], state, context)
            lp_p, state_p, alpha_p = model.step(caps[:, t], state_p, context_p)
            torch.testing.assert_close(lp_p, lp)
            torch.testing.assert_close(alpha_p, alpha[:, perm])


def test_encoding_images_runs_the_frozen_region_net():
    model = tiny_model().train()
    assert not model.region_net.training
    assert not any(p.requires_grad for p in model.region_net.parameters())
    images = torch.rand(2, 3, S, S)
    with torch.no_grad():
        features = model.image_features(images)
        assert features[0].shape == (2, R, 4) and features[2].shape == (2, R, FEAT)
        context, state = model.encode(images)
        context_f, state_f = model.encode_features(*features)
    torch.testing.assert_close(context, context_f)
    caps = captions()[:2]
    _, loss = model(features, caps, caps)
    loss.backward()
    assert model.region_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.region_net.parameters())


def test_a_captioner_without_regions_encodes_only_features():
    model = tiny_model(with_regions=False)
    assert model.region_net is None
    with pytest.raises(RuntimeError, match="precomputed"):
        model.encode(torch.rand(1, 3, S, S))
    with pytest.raises(ValueError, match="region_feature_dim"):
        build_caption_model(caption_config({"arch": "updown"}))
