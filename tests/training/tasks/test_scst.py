"""Self-critical sequence training: the rollouts, the reward, the loss, the task."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.captioners import build_caption_model, caption_config
from training.cli import main as glimpse
from training.data.language import generate_captions
from training.data.world import Scene, ShapeObject
from training.tasks.scst import (
    CaptionReward,
    repeat_rows,
    rollout,
    scst_loss,
    semantic_terms,
    word_log_probs,
)

BOS, EOS, PAD, V = 1, 2, 0, 12
ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "configs" / "caption_tiny.json"


def tiny_nic(seed: int = 0):
    torch.manual_seed(seed)
    config = caption_config({"arch": "nic", "vocab_size": V, "pad_id": PAD, "embed_dim": 8,
                             "hidden_dim": 16, "dropout": 0.0,
                             "encoder": {"out_dim": 8, "channels": [4, 8, 8]}})
    return build_caption_model(config).eval()


def encoded(model, n: int = 3):
    images = torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    return model.encode(images)


def brute_force_greedy(model, context, state, max_length):
    """Each row alone, the argmax word at every step, until eos."""
    rows = []
    for i in range(context.shape[0]):
        s = {k: v[i:i + 1] for k, v in state.items()}
        token, words, total = torch.tensor([BOS]), [], 0.0
        for _ in range(max_length):
            log_p, s, _ = model.step(token, s, context[i:i + 1])
            log_p = word_log_probs(log_p, torch.tensor([BOS, PAD]))
            token = log_p.argmax(-1)
            total += float(log_p[0, token])
            words.append(int(token))
            if int(token) == EOS:
                break
        rows.append((words, total))
    return rows


def test_greedy_rollout_is_the_argmax_path_of_each_row_with_its_log_probability():
    model = tiny_nic()
    context, state = encoded(model)
    with torch.no_grad():
        tokens, log_p = rollout(model, context, state, bos_id=BOS, eos_id=EOS, pad_id=PAD,
                                max_length=6, greedy=True)
        expected = brute_force_greedy(model, context, state, 6)
    for row, total, (words, want_total) in zip(tokens.tolist(), log_p.tolist(), expected,
                                                strict=True):
        assert row[:len(words)] == words and all(t == PAD for t in row[len(words):])
        assert total == pytest.approx(want_total, abs=1e-5)


def test_sampled_log_probability_equals_the_teacher_forced_one():
    model = tiny_nic()
    context, state = encoded(model)
    with torch.no_grad():
        tokens, log_p = rollout(model, context, state, bos_id=BOS, eos_id=EOS, pad_id=PAD,
                                max_length=8, greedy=False,
                                generator=torch.Generator().manual_seed(1))
        captions_in = torch.cat([torch.full((3, 1), BOS), tokens[:, :-1]], dim=1)
        logits, _ = model.teacher_forced(context, state, captions_in, None)
    words = word_log_probs(F.log_softmax(logits, -1).flatten(0, 1), torch.tensor([BOS, PAD]))
    token_log_p = words.view(*logits.shape).gather(2, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(log_p, token_log_p.masked_fill(tokens == PAD, 0.0).sum(1))


def test_rows_are_repeated_adjacent():
    context, state = torch.arange(2.0).view(2, 1, 1), {"h": torch.tensor([[1.0], [2.0]])}
    context, state = repeat_rows(context, state, 3)
    assert context.flatten().tolist() == [0, 0, 0, 1, 1, 1]
    assert state["h"].flatten().tolist() == [1, 1, 1, 2, 2, 2]


SCENE = Scene([ShapeObject("circle", "red", "small", 0.2, 0.5, 0.1),
               ShapeObject("square", "blue", "large", 0.7, 0.5, 0.2)])


def test_semantic_terms_are_truth_and_coverage():
    reference = generate_captions(SCENE, np.random.default_rng(0), n=1)[0]
    assert semantic_terms(reference, SCENE) == (1.0, 1.0)
    assert semantic_terms("a small red circle", SCENE) == (1.0, 0.5)  # true, half the scene
    assert semantic_terms("a small green circle", SCENE)[0] == 0.0  # false
    assert semantic_terms("circle circle red the", SCENE) == (0.0, 0.0)  # outside the grammar


def test_caption_reward_weighs_cider_d_and_the_semantic_terms():
    references = [generate_captions(SCENE, np.random.default_rng(k), n=5) for k in range(3)]
    semantic = CaptionReward({"exactness": 1.0, "coverage": 2.0}, references, [SCENE] * 3)
    assert semantic("a small red circle", 1) == 1.0 + 2.0 * 0.5
    cider = CaptionReward({"cider_d": 1.0}, references, None)
    both = CaptionReward({"cider_d": 0.5, "exactness": 1.0}, references, [SCENE] * 3)
    caption = references[0][0]
    assert cider(caption, 0) > cider("there is a circle", 0) > 0
    assert both(caption, 0) == pytest.approx(0.5 * cider(caption, 0) + 1.0)
    with pytest.raises(ValueError, match="weigh cider_d only"):
        CaptionReward({"cider_d": 1.0, "coverage": 1.0}, references, None)
    with pytest.raises(ValueError, match="scst_reward weighs"):
        CaptionReward({"bleu": 1.0}, references, None)


def test_scst_reinforces_the_captions_that_beat_the_greedy_one():
    """A reward for saying word 7 first: SCST raises its probability; with every caption
    rewarded alike (no advantage) the loss has no gradient."""
    model = tiny_nic().train()
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))

    def first_word_is_7(rows, _images):
        return torch.tensor([float(r[0] == 7) for r in rows])

    def p_first_7() -> float:
        model.eval()
        with torch.no_grad():
            context, state = model.encode(images)
            log_p, _, _ = model.step(torch.full((4,), BOS), state, context)
        model.train()
        return float(log_p[:, 7].exp().mean())

    before = p_first_7()
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.03)
    torch.manual_seed(0)
    for _ in range(40):
        loss, seen = scst_loss(model, images, first_word_is_7, samples=8, bos_id=BOS,
                               eos_id=EOS, pad_id=PAD, max_length=5)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert set(seen) == {"reward_sample", "reward_greedy"}
    assert p_first_7() > max(0.5, 3 * before)

    flat, _ = scst_loss(model, images, lambda rows, _: torch.ones(len(rows)), samples=4,
                        bos_id=BOS, eos_id=EOS, pad_id=PAD, max_length=5)
    assert flat.item() == 0.0


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from training.data.shapes import generate_shapes_world

    out = tmp_path_factory.mktemp("world")
    generate_shapes_world(out, {"train": 40, "val": 8, "test": 4}, size=64, seed=3,
                          workers=1, progress=False)
    return out


def test_scst_fine_tunes_a_cross_entropy_run(world, tmp_path):
    xent = tmp_path / "xent"
    assert glimpse(["train", "caption", "--arch", "nic", "--data", str(world), "--out",
                    str(xent), "--config", str(TINY)]) == 0
    config = tmp_path / "scst.json"
    config.write_text(json.dumps({**json.loads(TINY.read_text()), "objective": "scst",
                                  "scst_samples": 3}))
    scst = tmp_path / "scst"
    assert glimpse(["train", "caption", "--arch", "nic", "--data", str(world), "--out",
                    str(scst), "--config", str(config), "--init-from", str(xent)]) == 0
    summary = json.loads((scst / "summary.json").read_text())
    assert summary["steps"] == 40 // 16 + 1  # SCST's examples are the 40 images
    assert "semantic_exactness" in summary["history"][-1]
    with pytest.raises(ValueError, match="give --init-from"):
        glimpse(["train", "caption", "--arch", "nic", "--data", str(world), "--out",
                 str(tmp_path / "no"), "--config", str(config)])


def test_word_log_probs_never_give_bos_or_pad():
    log_p = F.log_softmax(torch.randn(4, V), -1)
    words = word_log_probs(log_p, torch.tensor([BOS, PAD]))
    assert torch.isinf(words[:, [BOS, PAD]]).all()
    torch.testing.assert_close(words.exp().sum(1), torch.ones(4))
