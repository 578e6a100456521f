"""Datasets, image reading, transforms, samplers and loaders (see docs/architecture.md)."""

from detkit.data.build import (
    DatasetUnion,
    build_dataset,
    build_mapper,
    build_test_loader,
    build_train_loader,
    collate,
)
from detkit.data.coco import COCODataset, records_to_coco
from detkit.data.common import resolve_data_root, resolve_path
from detkit.data.image_io import read_image
from detkit.data.samplers import GroupedBatchSampler, InferenceSampler, TrainingSampler
from detkit.data.synthetic import SyntheticDataset, generate_synthetic
from detkit.data.transforms import InferenceMapper, TrainMapper
from detkit.data.voc import VOC_CLASSES, VOCDataset, parse_voc_xml, write_voc_xml

__all__ = [
    "COCODataset",
    "DatasetUnion",
    "GroupedBatchSampler",
    "InferenceMapper",
    "InferenceSampler",
    "SyntheticDataset",
    "TrainMapper",
    "TrainingSampler",
    "VOCDataset",
    "VOC_CLASSES",
    "build_dataset",
    "build_mapper",
    "build_test_loader",
    "build_train_loader",
    "collate",
    "generate_synthetic",
    "parse_voc_xml",
    "read_image",
    "records_to_coco",
    "resolve_data_root",
    "resolve_path",
    "write_voc_xml",
]
