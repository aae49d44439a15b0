"""DALL-E's transformer: the attention masks, the loss weighting and the KV cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.dalle import Dalle, DalleConfig, attention_mask, paper_layer_kind

# The paper's illustration of its masks (Appendix B.1, Fig. 11): 6 text tokens, a 4x4 grid.
L, G = 6, 4


def tiny(attention: str = "dense", *, n_layer: int = 2, seed: int = 0, **overrides
         ) -> Dalle:
    torch.manual_seed(seed)
    cfg = DalleConfig(text_vocab_size=11, text_length=L, image_vocab_size=13, image_grid=G,
                      n_layer=n_layer, n_head=2, n_embd=16, attention=attention, **overrides)
    return Dalle(cfg).eval()


def random_pair(model: Dalle, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Text rows of <bos>, 1..L-1 words and <pad>s, and random image codes."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(4, cfg.text_vocab_size, (batch, cfg.text_length), generator=g)
    text[:, 0] = 1
    lengths = torch.randint(2, cfg.text_length + 1, (batch,), generator=g)
    text[torch.arange(cfg.text_length)[None, :] >= lengths[:, None]] = cfg.pad_id
    image = torch.randint(0, cfg.image_vocab_size, (batch, cfg.image_length), generator=g)
    return text, image


# ---------------------------------------------------------------------------- masks


def allowed(kind: str, q: int, k: int) -> bool:
    """Whether image token q may attend to image token k (raster indices), written out
    from the definitions rather than vectorised."""
    (qr, qc), (kr, kc) = divmod(q, G), divmod(k, G)
    if k > q:
        return False
    return {"dense": True, "row": q - k <= G, "column": qc == kc,
            "conv": abs(qr - kr) <= 1 and abs(qc - kc) <= 1}[kind]


@pytest.mark.parametrize("kind", ["dense", "row", "column", "conv"])
def test_masks_are_causal_and_let_image_tokens_see_all_text(kind: str) -> None:
    mask = attention_mask(kind, L, G, conv_kernel=3)
    T = L + G * G
    assert mask.shape == (T, T) and mask.dtype == torch.bool
    assert not torch.triu(mask, diagonal=1).any()  # never a later token
    assert mask.diagonal().all()  # always itself
    assert torch.equal(mask[:L, :L], torch.tril(torch.ones(L, L, dtype=torch.bool)))
    assert mask[L:, :L].all()  # every image token sees every text token
    for q in range(G * G):
        for k in range(G * G):
            assert bool(mask[L + q, L + k]) == allowed(kind, q, k), (kind, q, k)


def test_sparse_masks_match_the_papers_pictures() -> None:
    """Rows of the 4x4 example: token 9 (row 2, column 1) under each mask."""
    def image_keys(kind: str) -> list[int]:
        row = attention_mask(kind, L, G)[L + 9, L:]
        return torch.nonzero(row).flatten().tolist()

    assert image_keys("row") == [5, 6, 7, 8, 9]  # itself and the previous G
    assert image_keys("column") == [1, 5, 9]
    assert image_keys("conv") == [4, 5, 6, 8, 9]  # 3x3 window, causal half
    assert image_keys("dense") == list(range(10))
    assert torch.nonzero(attention_mask("conv", L, G, 5)[L + 9, L:]).flatten().tolist() == \
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]  # 5x5 window: rows 0-2 within 2 columns of column 1


def test_the_sparse_schedule_is_the_papers() -> None:
    """Row attention except column attention where (i - 2) mod 4 = 0, conv last."""
    kinds = DalleConfig(n_layer=64, attention="sparse").layer_attention()
    assert kinds[-1] == "conv"
    assert [i for i, k in enumerate(kinds, start=1) if k == "column"] == list(range(2, 63, 4))
    assert kinds.count("row") == 64 - 1 - 16
    assert [paper_layer_kind(i, 4) for i in range(1, 5)] == ["row", "column", "row", "conv"]
    assert DalleConfig(n_layer=3, attention="dense").layer_attention() == ["dense"] * 3


@pytest.mark.parametrize("kind", ["row", "column", "conv"])
def test_a_token_outside_the_mask_does_not_reach_the_output(kind: str) -> None:
    """One layer of `kind`: changing image token k changes the prediction made at image
    position q only if the mask lets q see k."""
    model = tiny(kind, n_layer=1)
    text, image = random_pair(model, 1)
    base = model(text, image).image_logits  # row q+1 is the output at image position q
    for k in range(G * G - 1):
        changed = image.clone()
        changed[0, k] = (changed[0, k] + 1) % model.config.image_vocab_size
        moved = (model(text, changed).image_logits - base).abs().amax(dim=-1)[0]
        for q in range(G * G - 1):
            assert bool(moved[q + 1] > 0) == allowed(kind, q, k), (kind, q, k)


# ---------------------------------------------------------------------------- loss


def test_loss_weights_text_by_one_eighth_and_image_by_seven_eighths() -> None:
    model = tiny()
    text, image = random_pair(model, 3)
    out = model(text, image)
    cfg = model.config
    assert out.text_logits.shape == (3, L - 1, cfg.text_vocab_size + L)
    assert out.image_logits.shape == (3, G * G, cfg.image_vocab_size)
    # Targets: the text shifted by one, <pad> replaced by its position's padding token.
    targets = text[:, 1:].clone()
    pads = targets == cfg.pad_id
    targets[pads] = (cfg.text_vocab_size + torch.arange(1, L).expand(3, -1))[pads]
    text_loss = F.cross_entropy(out.text_logits.flatten(0, 1), targets.flatten())
    image_loss = F.cross_entropy(out.image_logits.flatten(0, 1), image.flatten())
    torch.testing.assert_close(out.text_loss, text_loss)
    torch.testing.assert_close(out.image_loss, image_loss)
    torch.testing.assert_close(out.loss, text_loss / 8 + 7 * image_loss / 8)
    image_only = tiny(image_loss_weight=1.0)
    torch.testing.assert_close(image_only(text, image).loss, image_only(text, image).image_loss)


def test_each_padding_position_has_its_own_token() -> None:
    model = tiny()
    text = torch.tensor([[1, 5, 6, 0, 0, 0]])
    assert model.text_tokens(text).tolist() == [[1, 5, 6, 11 + 3, 11 + 4, 11 + 5]]


def test_image_tokens_have_row_and_column_position_embeddings() -> None:
    model = tiny()
    codes = torch.tensor([[2, 2]])
    index = torch.tensor([[1, 4 * 2 + 3]])  # (row 0, col 1) and (row 2, col 3)
    embedded = model.embed_image(codes, index)
    code = model.image_embedding.weight[2]
    torch.testing.assert_close(embedded[0, 0], code + model.image_row.weight[0]
                               + model.image_column.weight[1])
    torch.testing.assert_close(embedded[0, 1], code + model.image_row.weight[2]
                               + model.image_column.weight[3])


def test_the_loss_trains_the_model() -> None:
    model = tiny().train()
    text, image = random_pair(model, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model(text, image).loss.item()
    for _ in range(40):
        optimizer.zero_grad()
        loss = model(text, image).loss
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.6 * first


# ---------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("attention", ["dense", "sparse"])
def test_cached_decoding_gives_the_logits_of_full_recomputation(attention: str) -> None:
    model = tiny(attention, n_layer=4)
    text, image = random_pair(model, 3)
    with torch.no_grad():
        full = model(text, image).image_logits  # (B, N, K)
        logits, past = model.prefill(text)
        assert past.shape == model.cache_shape(3)
        torch.testing.assert_close(logits, full[:, 0])
        for i in range(G * G - 1):
            position = torch.full((3,), L + i)
            logits, past = model.step(image[:, i], position, past)
            torch.testing.assert_close(logits, full[:, i + 1])


def test_rows_at_different_positions_step_together() -> None:
    """Continuous batching: rows that started at different times share one step, and each
    gets the logits of its own sequence."""
    model = tiny("sparse", n_layer=4)
    text, image = random_pair(model, 2)
    with torch.no_grad():
        full = model(text, image).image_logits
        _, past = model.prefill(text)
        # Row 0 runs 5 steps ahead alone, then both rows advance together.
        past0 = past[:1]
        for i in range(5):
            _, past0 = model.step(image[:1, i], torch.tensor([L + i]), past0)
        past = torch.cat([past0, past[1:]])
        for t in range(4):
            tokens = torch.stack([image[0, 5 + t], image[1, t]])
            position = torch.tensor([L + 5 + t, L + t])
            logits, past = model.step(tokens, position, past)
            torch.testing.assert_close(logits[0], full[0, 6 + t])
            torch.testing.assert_close(logits[1], full[1, t + 1])


@pytest.mark.parametrize("attention", ["dense", "sparse"])
def test_every_mask_lets_a_token_attend_to_itself(attention: str) -> None:
    """step_apart attends to the token's own key unmasked: every layer's mask must allow it."""
    model = tiny(attention, n_layer=4)
    for layer in range(4):
        assert model.layer_mask(layer).diagonal().all()


@pytest.mark.parametrize("attention", ["dense", "sparse"])
def test_a_step_apart_is_the_step_with_the_cache_written_by_the_caller(attention: str) -> None:
    """step_apart reads the cache and returns the token's keys/values; written at each row's
    position they give `step`'s present, and the logits are `step`'s, for rows at
    different positions and a cache holding junk beyond them."""
    model = tiny(attention, n_layer=4)
    B = 5
    token = torch.randint(0, 13, (B,), generator=torch.Generator().manual_seed(1))
    position = torch.tensor([L, L + 1, L + 3, L + G * G - 2, L + 7])
    past = torch.randn(model.cache_shape(B), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, present = model.step(token, position, past)
        logits_apart, kv = model.step_apart(token, position, past)
    assert kv.shape == (B, 2 * 4, 2, 8)  # rows, layers x (k, v), heads, head size
    written = past.clone()
    written[torch.arange(B), :, :, position] = kv
    torch.testing.assert_close(logits_apart, logits)
    torch.testing.assert_close(written, present)


def test_cached_decoding_apart_gives_the_logits_of_full_recomputation() -> None:
    model = tiny("sparse", n_layer=4)
    text, image = random_pair(model, 3)
    with torch.no_grad():
        full = model(text, image).image_logits
        _, past = model.prefill(text)
        for i in range(G * G - 1):
            position = torch.full((3,), L + i)
            logits, kv = model.step_apart(image[:, i], position, past)
            past[:, :, :, L + i] = kv
            torch.testing.assert_close(logits, full[:, i + 1])


def test_prefill_leaves_the_image_part_of_the_cache_empty() -> None:
    model = tiny()
    text, _ = random_pair(model, 2)
    with torch.no_grad():
        _, present = model.prefill(text)
    assert present[..., :L, :].abs().amax() > 0
    assert present[..., L:, :].abs().amax() == 0


def test_config_checks_and_round_trips() -> None:
    with pytest.raises(ValueError, match="attention"):
        DalleConfig(attention="axial")
    with pytest.raises(ValueError, match="odd"):
        DalleConfig(conv_kernel=4)
    cfg = DalleConfig(attention="sparse", image_grid=16)
    assert DalleConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.sequence_length == cfg.text_length + 256
