"""Label tables against their references: cityscapesscripts and the docs/method.md §6.2 Mapillary table."""

from __future__ import annotations

import numpy as np
import pytest

from src.data.labels import (
    CLASS_NAMES,
    IGNORE_INDEX,
    LABEL_IDS,
    MAPILLARY_V12,
    MAPILLARY_V12_CLASSES,
    PALETTE,
    TRAIN_IDS,
    mapillary_train_id,
)

cs_labels = pytest.importorskip("cityscapesscripts.helpers.labels")

# docs/method.md §6.2, written out literally: train ID -> Mapillary v1.2 indices.
EXPECTED_MAPILLARY = {
    0: [7, 8, 10, 13, 14, 23, 24],
    1: [2, 9, 11, 15],
    2: [17],
    3: [6],
    4: [3],
    5: [44, 45, 47],
    6: [48],
    7: [46, 49, 50],
    8: [30],
    9: [29],
    10: [27],
    11: [19],
    12: [20, 21, 22],
    13: [55],
    14: [61],
    15: [54],
    16: [58],
    17: [57],
    18: [52],
    255: [0, 1, 4, 5, 12, 16, 18, 25, 26, 28, *range(31, 44), 51, 53, 56, 59, 60, *range(62, 66)],
}
EXPECTED_MAPILLARY_NAMES = {
    7: "Bike Lane", 8: "Crosswalk - Plain", 10: "Parking", 13: "Road", 14: "Service Lane",
    23: "Lane Marking - Crosswalk", 24: "Lane Marking - General", 2: "Curb", 9: "Curb Cut", 11: "Pedestrian Area",
    15: "Sidewalk", 17: "Building", 6: "Wall", 3: "Fence", 44: "Street Light", 45: "Pole", 47: "Utility Pole",
    48: "Traffic Light", 46: "Traffic Sign Frame", 49: "Traffic Sign (Back)", 50: "Traffic Sign (Front)",
    30: "Vegetation", 29: "Terrain", 27: "Sky", 19: "Person", 20: "Bicyclist", 21: "Motorcyclist",
    22: "Other Rider", 55: "Car", 61: "Truck", 54: "Bus", 58: "On Rails", 57: "Motorcycle", 52: "Bicycle",
}  # fmt: skip


def test_label_id_table_equals_cityscapesscripts() -> None:
    expected = np.full(256, IGNORE_INDEX, np.uint8)
    for label in cs_labels.labels:
        if label.id >= 0 and 0 <= label.trainId < IGNORE_INDEX:
            expected[label.id] = label.trainId
    np.testing.assert_array_equal(LABEL_IDS.lut, expected)
    assert np.flatnonzero(LABEL_IDS.known).tolist() == sorted(lab.id for lab in cs_labels.labels if lab.id >= 0)


def test_class_names_and_palette_equal_cityscapesscripts() -> None:
    for train_id, (name, colour) in enumerate(zip(CLASS_NAMES, PALETTE, strict=True)):
        assert cs_labels.trainId2label[train_id].name == name
        assert tuple(cs_labels.trainId2label[train_id].color) == tuple(colour)


@pytest.mark.parametrize("train_id", sorted(EXPECTED_MAPILLARY))
def test_mapillary_table_equals_spec_row(train_id: int) -> None:
    assert np.flatnonzero(MAPILLARY_V12.lut[:66] == train_id).tolist() == EXPECTED_MAPILLARY[train_id]


def test_mapillary_names_and_rule() -> None:
    assert len(MAPILLARY_V12_CLASSES) == 66
    for index, name in EXPECTED_MAPILLARY_NAMES.items():
        assert MAPILLARY_V12_CLASSES[index] == name
    assert mapillary_train_id("Traffic Sign (Front)") == 7
    assert mapillary_train_id("Lane Marking - General") == 0
    assert mapillary_train_id("Car Mount") == IGNORE_INDEX
    assert mapillary_train_id("Bike Rack") == IGNORE_INDEX
    assert np.all(MAPILLARY_V12.lut[66:] == IGNORE_INDEX)


def test_unknown_values_become_ignore_and_are_reported() -> None:
    raw = np.array([[26, 7, 0, 40]], np.uint8)
    np.testing.assert_array_equal(LABEL_IDS.to_train_ids(raw), [[13, 0, 255, 255]])
    assert LABEL_IDS.unknown_values(raw) == [40]
    wide = np.array([[5, 19, 255, 300]], np.int32)
    np.testing.assert_array_equal(TRAIN_IDS.to_train_ids(wide), [[5, 255, 255, 255]])
    assert TRAIN_IDS.unknown_values(wide) == [19, 300]
