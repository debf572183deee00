import numpy as np
import pytest

from medsight.boxes import Boxes


def test_xy_files_become_row_column_corners_and_back():
    boxes = Boxes.from_xy([[10, 20, 30, 60], [0, 0, 5, 5]], labels=[1, 0], scores=[0.9, 0.2])
    assert boxes.corners.tolist() == [[20, 10, 60, 30], [0, 0, 5, 5]]
    assert boxes.xy().tolist() == [[10, 20, 30, 60], [0, 0, 5, 5]]
    assert boxes.extents().tolist() == [[40, 20], [5, 5]]
    assert boxes.select(boxes.scores > 0.5).labels.tolist() == [1]


def test_a_volume_box_in_millimetres_follows_the_affine():
    boxes = Boxes([[1, 2, 3, 4, 5, 6]], labels=[0])
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [10, 0, -5]
    # edges 1..4, 2..5, 3..6 are indices 0.5..3.5, 1.5..4.5, 2.5..5.5 (the affine maps voxel centres)
    assert boxes.world(affine).tolist() == [[11, 4.5, 5, 17, 13.5, 17]]
    with pytest.raises(ValueError, match="2D boxes"):
        boxes.xy()


def test_empty_boxes_keep_their_dimension_and_mismatches_are_refused():
    assert Boxes.empty(3).corners.shape == (0, 6)
    assert len(Boxes.empty(2, scored=True).scores) == 0
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        Boxes([[0, 0, 1, 1], [0, 0, 2, 2]], labels=[0])
    with pytest.raises(ValueError, match="a 2D box has 4"):
        Boxes([[0, 0, 1, 1, 2]], labels=[0])
