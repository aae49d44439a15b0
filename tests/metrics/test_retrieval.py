import numpy as np
import pytest

from training.metrics.retrieval import (
    image_to_text_ranks,
    retrieval_metrics,
    text_to_image_ranks,
)

# 3 images, 2 captions each.
SIMS = np.array([
    #  c0    c1    c2    c3    c4    c5
    [0.90, 0.10, 0.80, 0.20, 0.30, 0.00],  # image 0 owns c0, c1
    [0.70, 0.60, 0.50, 0.65, 0.10, 0.20],  # image 1 owns c2, c3
    [0.40, 0.30, 0.90, 0.80, 0.35, 0.10],  # image 2 owns c4, c5
])
IMG_OF_CAPTION = np.array([0, 0, 1, 1, 2, 2])


def test_ranks_by_hand():
    # image 0: best own caption c0 (0.90), nothing above -> 1
    # image 1: best own c3 (0.65), c0 (0.70) above -> 2
    # image 2: best own c4 (0.35), c0, c2, c3 above -> 4
    assert image_to_text_ranks(SIMS, IMG_OF_CAPTION).tolist() == [1, 2, 4]
    # caption j's column: how many images score at least its own image's score
    assert text_to_image_ranks(SIMS, IMG_OF_CAPTION).tolist() == [1, 3, 3, 2, 1, 2]


def test_metrics_by_hand():
    m = retrieval_metrics(SIMS, IMG_OF_CAPTION)
    assert m["i2t_r1"] == pytest.approx(100 / 3)
    assert (m["i2t_r5"], m["i2t_r10"]) == (100.0, 100.0)
    assert m["i2t_medr"] == 2.0
    assert m["i2t_meanr"] == pytest.approx(7 / 3)
    assert m["t2i_r1"] == pytest.approx(100 / 3)
    assert (m["t2i_r5"], m["t2i_r10"]) == (100.0, 100.0)
    assert m["t2i_medr"] == 2.0
    assert m["t2i_meanr"] == 2.0
    assert m["rsum"] == pytest.approx(2 * (100 / 3 + 200))


def test_ties_count_against_the_model():
    # Every score equal: each image's correct captions tie with the 10 - 2 wrong
    # ones, each caption's image ties with the other 4 images.
    sims = np.zeros((5, 10))
    img_of_caption = np.repeat(np.arange(5), 2)
    assert image_to_text_ranks(sims, img_of_caption).tolist() == [9] * 5
    assert text_to_image_ranks(sims, img_of_caption).tolist() == [5] * 10
    assert retrieval_metrics(sims, img_of_caption)["rsum"] == pytest.approx(100.0 + 200.0)


def _reference_ranks(sims, img_of_caption):
    n_images, n_captions = sims.shape
    i2t = []
    for i in range(n_images):
        best = max(sims[i, j] for j in range(n_captions) if img_of_caption[j] == i)
        i2t.append(1 + sum(1 for j in range(n_captions)
                           if img_of_caption[j] != i and sims[i, j] >= best))
    t2i = []
    for j in range(n_captions):
        own = sims[img_of_caption[j], j]
        t2i.append(1 + sum(1 for i in range(n_images)
                           if i != img_of_caption[j] and sims[i, j] >= own))
    return i2t, t2i


def test_matches_loop_reference_on_shuffled_captions():
    rng = np.random.default_rng(0)
    n_images = 40
    img_of_caption = rng.permutation(np.repeat(np.arange(n_images), 5))
    sims = rng.integers(0, 6, size=(n_images, 5 * n_images)).astype(float)  # many ties
    i2t, t2i = _reference_ranks(sims, img_of_caption)
    assert image_to_text_ranks(sims, img_of_caption).tolist() == i2t
    assert text_to_image_ranks(sims, img_of_caption).tolist() == t2i
    m = retrieval_metrics(sims, img_of_caption)
    assert m["i2t_r5"] == pytest.approx(100 * np.mean(np.array(i2t) <= 5))
    assert m["t2i_medr"] == np.median(t2i)
    assert 0 < m["t2i_r10"] < 100


@pytest.mark.parametrize(("sims", "img_of_caption", "message"), [
    (np.zeros((2, 3)), np.array([0, 1]), r"shape \(3,\)"),
    (np.zeros((2, 3)), np.array([0, 1, 2]), "index images 0..1"),
    (np.zeros((2, 3)), np.array([0, 0, 0]), r"1 image\(s\) have no caption, e.g. \[1\]"),
    (np.full((1, 1), np.nan), np.array([0]), "NaN"),
    (np.zeros(3), np.array([0, 0, 0]), "2-D"),
    (np.zeros((2, 2)), np.array([0.0, 1.0]), "integer"),
])
def test_invalid_inputs(sims, img_of_caption, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(sims, img_of_caption)
