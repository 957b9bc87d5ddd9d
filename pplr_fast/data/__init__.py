"""Data layer: dataset folders, the synthetic dataset, transforms, sampling."""
from .datasets import (
    DATASET_NAMES,
    DATASETS,
    DatasetEntry,
    DatasetPreset,
    DatasetError,
    DatasetWarning,
    ReidDataset,
    Sample,
    canonical_dataset_name,
    dataset_name_argument,
    create_dataset,
    load_dukemtmcreid,
    load_market1501,
    load_msmt17,
    load_synthetic,
    load_veri,
    locate_dataset,
    read_market_layout,
)
from .image_dataset import (ImageDataset, ImageReadError, UnreadableImagesError, check_images,
                            image_problem, read_rgb_image)
from .sampler import RandomIdentitySampler
from .synthetic import make_synthetic_dataset, save_preview
from .transforms import build_test_transform, build_train_transform

__all__ = [
    "DATASET_NAMES", "DATASETS", "DatasetEntry", "DatasetPreset", "DatasetError", "DatasetWarning",
    "ReidDataset", "Sample", "canonical_dataset_name", "dataset_name_argument", "create_dataset",
    "load_dukemtmcreid",
    "load_market1501", "load_msmt17", "load_synthetic", "load_veri", "locate_dataset", "read_market_layout",
    "ImageDataset", "ImageReadError", "UnreadableImagesError", "check_images", "image_problem",
    "read_rgb_image",
    "RandomIdentitySampler",
    "make_synthetic_dataset", "save_preview",
    "build_test_transform", "build_train_transform",
]
