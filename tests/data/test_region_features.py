"""Region features on disk: glimpse's .npz, the bottom-up-attention TSV, per-image .npz."""

import base64

import numpy as np
import pytest

from training.data.readers import DatasetFormatError
from training.data.region_features import (
    RegionFeatures,
    load_region_features,
    save_region_features,
)


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.float32).tobytes()).decode()


def tsv_row(image_id, w, h, boxes, feats) -> str:
    return "\t".join([str(image_id), str(w), str(h), str(len(boxes)), b64(boxes), b64(feats)])


def test_glimpse_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rf = RegionFeatures(image_ids=np.array([7, 3]), boxes=rng.random((2, 3, 4)),
                        scores=rng.random((2, 3)), features=rng.random((2, 3, 5)),
                        num_regions=np.array([3, 2]))
    path = save_region_features(tmp_path / "features" / "regions" / "val.npz", rf)
    back = load_region_features(path)
    assert len(back) == 2 and back.index_of(3) == 1 and back.index_of(7) == 0
    assert back.features.dtype == np.float32 and back.image_ids.dtype == np.int64
    np.testing.assert_array_equal(back.features, rf.features)
    np.testing.assert_array_equal(back.boxes, rf.boxes)
    np.testing.assert_array_equal(back.num_regions, [3, 2])
    with pytest.raises(KeyError, match="image 4"):
        back.index_of(4)


def test_region_features_check_shapes():
    with pytest.raises(ValueError, match="boxes"):
        RegionFeatures(np.array([1]), np.zeros((1, 2, 3)), np.zeros((1, 2)),
                       np.zeros((1, 2, 5)), np.array([2]))
    with pytest.raises(ValueError, match="repeat"):
        RegionFeatures(np.array([1, 1]), np.zeros((2, 2, 4)), np.zeros((2, 2)),
                       np.zeros((2, 2, 5)), np.array([2, 2]))


def test_glimpse_npz_missing_key_is_named(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, image_ids=np.array([1]), boxes=np.zeros((1, 1, 4)))
    with pytest.raises(DatasetFormatError, match="bad.npz: missing scores, features"):
        load_region_features(path)


def test_tsv_normalises_boxes_and_pads_images(tmp_path):
    boxes_a = np.array([[0, 0, 320, 240], [32, 48, 64, 96]], np.float32)
    feats_a = np.arange(2 * 6, dtype=np.float32).reshape(2, 6)
    boxes_b = np.array([[10, 20, 30, 40]], np.float32)
    feats_b = np.full((1, 6), 0.5, np.float32)
    path = tmp_path / "trainval.tsv"
    path.write_text(tsv_row(42, 640, 480, boxes_a, feats_a) + "\n"
                    + tsv_row(9, 100, 200, boxes_b, feats_b) + "\n")
    rf = load_region_features(path)
    assert rf.features.shape == (2, 2, 6) and list(rf.image_ids) == [42, 9]
    np.testing.assert_allclose(rf.boxes[0, 1], [0.05, 0.1, 0.1, 0.2])
    np.testing.assert_allclose(rf.boxes[1, 0], [0.1, 0.1, 0.3, 0.2])
    np.testing.assert_array_equal(rf.features[0], feats_a)
    np.testing.assert_array_equal(rf.num_regions, [2, 1])
    np.testing.assert_array_equal(rf.scores, [[1, 1], [1, 0]])
    assert not rf.features[1, 1].any() and not rf.boxes[1, 1].any()  # padding is zero


def test_tsv_reads_fields_beyond_the_csv_default_limit(tmp_path):
    feats = np.ones((36, 2048), np.float32)  # ~390 kB of base64 in one field
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (36, 1))
    path = tmp_path / "big.tsv"
    path.write_text(tsv_row(1, 10, 10, boxes, feats) + "\n")
    rf = load_region_features(path)
    assert rf.features.shape == (1, 36, 2048) and rf.features.sum() == 36 * 2048


@pytest.mark.parametrize(("row", "message"), [
    ("1\t10\t10\t1\tAAAA", "line 2: 5 fields, expected 6"),
    ("1\t10\t10\t1\t!!notbase64\tAAAA", "line 2, boxes: not valid base64"),
    (f"1\t10\t10\t2\t{b64(np.zeros((1, 4)))}\t{b64(np.zeros((2, 3)))}",
     "line 2, boxes: 4 values, expected 2 x 4"),
    (f"1\t10\t10\t2\t{b64(np.zeros((2, 4)))}\t{b64(np.zeros(5))}",
     "line 2, features: 5 values do not split into 2 rows"),
    (f"x\t10\t10\t1\t{b64(np.zeros((1, 4)))}\t{b64(np.zeros((1, 3)))}", "line 2: invalid"),
])
def test_broken_tsv_names_file_and_line(tmp_path, row, message):
    path = tmp_path / "broken.tsv"
    good = tsv_row(5, 10, 10, np.zeros((1, 4)), np.zeros((1, 3)))
    path.write_text(good + "\n" + row + "\n")
    with pytest.raises(DatasetFormatError, match=f"broken.tsv: {message}"):
        load_region_features(path)


def test_npz_directory_with_either_key_spelling(tmp_path):
    d = tmp_path / "feats"
    d.mkdir()
    np.savez(d / "COCO_val2014_000000000042.npz", x=np.ones((3, 4), np.float16),
             bbox=np.array([[0, 0, 50, 25], [5, 5, 10, 10], [0, 0, 1, 1]], np.float32),
             image_w=100, image_h=50, num_bbox=2)
    np.savez(d / "7.npz", features=np.full((1, 4), 2.0), boxes=np.array([[10, 0, 20, 5.0]]),
             image_w=20, image_h=10)
    rf = load_region_features(d)
    assert list(rf.image_ids) == [7, 42] and rf.features.shape == (2, 2, 4)
    np.testing.assert_array_equal(rf.num_regions, [1, 2])  # num_bbox keeps the first two
    np.testing.assert_allclose(rf.boxes[rf.index_of(42), 0], [0, 0, 0.5, 0.5])
    np.testing.assert_allclose(rf.boxes[rf.index_of(7), 0], [0.5, 0, 1, 0.5])
    assert rf.features[rf.index_of(7), 0, 0] == 2.0


def test_npz_directory_errors_name_the_file(tmp_path):
    d = tmp_path / "feats"
    d.mkdir()
    np.savez(d / "3.npz", x=np.ones((2, 4)), bbox=np.zeros((3, 4)), image_w=1, image_h=1)
    with pytest.raises(DatasetFormatError, match=r"3.npz: features are \(2, 4\), expected"):
        load_region_features(d)
    (d / "3.npz").unlink()
    np.savez(d / "4.npz", x=np.ones((2, 4)), image_w=1, image_h=1)
    with pytest.raises(DatasetFormatError, match="4.npz: has none of bbox, boxes"):
        load_region_features(d)
    (d / "4.npz").unlink()
    with pytest.raises(DatasetFormatError, match="holds no images"):
        load_region_features(d)


def test_unknown_file_kind_is_refused(tmp_path):
    path = tmp_path / "regions.h5"
    path.write_bytes(b"\x89HDF")
    with pytest.raises(DatasetFormatError, match="regions.h5: expected a .npz"):
        load_region_features(path)
