"""The top-down VQA model on random region features (Anderson et al. 2018, §3.3)."""

import pytest
import torch
import torch.nn.functional as F

from models.vqa import (
    GatedTanh,
    RelationNetwork,
    UpDownVqa,
    VqaConfig,
    attention_loss,
    soft_score_loss,
)

B, R, FEAT, V, A = 3, 5, 12, 20, 7


def tiny(**overrides) -> UpDownVqa:
    torch.manual_seed(0)
    config = VqaConfig(vocab_size=V, num_answers=A, feature_dim=FEAT, embed_dim=8,
                       question_dim=16, attention_dim=16, joint_dim=24, **overrides)
    return UpDownVqa(config).eval()


def inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(B, R, 2, generator=g) * 0.5
    boxes = torch.cat([xy, xy + 0.1 + torch.rand(B, R, 2, generator=g) * 0.4], dim=-1)
    return {"features": torch.randn(B, R, FEAT, generator=g), "boxes": boxes,
            "scores": torch.rand(B, R, generator=g),
            "question": torch.randint(4, V, (B, 6), generator=g),
            "question_length": torch.tensor([6, 2, 4])}


def test_gated_tanh_is_tanh_times_sigmoid_gate():
    torch.manual_seed(0)
    layer = GatedTanh(5, 3)
    x = torch.randn(4, 5)
    w, b = layer.proj.weight, layer.proj.bias
    expected = torch.tanh(x @ w[:3].T + b[:3]) * torch.sigmoid(x @ w[3:].T + b[3:])
    torch.testing.assert_close(layer(x), expected)


def test_shapes_and_attention_is_a_distribution_over_regions():
    model = tiny()
    logits, attention, loss = model(**inputs())
    assert logits.shape == (B, A) and attention.shape == (B, R) and loss is None
    torch.testing.assert_close(attention.sum(1), torch.ones(B))
    assert (attention > 0).all()


def test_padding_after_the_question_length_changes_nothing():
    model = tiny()
    x = inputs()
    padded = dict(x, question=torch.cat([x["question"], torch.zeros(B, 4, dtype=torch.long)],
                                        dim=1))
    junk = x["question"].clone()
    junk[1, 2:] = 5  # words past question 1's length of 2
    with torch.no_grad():
        ref = model(**x)[0]
        torch.testing.assert_close(model(**padded)[0], ref)
        torch.testing.assert_close(model(**dict(x, question=junk))[0], ref)
        alone = model(**{k: v[1:2] for k, v in dict(x, question=x["question"][:, :2]).items()})
    torch.testing.assert_close(alone[0], ref[1:2])


def test_masked_regions_get_no_attention_and_do_not_matter():
    model = tiny(glimpses=1)
    x = inputs()
    mask = torch.ones(B, R, dtype=torch.bool)
    mask[0, 3:] = False
    with torch.no_grad():
        logits, attention, _ = model(**x, region_mask=mask)
        changed = dict(x, features=x["features"].clone())
        changed["features"][0, 3:] = 100.0
        logits2, _, _ = model(**changed, region_mask=mask)
    assert attention[0, 3:].eq(0).all()
    torch.testing.assert_close(attention[0, :3].sum(), torch.tensor(1.0))
    torch.testing.assert_close(logits2, logits)


def test_geometry_reaches_the_answer_only_when_enabled():
    x = inputs()
    moved = dict(x, boxes=x["boxes"].flip(1), scores=x["scores"].flip(1))
    with torch.no_grad():
        with_geometry = tiny(geometry=True)
        assert not torch.allclose(with_geometry(**x)[0], with_geometry(**moved)[0])
        without = tiny(geometry=False)
        torch.testing.assert_close(without(**x)[0], without(**moved)[0])


def test_loss_is_bce_summed_over_answers_and_trains():
    model = tiny(dropout=0.0).train()
    x = inputs()
    targets = torch.zeros(B, A)
    targets[0, 2], targets[1, 0], targets[2, 5] = 1.0, 1.0, 2 / 3
    logits, _, loss = model(**x, targets=targets)
    manual = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / B
    torch.testing.assert_close(loss, manual)
    torch.testing.assert_close(soft_score_loss(logits, targets), manual)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        model(**x, targets=targets)[2].backward()
        optimizer.step()
    assert model(**x, targets=targets)[2] < 0.5 * loss


def test_normalised_features_ignore_the_detector_scale():
    x = inputs()
    scaled = dict(x, features=x["features"] * 50.0)
    with torch.no_grad():
        model = tiny()
        torch.testing.assert_close(model(**scaled)[0], model(**x)[0], atol=1e-5, rtol=1e-4)
        raw = tiny(normalize_features=False)
        assert not torch.allclose(raw(**scaled)[0], raw(**x)[0], atol=1e-3)


def relation_inputs(seed: int = 2) -> tuple[torch.Tensor, ...]:
    x = inputs(seed)
    q = torch.randn(B, 16, generator=torch.Generator().manual_seed(seed))
    return x["features"], x["boxes"], x["scores"], q, torch.ones(B, R, dtype=torch.bool)


def test_relation_pairs_are_ordered_distinct_proposals():
    i, j = RelationNetwork.pair_indices(4)
    assert len(i) == 4 * 3
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == {
        (a, b) for a in range(4) for b in range(4) if a != b}


def test_relation_sum_is_order_free_over_proposals_and_ignores_the_whole_image():
    model = tiny(relations=True, relation_feature_dim=4, relation_dim=8)
    net = model.relations
    features, boxes, scores, q, mask = relation_inputs()
    with torch.no_grad():
        r = net(features, boxes, scores, q, mask)
        assert r.shape == (B, 8)
        order = torch.tensor([2, 0, 3, 1, R - 1])  # proposals shuffled, whole image last
        torch.testing.assert_close(
            net(features[:, order], boxes[:, order], scores[:, order], q, mask), r)
        # The last region (the whole image) takes part in no pair.
        other = features.clone()
        other[:, -1] = 100.0
        torch.testing.assert_close(net(other, boxes, scores, q, mask), r)
        # A pair's (i, j) order matters: g sees [o_i; o_j], so swapping which proposal is
        # "left" of the pair changes r unless the boxes are swapped too.
        swapped = boxes.clone()
        swapped[:, [0, 1]] = boxes[:, [1, 0]]
        assert not torch.allclose(net(features, swapped, scores, q, mask), r)


def test_relation_pairs_are_weighted_by_both_detection_scores():
    model = tiny(relations=True, relation_feature_dim=4, relation_dim=8)
    features, boxes, scores, q, mask = relation_inputs()
    empty = scores.clone()
    empty[:, 3] = 0.0  # a proposal with no object: none of its pairs count
    masked = mask.clone()
    masked[:, 3] = False
    with torch.no_grad():
        r = model.relations(features, boxes, empty, q, mask)
        changed = features.clone()
        changed[:, 3] = 100.0
        torch.testing.assert_close(model.relations(changed, boxes, empty, q, mask), r)
        torch.testing.assert_close(model.relations(changed, boxes, scores, q, masked), r)
        keep = torch.tensor([0, 1, 2, R - 1])
        torch.testing.assert_close(
            model.relations(features[:, keep], boxes[:, keep], scores[:, keep], q,
                            mask[:, keep]), r)


def test_relation_branch_reaches_the_answer_only_when_enabled():
    x = inputs()
    assert tiny().relations is None
    model = tiny(relations=True, relation_feature_dim=4, relation_dim=8)
    with torch.no_grad():
        base, _, _ = model(**x)
        model.f_r.proj.weight.zero_()
        model.f_r.proj.bias.zero_()
        without, _, _ = model(**x)
    assert not torch.allclose(base, without)


def test_attention_loss_is_the_mean_negative_log_of_the_targeted_regions():
    alpha = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]],
                          [[0.2, 0.3, 0.5], [0.3, 0.3, 0.4]]])
    targets = torch.tensor([[0, 2], [-1, 1]])  # the second question's first glimpse is free
    expected = -(torch.tensor([0.5, 0.8, 0.3]).log().mean())
    assert torch.allclose(attention_loss(alpha, targets), expected)
    assert attention_loss(alpha, torch.full((2, 2), -1)).item() == 0.0


def test_attention_supervision_moves_each_glimpse_to_its_region():
    model = tiny(attention_supervision=1.0).train()
    model.config.dropout = 0.0
    batch = inputs()
    targets = torch.zeros(B, A)
    attention_targets = torch.tensor([[1, 3], [4, 4], [-1, -1]])
    _, _, plain = tiny()(**batch, targets=targets, attention_targets=attention_targets)
    _, _, supervised = model(**batch, targets=targets, attention_targets=attention_targets)
    assert supervised > plain  # the attention term is added only when its weight is > 0
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        _, _, loss = model(**batch, targets=targets, attention_targets=attention_targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    mask = torch.ones(B, R, dtype=torch.bool)
    q, states = model.question(batch["question"], batch["question_length"])
    alpha = model.attention(model.regions(model.feature_norm(batch["features"]),
                                          batch["boxes"], batch["scores"]),
                            model.glimpse_queries(states, batch["question_length"]), mask)
    assert alpha[0, 0, 1] > 0.8 and alpha[0, 1, 3] > 0.8 and alpha[1, :, 4].min() > 0.8


def test_glimpse_geometry_reads_the_offset_between_the_two_attended_boxes():
    from models.vqa import GlimpseGeometry

    model = tiny(glimpse_geometry=True)
    geometry = model.geometry
    boxes = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.7], [0, 0, 1, 1]]])
    alpha = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])  # glimpse 0 on box 1, 1 on 0
    seen = {}
    geometry.f_g.register_forward_hook(lambda _m, args, _o: seen.update(g=args[0]))
    geometry(alpha, boxes, torch.zeros(1, 16))
    d = torch.tensor([0.7 - 0.2, 0.6 - 0.3])  # centre of box 1 minus centre of box 0
    expected = torch.cat([d, d.abs(), torch.tensor([0.4, 0.2, 0.2, 0.2])]) * GlimpseGeometry.SCALE
    torch.testing.assert_close(seen["g"][0], expected)
    # swapping the glimpses' objects flips the offset, and the answer can tell
    swapped = alpha.flip(1)
    a = model.geometry(alpha, boxes, torch.ones(1, 16))
    b = model.geometry(swapped, boxes, torch.ones(1, 16))
    assert not torch.allclose(a, b)
    batch = inputs()
    torch.testing.assert_close(tiny(glimpse_geometry=False)(**batch)[1],
                               tiny(glimpse_geometry=True)(**batch)[1])  # attention unchanged
    with pytest.raises(ValueError, match="glimpses >= 2"):
        tiny(glimpse_geometry=True, glimpses=1)


def test_counting_branch_sums_sigmoid_matches_of_the_proposals_only():
    model = tiny(counting=True)
    branch = model.counting
    v = torch.randn(2, 4, FEAT + 7)
    q = torch.randn(2, 16)
    scores = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.5, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, True]])
    with torch.no_grad():
        c = branch.count(v, scores, q, mask)
        match = torch.sigmoid(branch.w_c(branch.f_cv(v[:, :3]) * branch.f_cq(q)[:, None]))
    expected = (match.squeeze(-1) * torch.tensor([[1.0, 1.0, 0.0], [0.5, 1.0, 0.0]])).sum(1)
    torch.testing.assert_close(c, expected)  # the whole image and masked rows never count
    # the soft one-hot of a count of 2.25 puts 0.75 on 2 and 0.25 on 3
    seen = {}
    branch.f_k.register_forward_hook(lambda _m, args, _o: seen.update(k=args[0]))
    branch.count = lambda *_: torch.tensor([2.25, 0.0])
    branch(v, scores, q, mask)
    assert seen["k"][0].tolist() == [0, 0, 0.75, 0.25, 0, 0, 0, 0, 0]
    assert seen["k"][1].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0]
