"""The attention-spread diagnostic's map from object boxes to grid cells."""

from __future__ import annotations

from script_modules import load_script


def load():
    return load_script("attention_spread")


def test_a_box_covers_the_cells_it_overlaps():
    cells = load().object_cells
    # 64 px image, 8 x 8 grid of 8 px cells: a box from x 10 to 26, y 0 to 7
    covered = cells([{"bbox": [10, 0, 16, 7]}], 64, 8).reshape(8, 8)
    assert covered[0, 1:4].all() and covered.sum() == 3
    # a box ending exactly on a cell edge does not spill into the next cell
    edge = cells([{"bbox": [0, 0, 8, 8]}], 64, 8).reshape(8, 8)
    assert edge[0, 0] and edge.sum() == 1
    # boxes at the far corner stay inside the grid; two objects add up
    both = cells([{"bbox": [60, 60, 4, 4]}, {"bbox": [0, 0, 8, 8]}], 64, 8).reshape(8, 8)
    assert both[7, 7] and both[0, 0] and both.sum() == 2
