import pytest
import torch
import torch.nn.functional as F

from models.encoder import EncoderConfig
from models.vse import VSE, VSEConfig, ranking_loss

V, E, W = 11, 6, 5


def tiny_model(layer_norm: bool = False, seed: int = 0, **overrides) -> VSE:
    torch.manual_seed(seed)
    config = VSEConfig(vocab_size=V, word_dim=W, embed_dim=E, layer_norm=layer_norm,
                       encoder=EncoderConfig(out_dim=4, channels=(4, 4, 4)), **overrides)
    return VSE(config)


def test_sum_loss_adds_every_violating_negative_in_both_directions():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sentences = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # s = [[0.6, 0.0], [0.8, 1.0]]; margin 0.5
    # image 0 vs sentence 1: [0.5 - 0.6 + 0.0]+ = 0;  image 1 vs sentence 0: [0.5 - 1 + 0.8]+ = 0.3
    # sentence 0 vs image 1: [0.5 - 0.6 + 0.8]+ = 0.7; sentence 1 vs image 0: [0.5 - 1 + 0]+ = 0
    loss = ranking_loss(images, sentences, margin=0.5, max_violation=False)
    torch.testing.assert_close(loss, torch.tensor((0.3 + 0.7) / 2))


def test_max_violation_takes_only_the_hardest_negative():
    images = torch.eye(3)
    sentences = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.5, 0.5]])
    sentences = F.normalize(sentences, dim=-1)
    s = images @ sentences.T
    margin = 0.2
    hinge = (margin + s - s.diagonal()[:, None]).clamp(min=0).fill_diagonal_(0)
    hinge_t = (margin + s - s.diagonal()[None, :]).clamp(min=0).fill_diagonal_(0)
    expected = hinge.max(1).values.mean() + hinge_t.max(0).values.mean()
    loss = ranking_loss(images, sentences, margin=margin, max_violation=True)
    torch.testing.assert_close(loss, expected)
    summed = ranking_loss(images, sentences, margin=margin, max_violation=False)
    assert summed > loss > 0


def test_positive_mask_keeps_two_sentences_of_one_image_from_being_negatives():
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # the same image twice
    sentences = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    unmasked = ranking_loss(images, sentences, margin=0.2, max_violation=True)
    torch.testing.assert_close(unmasked, torch.tensor(0.4))  # each pair "violates" by the margin
    same = torch.ones(2, 2, dtype=torch.bool)
    masked = ranking_loss(images, sentences, margin=0.2, max_violation=True, positive=same)
    assert masked.item() == 0.0


@pytest.mark.parametrize("layer_norm", [False, True])
def test_text_embedding_is_the_unit_state_after_each_sentences_last_word(layer_norm):
    model = tiny_model(layer_norm).eval()
    tokens = torch.tensor([[4, 5, 6, 0, 0], [7, 8, 9, 10, 4], [5, 0, 0, 0, 0]])
    lengths = torch.tensor([3, 5, 1])
    out = model.embed_text(tokens, lengths)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    for row in range(3):
        n = int(lengths[row])
        alone = model.embed_text(tokens[row:row + 1, :n], lengths[row:row + 1])
        torch.testing.assert_close(out[row:row + 1], alone)
    # what follows a sentence's length is ignored
    noisy = tokens.clone()
    noisy[0, 3:] = 9
    torch.testing.assert_close(model.embed_text(noisy, lengths), out)


def test_layer_norm_switches_the_gru_not_the_rest():
    plain, normed = tiny_model(False), tiny_model(True)
    extra = set(normed.state_dict()) - set(plain.state_dict())
    assert extra == {"gru.ln_ih.weight", "gru.ln_ih.bias", "gru.ln_hh.weight", "gru.ln_hh.bias"}
    assert set(plain.state_dict()) - set(normed.state_dict()) == {"gru.bias_ih", "gru.bias_hh"}


def test_image_encoder_is_frozen_and_stays_in_eval_mode():
    model = tiny_model().train()
    assert not model.encoder.training
    assert all(not p.requires_grad for p in model.encoder.parameters())
    images = torch.rand(3, 3, 16, 16)
    features = model.image_features(images)
    assert features.shape == (3, 2 * 4) and not features.requires_grad
    emb = model.embed_images(images)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    tokens, lengths = torch.tensor([[4, 5], [6, 7], [8, 0]]), torch.tensor([2, 2, 1])
    scores, loss = model(features, tokens, lengths)
    loss.backward()
    assert scores.shape == (3, 3)
    assert model.image_proj.weight.grad is not None and model.gru.weight_hh.grad is not None
    assert all(p.grad is None for p in model.encoder.parameters())


def test_training_steps_separate_matching_pairs():
    model = tiny_model(loss="sum")
    g = torch.Generator().manual_seed(1)
    features = torch.rand(6, 8, generator=g)
    tokens = torch.randint(4, V, (6, 4), generator=g)
    lengths = torch.full((6,), 4)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    first = None
    for _ in range(60):
        scores, loss = model(features, tokens, lengths)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first
    assert (scores.argmax(dim=1) == torch.arange(6)).all()


def test_config_rejects_an_unknown_loss():
    with pytest.raises(ValueError, match="loss must be one of"):
        VSEConfig(loss="triplet")
