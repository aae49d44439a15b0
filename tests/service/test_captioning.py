"""The caption pipeline: batched requests get their solo answers, whether beam-searched or
sampled; parameters and vocab."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_bundle import GRID, IMAGE_SIZE, sample_png

from service.errors import InvalidParameter
from service.images import decode_image
from service.pipelines.caption import (
    CaptionModel,
    CaptionRequest,
    SampleParams,
    SearchParams,
    Vocabulary,
)


@pytest.fixture(scope="module")
def model(repository: Path) -> CaptionModel:
    return CaptionModel.from_bundle(repository / "caption-tiny" / "1", device="cpu")


@pytest.fixture(scope="module")
def nic(repository: Path) -> CaptionModel:
    return CaptionModel.from_bundle(repository / "caption-nic" / "1", device="cpu")


def encoder_input(model: CaptionModel, seed: int) -> np.ndarray:
    return model.as_array(sample_png(seed))


MIXED = [  # (image seed, search parameters)
    (0, dict(beam_size=1)),
    (1, dict(beam_size=5, num_captions=3, return_attention=True)),
    (2, dict(beam_size=3, max_length=4)),
    (3, dict(beam_size=20, num_captions=20, length_penalty=1.0)),
    (4, dict(beam_size=2, max_length=1)),
    (1, dict(beam_size=5, num_captions=3)),
]


def test_a_mixed_batch_gives_each_request_its_solo_answer(model: CaptionModel) -> None:
    requests = [CaptionRequest(encoder_input(model, seed), model.params(**params))
                for seed, params in MIXED]
    batched = model.caption_batch(requests)
    solo = [model.caption_batch([r])[0] for r in requests]
    assert len(batched) == len(MIXED)
    for got, want, (_, params) in zip(batched, solo, MIXED, strict=True):
        assert len(got.captions) == params.get("num_captions", 1)
        assert [c.text for c in got.captions] == [c.text for c in want.captions]
        np.testing.assert_allclose([c.log_prob for c in got.captions],
                                   [c.log_prob for c in want.captions], rtol=1e-5)
        for g, w in zip(got.captions, want.captions, strict=True):
            assert (g.attention is None) == (w.attention is None)
            if g.attention is not None:
                np.testing.assert_allclose(g.attention, w.attention, atol=1e-6)
    # Distinct images give distinct captions, so a mixed-up batch could not pass.
    assert len({batched[i].captions[0].text for i in (0, 1, 2)}) == 3


SAMPLED = [  # (image seed, sampling parameters)
    (0, dict(decoding="sample", seed=1)),
    (1, dict(decoding="sample", seed=2, temperature=0.5, num_captions=3, return_attention=True)),
    (2, dict(decoding="sample", seed=3, top_k=3, max_length=5)),
    (3, dict(decoding="sample", seed=4, top_p=0.8, temperature=2.0, num_captions=4)),
    (0, dict(decoding="sample", seed=5, num_captions=2)),
]


def test_sampled_and_searched_requests_in_one_batch_get_their_solo_answers(
        model: CaptionModel) -> None:
    mixed = [SAMPLED[0], MIXED[1], *SAMPLED[1:3], MIXED[0], *SAMPLED[3:], MIXED[2]]
    requests = [CaptionRequest(encoder_input(model, seed), model.params(**params))
                for seed, params in mixed]
    batched = model.caption_batch(requests)
    for got, request, (_, params) in zip(batched, requests, mixed, strict=True):
        want = model.caption_batch([request])[0]
        assert len(got.captions) == params.get("num_captions", 1)
        assert [c.text for c in got.captions] == [c.text for c in want.captions]
        np.testing.assert_allclose([c.log_prob for c in got.captions],
                                   [c.log_prob for c in want.captions], rtol=1e-5)
        for g, w in zip(got.captions, want.captions, strict=True):
            assert (g.attention is None) == (w.attention is None)
            if g.attention is not None:
                np.testing.assert_allclose(g.attention, w.attention, atol=1e-6)
    # Image 0 with seed 1 and with seed 5: other samples, so mixed-up seeds could not pass.
    assert batched[0].captions[0].text != batched[-2].captions[0].text


def test_a_seed_gives_the_same_captions_and_another_seed_others(model: CaptionModel) -> None:
    image = encoder_input(model, 3)
    first = model.caption(image, decoding="sample", seed=11, num_captions=5)
    again = model.caption(image, decoding="sample", seed=11, num_captions=5)
    assert [c.text for c in first.captions] == [c.text for c in again.captions]
    other = model.caption(image, decoding="sample", seed=12, num_captions=5)
    assert [c.text for c in other.captions] != [c.text for c in first.captions]
    # Samples are independent draws, in the order drawn, not a ranking.
    assert len({c.text for c in first.captions}) > 1
    # The first k samples of n are those of a request for k (one draw per sample and step).
    two = model.caption(image, decoding="sample", seed=11, num_captions=2)
    assert [c.text for c in two.captions] == [c.text for c in first.captions[:2]]


def test_sampling_from_the_best_word_only_is_greedy_decoding(model: CaptionModel) -> None:
    for seed in range(4):
        image = encoder_input(model, seed)
        greedy = model.caption(image, beam_size=1).captions[0]
        sampled = model.caption(image, decoding="sample", seed=seed, top_k=1).captions[0]
        assert sampled.text == greedy.text
        assert sampled.log_prob == pytest.approx(greedy.log_prob, rel=1e-5)


def test_sampling_parameters_default_and_a_missing_seed_is_drawn(model: CaptionModel) -> None:
    params = model.params(decoding="sample", seed=3)
    assert params == SampleParams(max_length=12, seed=3, temperature=1.0, top_k=0, top_p=1.0)
    drawn = {model.params(decoding="sample").seed for _ in range(3)}
    assert len(drawn) == 3  # a random 63-bit seed each time
    assert isinstance(model.params(), SearchParams)


def test_captions_respect_the_search_parameters(model: CaptionModel) -> None:
    image = encoder_input(model, 3)
    five = model.caption(image, beam_size=5, num_captions=5)
    scores = [c.score for c in five.captions]
    assert scores == sorted(scores, reverse=True)
    assert len({c.text for c in five.captions}) == 5
    short = model.caption(image, beam_size=3, max_length=3)
    assert len(short.captions[0].words) <= 3
    assert len(model.caption(image, max_length=1).captions[0].words) <= 1


def test_attention_maps_have_one_grid_per_word(model: CaptionModel) -> None:
    result = model.caption(encoder_input(model, 1), beam_size=3, num_captions=2,
                           return_attention=True)
    for caption in result.captions:
        assert caption.attention.shape == (len(caption.words), GRID, GRID)
        np.testing.assert_allclose(caption.attention.sum(axis=(1, 2)), 1.0, atol=1e-5)
        assert caption.text == " ".join(caption.words)
    assert model.caption(encoder_input(model, 1)).captions[0].attention is None


def test_defaults_come_from_the_manifest(model: CaptionModel) -> None:
    params = model.params()
    assert (params.beam_size, params.max_length, params.length_penalty,
            params.num_captions, params.return_attention) == (3, 12, 0.0, 1, False)


@pytest.mark.parametrize("params, named", [
    (dict(beam_size=0), "beam_size"),
    (dict(beam_size=21), "beam_size"),
    (dict(max_length=0), "max_length"),
    (dict(max_length=101), "max_length"),
    (dict(length_penalty=-0.5), "length_penalty"),
    (dict(beam_size=2, num_captions=3), "num_captions"),
    (dict(decoding="greedy"), "decoding"),
    (dict(temperature=0.5), "temperature"),
    (dict(seed=1), "seed"),
    (dict(decoding="sample", beam_size=3), "beam_size"),
    (dict(decoding="sample", length_penalty=1.0), "length_penalty"),
    (dict(decoding="sample", temperature=0.0), "temperature"),
    (dict(decoding="sample", temperature=float("nan")), "temperature"),
    (dict(decoding="sample", top_k=-1), "top_k"),
    (dict(decoding="sample", top_k=25), "top_k"),
    (dict(decoding="sample", top_p=0.0), "top_p"),
    (dict(decoding="sample", top_p=1.5), "top_p"),
    (dict(decoding="sample", seed=-1), "seed"),
    (dict(decoding="sample", seed=2**63), "seed"),
    (dict(decoding="sample", num_captions=21), "num_captions"),
    (dict(decoding="sample", max_length=0), "max_length"),
])
def test_invalid_parameters_are_named(model: CaptionModel, params: dict, named: str) -> None:
    with pytest.raises(InvalidParameter, match=f"^{named}"):
        model.params(**params)


def test_attention_of_a_model_without_it_is_invalid(nic: CaptionModel) -> None:
    assert not nic.has_attention
    with pytest.raises(InvalidParameter, match="return_attention: model caption-nic/1"):
        nic.params(return_attention=True)
    caption = nic.caption(sample_png(1)).captions[0]
    assert caption.text == "blue cross left blue above triangle left"
    assert caption.attention is None and caption.log_prob < 0


def test_image_forms_give_the_same_caption(model: CaptionModel, tmp_path: Path) -> None:
    data = sample_png(5)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    pil = decode_image(data, max_pixels=1 << 20)
    texts = {model.caption(image, beam_size=2).captions[0].text
             for image in (data, path, str(path), pil, model.preprocess(pil))}
    assert len(texts) == 1
    with pytest.raises(InvalidParameter, match="shape"):
        model.as_array(np.zeros((3, IMAGE_SIZE + 1, IMAGE_SIZE), np.float32))


def test_rgba_pil_input_is_converted(model: CaptionModel) -> None:
    rgba = Image.new("RGBA", (IMAGE_SIZE, IMAGE_SIZE), (0, 0, 0, 0))
    white = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    np.testing.assert_array_equal(model.as_array(rgba), model.as_array(white))


def test_vocabulary_drops_special_tokens() -> None:
    vocab = Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>", "red", "circle"])
    assert vocab.kept([4, 3, 5, 2]) == [0, 2]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.kept([6])


def test_warm_up_runs_every_batch_size(model: CaptionModel, monkeypatch) -> None:
    sizes = []
    original = model.caption_batch
    monkeypatch.setattr(model, "caption_batch",
                        lambda requests: sizes.append(len(requests)) or original(requests))
    model.warm_up([1, 2, 4])
    assert sizes == [1, 2, 4]
