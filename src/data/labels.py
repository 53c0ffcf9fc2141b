"""The 19 Cityscapes train IDs and the lookup tables that map every raw label encoding onto them (docs/method.md §6.2).

Each raw encoding is a `LabelEncoding`: a 256-entry uint8 table (raw value -> train ID, 255 = ignore) plus the set
of raw values the encoding defines, so that a checker can tell "mapped to ignore on purpose" from "not a value of
this encoding at all". Both end up as 255 in the dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = 255
NUM_CLASSES = 19

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)  # fmt: skip
"""RGB colour per train ID (the Cityscapes palette)."""

LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
"""Cityscapes label IDs (also the GTA5 raw labels) -> train IDs; every other ID is ignored."""

NUM_LABEL_IDS = 34  # Cityscapes label IDs 0..33 (license plate, -1, is never written to a PNG)

#: train ID -> the Cityscapes label ID it is written as (the benchmark servers' encoding); void (255) -> 0 "unlabeled"
TRAIN_TO_LABEL_ID = np.zeros(256, np.uint8)
for _label_id, _train_id in LABEL_ID_TO_TRAIN_ID.items():
    TRAIN_TO_LABEL_ID[_train_id] = _label_id


def train_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Train IDs (uint8, 255 = void) -> Cityscapes label IDs, by :data:`TRAIN_TO_LABEL_ID`."""
    return TRAIN_TO_LABEL_ID[np.asarray(train_ids, dtype=np.uint8)]


MAPILLARY_V12_CLASSES: tuple[str, ...] = (
    "Bird", "Ground Animal", "Curb", "Fence", "Guard Rail", "Barrier", "Wall", "Bike Lane", "Crosswalk - Plain",
    "Curb Cut", "Parking", "Pedestrian Area", "Rail Track", "Road", "Service Lane", "Sidewalk", "Bridge",
    "Building", "Tunnel", "Person", "Bicyclist", "Motorcyclist", "Other Rider", "Lane Marking - Crosswalk",
    "Lane Marking - General", "Mountain", "Sand", "Sky", "Snow", "Terrain", "Vegetation", "Water", "Banner",
    "Bench", "Bike Rack", "Billboard", "Catch Basin", "CCTV Camera", "Fire Hydrant", "Junction Box", "Mailbox",
    "Manhole", "Phone Booth", "Pothole", "Street Light", "Pole", "Traffic Sign Frame", "Utility Pole",
    "Traffic Light", "Traffic Sign (Back)", "Traffic Sign (Front)", "Trash Can", "Bicycle", "Boat", "Bus", "Car",
    "Caravan", "Motorcycle", "On Rails", "Other Vehicle", "Trailer", "Truck", "Wheeled Slow", "Car Mount",
    "Ego Vehicle", "Unlabeled",
)  # fmt: skip
"""Mapillary Vistas v1.2 readable class names, index = the value in the label PNGs."""

# docs/method.md §6.2 rules 2-7: substring -> train ID, tested in this order after the exact-name rule.
_MAPILLARY_SUBSTRING_RULES: tuple[tuple[tuple[str, ...], int], ...] = (
    (("trafficsign", "front", "back"), 7),
    (("onrail",), 16),
    (("cyclist", "rider"), 12),
    (("pole", "streetlight"), 5),
    (("curb", "pedestrianarea"), 1),
    (("crosswalkplain", "parking", "bikelane", "servicelane", "lanemarking"), 0),
)


def _squash(name: str) -> str:
    return name.lower().replace(" ", "").replace("-", "")


_CITYSCAPES_KEYS = {_squash(n): i for i, n in enumerate(CLASS_NAMES)}


def mapillary_train_id(name: str) -> int:
    """Train ID of a Mapillary class name by the DF converter's name rule (docs/method.md §6.2 rules 1-8)."""
    key = _squash(name)
    if key in _CITYSCAPES_KEYS:
        return _CITYSCAPES_KEYS[key]
    for substrings, train_id in _MAPILLARY_SUBSTRING_RULES:
        if any(s in key for s in substrings):
            return train_id
    return IGNORE_INDEX


def build_lut(mapping: Mapping[int, int]) -> np.ndarray:
    """256-entry uint8 lookup table: raw value -> train ID, unlisted values -> 255."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


@dataclass(frozen=True, eq=False)
class LabelEncoding:
    """A raw label encoding: `lut` maps it to train IDs, `known[v]` says whether v is a value of the encoding."""

    name: str
    lut: np.ndarray = field(repr=False)
    known: np.ndarray = field(repr=False)

    def to_train_ids(self, raw: np.ndarray) -> np.ndarray:
        """Map a raw label map to uint8 train IDs; values the table does not list (also > 255) become 255."""
        if raw.dtype == np.uint8:
            return self.lut[raw]
        out = np.full(raw.shape, IGNORE_INDEX, dtype=np.uint8)
        valid = (raw >= 0) & (raw < 256)
        out[valid] = self.lut[raw[valid]]
        return out

    def unknown_values(self, raw: np.ndarray) -> list[int]:
        """Values present in `raw` that the encoding does not define (sorted)."""
        values = np.unique(raw)
        in_range = (values >= 0) & (values < 256)
        bad = ~in_range
        bad[in_range] = ~self.known[values[in_range]]
        return [int(v) for v in values[bad]]


def _known(values: range | list[int]) -> np.ndarray:
    known = np.zeros(256, dtype=bool)
    known[list(values)] = True
    return known


TRAIN_IDS = LabelEncoding(
    "train IDs", build_lut({i: i for i in range(NUM_CLASSES)}), _known([*range(NUM_CLASSES), IGNORE_INDEX])
)
"""Already train IDs (Cityscapes *_labelTrainIds, BDD100K, ACDC, converted GTA5/Mapillary): only checked."""

LABEL_IDS = LabelEncoding("Cityscapes label IDs", build_lut(LABEL_ID_TO_TRAIN_ID), _known(range(NUM_LABEL_IDS)))
"""Cityscapes *_gtFine_labelIds and the raw GTA5 label PNGs."""

MAPILLARY_V12 = LabelEncoding(
    "Mapillary v1.2 classes",
    build_lut({i: mapillary_train_id(n) for i, n in enumerate(MAPILLARY_V12_CLASSES)}),
    _known(range(len(MAPILLARY_V12_CLASSES))),
)
"""Raw Mapillary Vistas v1.2 66-class index PNGs."""
