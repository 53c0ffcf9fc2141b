"""Datasets in their real on-disk layouts (docs/method.md §6.1), plus generated in-memory scenes.

`DATASETS` is the registry of the on-disk dataset classes by `key` (every `LayoutDataset` subclass with a `key`
registers itself when defined); the layout checker (`src.data.checks`) and the generated-tree writer
(`src.data.synthetic`) iterate over it, so a dataset's facts live on its class only.
"""

from src.data.datasets.acdc import CONDITIONS, ACDCDataset
from src.data.datasets.base import (
    Layout,
    LayoutDataset,
    OfficialSplit,
    SegmentationDataset,
    read_image,
    read_raw_label,
)
from src.data.datasets.bdd100k import BDD100KDataset
from src.data.datasets.cityscapes import CityscapesDataset
from src.data.datasets.gta5 import GTA5Dataset
from src.data.datasets.mapillary import MapillaryDataset
from src.data.datasets.synthetic import SyntheticDataset

DATASETS: dict[str, type[LayoutDataset]] = LayoutDataset.registry

__all__ = [
    "CONDITIONS",
    "DATASETS",
    "ACDCDataset",
    "BDD100KDataset",
    "CityscapesDataset",
    "GTA5Dataset",
    "Layout",
    "LayoutDataset",
    "MapillaryDataset",
    "OfficialSplit",
    "SegmentationDataset",
    "SyntheticDataset",
    "read_image",
    "read_raw_label",
]
