"""Datasets in their real on-disk layouts (SPEC §6.1), plus generated in-memory scenes."""

from src.data.datasets.acdc import CONDITIONS, ACDCDataset
from src.data.datasets.base import Layout, LayoutDataset, SegmentationDataset, read_image, read_raw_label
from src.data.datasets.bdd100k import BDD100KDataset
from src.data.datasets.cityscapes import CityscapesDataset
from src.data.datasets.gta5 import GTA5Dataset
from src.data.datasets.mapillary import MapillaryDataset
from src.data.datasets.synthetic import SyntheticDataset

__all__ = [
    "CONDITIONS",
    "ACDCDataset",
    "BDD100KDataset",
    "CityscapesDataset",
    "GTA5Dataset",
    "Layout",
    "LayoutDataset",
    "MapillaryDataset",
    "SegmentationDataset",
    "SyntheticDataset",
    "read_image",
    "read_raw_label",
]
