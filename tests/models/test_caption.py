import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.caption import (
    CaptionConfig,
    ShowAndTell,
    ShowAttendTell,
    ShowAttendTellConfig,
    attention_entropy,
    doubly_stochastic_penalty,
    gather_location,
)
from models.captioners import build_caption_model, caption_config
from models.encoder import EncoderConfig, ImageVector

V, B, T, S = 13, 3, 5, 32
REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
VARIANTS = [("nic", False), ("nic", True), ("sat-soft", False), ("sat-soft", True),
            ("sat-hard", False), ("sat-hard", True)]


def tiny_config(arch: str, layer_norm: bool = False, **overrides) -> CaptionConfig:
    knobs = dict(vocab_size=V, embed_dim=8, hidden_dim=12, attention_dim=6, dropout=0.0,
                 encoder=EncoderConfig(out_dim=8, channels=(4, 8, 8)))
    return caption_config(dict(arch=arch, layer_norm=layer_norm, **{**knobs, **overrides}))


def tiny_model(arch: str, layer_norm: bool = False, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_caption_model(tiny_config(arch, layer_norm, **overrides))


def batch(seed: int = 0):
    """Images and teacher-forcing captions; rows have 5, 3 and 4 targets (pad id 0)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, 3, S, S, generator=g)
    words = torch.randint(3, V, (B, T), generator=g)
    lengths = torch.tensor([5, 3, 4])
    valid = torch.arange(T)[None, :] < lengths[:, None]
    captions_out = torch.where(valid, words, 0)
    captions_in = torch.cat([torch.ones(B, 1, dtype=torch.long), captions_out[:, :-1]], dim=1)
    return images, captions_in, captions_out


def test_factory_builds_the_named_architecture():
    assert isinstance(tiny_model("nic"), ShowAndTell)
    soft, hard = tiny_model("sat-soft"), tiny_model("sat-hard")
    assert isinstance(soft, ShowAttendTell) and not soft.hard
    assert isinstance(hard, ShowAttendTell) and hard.hard
    assert "reward_baseline" in hard.state_dict() and "reward_baseline" not in soft.state_dict()
    with pytest.raises(ValueError, match="arch"):
        caption_config({"arch": "lrcn"})
    with pytest.raises(ValueError, match="hard_inference"):
        ShowAttendTellConfig(hard_inference="mode")


def test_config_survives_a_json_round_trip():
    cfg = tiny_config("sat-hard", True, hard_inference="argmax")
    assert caption_config(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_each_architecture_owns_its_settings():
    assert "attention_dim" not in tiny_config("nic").to_dict()
    assert "doubly_stochastic" in tiny_config("sat-soft").to_dict()
    assert "encoder" not in caption_config({"arch": "updown"}).to_dict()
    with pytest.raises(ValueError, match="attention_dimension"):
        caption_config({"arch": "nic", "attention_dimension": 8})


@pytest.mark.parametrize("bundle", sorted(REPOSITORY.glob("caption-*/*/manifest.json")),
                         ids=lambda p: p.parent.parent.name)
def test_flat_configs_of_earlier_runs_still_load(bundle):
    """Runs and bundles from before each architecture had its own config hold one flat
    dict with every captioner's settings; it still builds the architecture it names."""
    flat = json.loads(bundle.read_text())["training"]["config"]["caption"]
    cfg = caption_config(flat, saved=True)
    assert cfg.arch == flat["arch"]
    written = json.loads(json.dumps(cfg.to_dict()))
    added = getattr(type(cfg), "SAVED_BEFORE", {})  # settings that came after the run
    assert {k: v for k, v in written.items() if k not in added}.items() <= flat.items()
    assert {k: written[k] for k in added} == {k: flat.get(k, v) for k, v in added.items()}
    assert build_caption_model(cfg).config is cfg


@pytest.mark.parametrize("arch, layer_norm", VARIANTS)
def test_step_by_step_decoding_matches_teacher_forcing(arch, layer_norm):
    model = tiny_model(arch, layer_norm).eval()
    images, captions_in, _ = batch()
    with torch.no_grad():
        logits, loss = model(images, captions_in)
        context, state = model.encode(images)
        for t in range(T):
            log_probs, state, alpha = model.step(captions_in[:, t], state, context)
            torch.testing.assert_close(log_probs, F.log_softmax(logits[:, t], dim=-1))
            assert (alpha is None) == (arch == "nic")
    assert loss is None and logits.shape == (B, T, V)


def test_attention_that_reads_the_word_just_written():
    """With attend_with_word the step after "green" can look for the green object: its
    attention depends on the token it is given. The paper's attends from h_{t-1} alone."""
    images, captions_in, _ = batch()
    for attend_with_word in (False, True):
        model = tiny_model("sat-soft", attend_with_word=attend_with_word).eval()
        with torch.no_grad():
            logits, _ = model(images, captions_in)
            context, state = model.encode(images)
            for t in range(T):  # step by step is teacher forcing, word by word
                log_probs, next_state, alpha = model.step(captions_in[:, t], state, context)
                torch.testing.assert_close(log_probs, F.log_softmax(logits[:, t], dim=-1))
                _, _, alpha_other_word = model.step((captions_in[:, t] + 1) % V, state, context)
                assert torch.allclose(alpha, alpha_other_word) != attend_with_word
                state = next_state
    model = tiny_model("sat-soft", attend_with_word=True).train()
    model(images, captions_in, captions_in)[1].backward()
    assert model.attention.word_proj.weight.grad.abs().sum() > 0
    assert tiny_model("sat-soft").attention.word_proj is None


def test_nic_with_the_image_at_every_step_adds_w_i_cnn_i_to_each_word():
    images, captions_in, _ = batch()
    model = tiny_model("nic", image_every_step=True).eval()
    once = tiny_model("nic").eval()
    once.load_state_dict(model.state_dict())
    with torch.no_grad():
        logits, _ = model(images, captions_in)
        context, state = model.encode(images)
        for t in range(T):
            log_probs, next_state, _ = model.step(captions_in[:, t], state, context)
            torch.testing.assert_close(log_probs, F.log_softmax(logits[:, t], dim=-1))
            x = model.embed(captions_in[:, t]) + model.image_embed(context[:, 0])
            h, _ = model.lstm(x, (state["h"], state["c"]))
            torch.testing.assert_close(next_state["h"], h)
            state = next_state
        assert not torch.allclose(once(images, captions_in)[0], logits)


def test_argmax_hard_inference_attends_the_most_likely_location_only():
    model = tiny_model("sat-hard", hard_inference="argmax").eval()
    expected_mode = tiny_model("sat-hard").eval()
    images, captions_in, _ = batch()
    with torch.no_grad():
        logits, _ = model(images, captions_in)
        context, state = model.encode(images)
        log_probs, _, alpha = model.step(captions_in[:, 0], state, context)
        z, sample_log_prob = model.glimpse(alpha.log(), alpha, context, None)
        soft_log_probs, _, _ = expected_mode.step(captions_in[:, 0], state, context)
    torch.testing.assert_close(log_probs, F.log_softmax(logits[:, 0], dim=-1))
    torch.testing.assert_close(z, context[torch.arange(B), alpha.argmax(dim=-1)])
    assert sample_log_prob is None
    assert not torch.allclose(log_probs, soft_log_probs, atol=1e-4)


def test_gather_location_picks_one_annotation_per_row():
    context = torch.arange(2 * 3 * 4, dtype=torch.float).view(2, 3, 4)
    torch.testing.assert_close(gather_location(context, torch.tensor([2, 0])),
                               torch.stack([context[0, 2], context[1, 0]]))


@pytest.mark.parametrize("arch, layer_norm", VARIANTS)
def test_gradients_reach_every_parameter(arch, layer_norm):
    model = tiny_model(arch, layer_norm, dropout=0.1).train()
    _, loss = model(*batch())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


@pytest.mark.parametrize("arch", ["nic", "sat-soft"])
def test_loss_is_token_mean_cross_entropy_plus_penalty_and_ignores_padding(arch):
    model = tiny_model(arch).eval()
    images, captions_in, captions_out = batch()
    logits, loss = model(images, captions_in, captions_out)
    xent = F.cross_entropy(logits.reshape(-1, V), captions_out.reshape(-1), ignore_index=0)
    torch.testing.assert_close(model.loss_terms["xent"], xent.detach())
    penalty = model.loss_terms.get("doubly_stochastic", torch.tensor(0.0))
    torch.testing.assert_close(loss.detach(), xent.detach() + penalty)
    # Inputs after a caption's end only feed steps whose targets are padding.
    scrambled = captions_in.clone()
    scrambled[1, 4] = 7
    _, loss_scrambled = model(images, scrambled, captions_out)
    torch.testing.assert_close(loss_scrambled, loss)


def test_doubly_stochastic_penalty_on_a_hand_checked_case():
    alpha = torch.tensor([[[0.25, 0.75], [0.5, 0.5]]])  # (B=1, T=2, L=2)
    # Σ_t α = (0.75, 1.25): (1 - 0.75)² + (1 - 1.25)² = 0.125
    torch.testing.assert_close(doubly_stochastic_penalty(alpha, torch.ones(1, 2)),
                               torch.tensor([0.125]))
    # Second step padded: Σ_t α = (0.25, 0.75): 0.5625 + 0.0625 = 0.625
    torch.testing.assert_close(doubly_stochastic_penalty(alpha, torch.tensor([[1.0, 0.0]])),
                               torch.tensor([0.625]))


def test_doubly_stochastic_term_is_scaled_per_token_and_weighted_by_lambda():
    images, captions_in, captions_out = batch()
    losses = {}
    for lam in (0.0, 2.0):  # same seed, same weights
        model = tiny_model("sat-soft", doubly_stochastic=lam).eval()
        losses[lam] = model(images, captions_in, captions_out)[1].detach()
    with torch.no_grad():
        context, state = model.encode(images)
        alphas = []
        for t in range(T):
            _, state, alpha = model.step(captions_in[:, t], state, context)
            alphas.append(alpha)
    mask = (captions_out != 0).float()
    per_image = doubly_stochastic_penalty(torch.stack(alphas, dim=1), mask)
    expected = per_image.sum() / mask.sum()  # Eq. 14 per sentence, over the 12 target tokens
    torch.testing.assert_close(model.loss_terms["doubly_stochastic"], expected)
    torch.testing.assert_close(losses[2.0] - losses[0.0], 2.0 * expected)


def test_nic_encode_feeds_the_image_once_at_t_minus_1():
    model = tiny_model("nic").eval()
    images = batch()[0]
    with torch.no_grad():
        context, state = model.encode(images)
        _, grid = model.encoder(images)
        image = model.image.norm(grid.amax(dim=1))  # CNN(I): max-pooled, standardised
        h, c = model.lstm(model.image_embed(image))  # from the zero state
    torch.testing.assert_close(state["h"], h)
    torch.testing.assert_close(state["c"], c)
    torch.testing.assert_close(context, image.unsqueeze(1))


@pytest.mark.parametrize("arch", ["nic", "sat-soft", "sat-hard"])
def test_a_frozen_encoder_trains_the_captioner_on_its_precomputed_features(arch):
    """NIC's pooled CNN(I), SAT's annotation grid: the same loss from the features as from
    the images, and no gradient reaches the frozen encoder."""
    from models.captioners import trains_on_features

    frozen = tiny_model(arch, train_encoder=False).train()
    images, captions_in, captions_out = batch()
    torch.manual_seed(0)  # hard attention samples its locations
    _, from_images = frozen(images, captions_in, captions_out)
    with torch.no_grad():
        features = frozen.image_features(images)
    torch.manual_seed(0)
    _, from_features = frozen(features, captions_in, captions_out)
    torch.testing.assert_close(from_images, from_features)
    from_features.backward()
    assert all(p.grad is None for p in frozen.encoder.parameters())
    assert not frozen.encoder.training  # its BatchNorm keeps the pre-trained statistics
    assert trains_on_features(frozen.config)
    assert not trains_on_features(tiny_config(arch, train_encoder=True))  # trains on pixels
    assert not trains_on_features(tiny_config(arch))  # the default


def test_cnn_image_vector_is_standardised_across_images():
    """What makes NIC and the m-RNN see the image: each feature of CNN(I) has mean 0 and
    variance 1 over the batch while training, whatever part all images share."""
    vector = ImageVector(6, pool="mean+max")
    grid = torch.randn(32, 9, 6) * 0.1 + 5.0  # a large part shared by every image
    out = vector.train()(grid)
    assert out.shape == (32, 12)
    torch.testing.assert_close(out.mean(0), torch.zeros(12), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(12), atol=1e-2, rtol=0)
    plain = ImageVector(6, pool="mean", standardise=False)
    torch.testing.assert_close(plain(grid), grid.mean(dim=1))


def test_pyramid_pools_the_whole_grid_and_each_quadrant():
    from models.encoder import pyramid_max

    grid = torch.randn(2, 4, 4, 3)  # a 4 x 4 grid, row by row
    pooled = pyramid_max(grid.reshape(2, 16, 3))
    expected = [grid.amax(dim=(1, 2)), grid[:, :2, :2].amax(dim=(1, 2)),
                grid[:, :2, 2:].amax(dim=(1, 2)), grid[:, 2:, :2].amax(dim=(1, 2)),
                grid[:, 2:, 2:].amax(dim=(1, 2))]
    torch.testing.assert_close(pooled, torch.cat(expected, dim=-1))
    assert ImageVector(3, pool="pyramid").out_dim == 15
    with pytest.raises(ValueError, match="square grid of even side"):
        pyramid_max(torch.randn(1, 9, 3))
    model = tiny_model("nic", image_pool="pyramid").eval()  # and NIC takes it end to end
    images, captions_in, captions_out = batch()
    logits, _ = model(images, captions_in, captions_out)
    assert logits.shape == (B, T, V)


def test_cells_pool_keeps_every_cell_in_place():
    from models.encoder import grid_in_place

    grid = torch.randn(2, 64, 3)  # 8 x 8: the cells themselves, in row order
    torch.testing.assert_close(grid_in_place(grid, 8), grid.reshape(2, 192))
    fine = torch.randn(2, 16, 16, 3)  # 16 x 16: each cell the mean of the 2 x 2 it covers
    pooled = grid_in_place(fine.reshape(2, 256, 3), 8).reshape(2, 8, 8, 3)
    torch.testing.assert_close(pooled[:, 2, 5], fine[:, 4:6, 10:12].mean(dim=(1, 2)))
    coarse = torch.randn(2, 4, 4, 3)  # 4 x 4: each cell repeated over the 2 x 2 it covers
    repeated = grid_in_place(coarse.reshape(2, 16, 3), 8).reshape(2, 8, 8, 3)
    torch.testing.assert_close(repeated[:, 5, 2], coarse[:, 2, 1])
    torch.testing.assert_close(repeated[:, 4, 3], coarse[:, 2, 1])
    assert ImageVector(3, pool="cells").out_dim == 192
    with pytest.raises(ValueError, match="cells pool needs a square grid"):
        grid_in_place(torch.randn(1, 36, 3), 8)
    model = tiny_model("nic", image_pool="cells").eval()  # NIC takes it end to end
    images, captions_in, captions_out = batch()
    logits, _ = model(images, captions_in, captions_out)
    assert logits.shape == (B, T, V)


def test_a_pooled_vector_loses_which_colour_goes_with_which_shape_and_cells_keep_it():
    """Two scenes with the same attributes bound the other way round: one-hot cells of
    (red, blue, circle, square) for "a red circle, a blue square" and "a blue circle, a
    red square" pool to the same vector, and differ in place."""
    red_circle, blue_square = torch.tensor([1., 0, 1, 0]), torch.tensor([0., 1, 0, 1])
    blue_circle, red_square = torch.tensor([0., 1, 1, 0]), torch.tensor([1., 0, 0, 1])
    one, other = torch.zeros(1, 64, 4), torch.zeros(1, 64, 4)
    one[0, 3], one[0, 40] = red_circle, blue_square
    other[0, 3], other[0, 40] = blue_circle, red_square
    for pool in ("max", "mean"):
        vector = ImageVector(4, pool=pool)
        torch.testing.assert_close(vector.pooled(one), vector.pooled(other))
    cells = ImageVector(4, pool="cells")
    assert not torch.allclose(cells.pooled(one), cells.pooled(other))


def test_runs_saved_before_the_image_settings_rebuild_their_model():
    old = caption_config({"arch": "nic", "vocab_size": 10}, saved=True)
    assert (old.image_pool, old.standardise_image, old.train_encoder) == ("mean", False, True)
    new = caption_config({"arch": "nic", "vocab_size": 10})
    assert (new.image_pool, new.standardise_image) == ("max", True)


def test_sat_initial_state_and_attention_weights():
    model = tiny_model("sat-soft").eval()
    images, captions_in, _ = batch()
    with torch.no_grad():
        context, state = model.encode(images)
        mean = context.mean(dim=1)
        torch.testing.assert_close(state["h"], torch.tanh(model.init_h(mean)))
        torch.testing.assert_close(state["c"], torch.tanh(model.init_c(mean)))
        _, _, alpha = model.step(captions_in[:, 0], state, context)
    assert context.shape == (B, 16, 8)  # 32 px at stride 8: 4 x 4 annotation vectors
    torch.testing.assert_close(alpha.sum(dim=-1), torch.ones(B))
    assert (alpha > 0).all()


def test_hard_attention_at_test_time_defaults_to_the_soft_expectation():
    soft, hard = tiny_model("sat-soft").eval(), tiny_model("sat-hard").eval()
    hard.load_state_dict(soft.state_dict(), strict=False)
    images, captions_in, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(hard(images, captions_in)[0], soft(images, captions_in)[0])


def test_hard_attention_samples_in_training_unless_the_image_uses_the_expectation():
    images, captions_in, captions_out = batch()
    always_expected = tiny_model("sat-hard", hard_expectation_prob=1.0).train()
    eval_logits = always_expected.eval()(images, captions_in)[0]
    always_expected.train().encoder.eval()  # BatchNorm on its running statistics, as in eval
    train_logits, _ = always_expected(images, captions_in, captions_out)
    torch.testing.assert_close(train_logits, eval_logits)
    assert always_expected.loss_terms["reinforce"] == 0.0  # no sampled image, no score term
    sampling = tiny_model("sat-hard", hard_expectation_prob=0.0).train()
    torch.manual_seed(0)
    first, _ = sampling(images, captions_in)
    torch.manual_seed(1)
    second, _ = sampling(images, captions_in)
    assert not torch.allclose(first, second)


def test_reinforce_baseline_is_a_moving_average_of_the_sentence_log_likelihood():
    model = tiny_model("sat-hard").train()
    images, captions_in, captions_out = batch()
    model(images, captions_in, captions_out)
    first = model.loss_terms["sentence_log_prob"]
    assert first < 0
    torch.testing.assert_close(model.reward_baseline, first)  # the first batch sets b
    model(images, captions_in, captions_out)
    second = model.loss_terms["sentence_log_prob"]
    torch.testing.assert_close(model.reward_baseline, 0.9 * first + 0.1 * second)
    assert int(model.baseline_updates) == 2
    model.eval()(images, captions_in, captions_out)
    torch.testing.assert_close(model.reward_baseline, 0.9 * first + 0.1 * second)


@pytest.mark.parametrize("reinforce_weight, reaches", [(1.0, True), (0.0, False)])
def test_hard_attention_mlp_learns_only_through_reinforce(reinforce_weight, reaches):
    # Sampled locations are not differentiable: with no expectation images, no entropy
    # bonus and no doubly stochastic term, Eq. 12's score-function term alone trains f_att.
    model = tiny_model("sat-hard", hard_expectation_prob=0.0, entropy_weight=0.0,
                       doubly_stochastic=0.0, reinforce_weight=reinforce_weight).train()
    model.reward_baseline.fill_(-100.0)
    model.baseline_updates.fill_(1)
    _, loss = model(*batch())
    loss.backward()
    grads = [p.grad for p in model.attention.parameters()]
    assert all(g is not None and g.any() for g in grads) == reaches
    assert model.gate.weight.grad.any()  # β still learns from the likelihood


def test_entropy_bonus_matches_the_attention_entropy():
    alpha = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(attention_entropy(alpha),
                               torch.tensor([torch.log(torch.tensor(2.0)).item(), 0.0]))
    model = tiny_model("sat-hard", entropy_weight=0.5).train()
    _, loss = model(*batch())
    terms = model.loss_terms
    expected = (terms["xent"] + terms["doubly_stochastic"] + terms["reinforce"]
                - 0.5 * terms["entropy"])
    torch.testing.assert_close(loss.detach(), expected)
    assert 0 < terms["entropy"] <= torch.log(torch.tensor(16.0))


def test_cell_positions_add_a_learned_vector_to_each_annotation():
    model = tiny_model("sat-soft", cell_positions=16).eval()  # a 4 x 4 grid at 32 px
    with torch.no_grad():
        model.cell_position.copy_(torch.randn(16, 8))
    images, captions_in, captions_out = batch()
    with torch.no_grad():
        context, state = model.encode(images)
        _, grid = model.encoder(images)
        plain = tiny_model("sat-soft").eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items()
                               if k != "cell_position"})
        _, plain_state = plain.encode(images)
    torch.testing.assert_close(context, grid + model.cell_position)
    torch.testing.assert_close(state["h"], plain_state["h"])  # from the mean annotation
    logits, loss = model.train()(images, captions_in, captions_out)
    loss.backward()
    assert model.cell_position.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="cell_positions is 9 but the encoder's grid has 16"):
        tiny_model("sat-soft", cell_positions=9).encode(images)
