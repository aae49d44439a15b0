"""Alignment model: BRNN padding, Eq. 8 scores and the Eq. 9 loss (ONNX parity: tests/service)."""

import pytest
import torch

from models.alignment import (
    AlignmentConfig,
    AlignmentModel,
    length_mask,
    pair_scores,
    ranking_loss,
    reverse_within_length,
)

V, F, D = 20, 24, 8


def tiny_model() -> AlignmentModel:
    torch.manual_seed(0)
    return AlignmentModel(AlignmentConfig(vocab_size=V, feature_dim=F, embed_dim=8,
                                          hidden_dim=8, joint_dim=D)).eval()


def test_reverse_within_length_reverses_real_steps_only():
    x = torch.arange(10.0).view(2, 5, 1)
    r = reverse_within_length(x, torch.tensor([5, 3]))
    assert r[0, :, 0].tolist() == [4, 3, 2, 1, 0]
    assert r[1, :3, 0].tolist() == [7, 6, 5]
    assert torch.equal(reverse_within_length(r, torch.tensor([5, 3]))[1, :3], x[1, :3])


def test_word_vectors_ignore_padding_and_see_both_directions():
    model = tiny_model()
    tokens = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 9, 11]])
    with torch.no_grad():
        short = model.words(tokens[:1, :3], torch.tensor([3]))
        padded = model.words(tokens, torch.tensor([3, 5]))
        changed_last = model.words(torch.tensor([[5, 6, 8]]), torch.tensor([3]))
    torch.testing.assert_close(padded[0, :3], short[0])
    # The backward RNN carries the last word into the first word's vector.
    assert not torch.allclose(changed_last[0, 0], short[0, 0])
    assert padded.shape == (2, 5, D) and (padded >= 0).all()  # ReLU, Eq. 6


def test_pair_scores_is_sum_over_words_of_best_region():
    regions = torch.randn(2, 3, D)
    words = torch.randn(3, 4, D)
    mask, lengths = torch.tensor([[True, True, True], [True, False, True]]), torch.tensor([4, 2, 1])
    scores = pair_scores(regions, mask, words, lengths)
    for k in range(2):
        for l in range(3):
            dots = words[l, :lengths[l]] @ regions[k, mask[k]].T  # (T, R)
            torch.testing.assert_close(scores[k, l], dots.max(dim=1).values.sum())


def test_ranking_loss_matches_eq9_by_hand():
    s = torch.tensor([[3.0, 2.5, 0.0], [1.0, 2.0, 4.0], [0.0, 0.0, 1.0]])
    # rows: images, columns: sentences; diagonal: true pairs.
    by_sentence = (max(0, 2.5 - 3 + 1) + max(0, 0 - 3 + 1) + max(0, 1 - 2 + 1)
                   + max(0, 4 - 2 + 1) + 0 + 0)
    by_image = (max(0, 1 - 3 + 1) + 0 + max(0, 2.5 - 2 + 1) + max(0, 0 - 2 + 1)
                + 0 + max(0, 4 - 1 + 1))
    assert ranking_loss(s, 1.0).item() == pytest.approx((by_sentence + by_image) / 3)
    same = torch.zeros(3, 3, dtype=torch.bool)
    same[1, 2] = same[2, 1] = True  # sentence 2 also describes image 1: not a negative
    expected = by_sentence - 3 + by_image - 4
    assert ranking_loss(s, 1.0, same).item() == pytest.approx(expected / 3)


def test_loss_falls_when_training_on_one_batch():
    model = tiny_model().train()
    feats, num = torch.randn(6, 4, F), length_mask(torch.tensor([4, 4, 3, 4, 2, 4]), 4)
    tokens = torch.randint(4, V, (6, 5))
    lengths = torch.tensor([5, 4, 5, 3, 5, 2])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        _, loss = model(feats, num, tokens, lengths)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first

