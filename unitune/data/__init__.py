"""Data for every stage: sources, the one preprocessing pipeline, resumable loaders.

Typical use (the same in supernet training, search, retrain and evaluation)::

    cfg = DataConfig.from_dict(raw["data"], source="cfg.yaml: data")
    data_config = resolve_data_config(model)                  # input size, mean/std from the backbone
    train_set = build_dataset(cfg, "train", build_transform(data_config, train=True, cfg=cfg))
    val_set = build_dataset(cfg, "val", build_transform(data_config, train=False, cfg=cfg))
    loader = build_loader(train_set, cfg, train=True, seed=run_seed, rank=rank, world_size=world)
    for epoch in range(start_epoch, epochs):
        loader.sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
        for x, y in loader: ...
"""

from .config import AUGMENTS, RESIZE_MODES, SOURCES, SPLITS, DataConfig
from .datasets import ArrayDataset, DataError, FileDataset, ImageDataset, JoinedDataset, SubsetDataset, load_image
from .generated import SyntheticDataset, digits_dataset, digits_split_indices
from .loader import EpochSampler, SeededFetch, build_loader, sample_rng
from .sources import build_dataset, fixed_subset, read_classes, read_list, select_classes
from .split import SPLIT_FILE, fold_splits, repeated_splits
from .split_record import check_split, record_split
from .transforms import DATA_CONFIG_KEYS, RANDAUGMENT, build_transform, resolve_data_config

__all__ = [
    "AUGMENTS", "RESIZE_MODES", "SOURCES", "SPLITS", "DataConfig",
    "ArrayDataset", "DataError", "FileDataset", "ImageDataset", "JoinedDataset", "SubsetDataset", "load_image",
    "SyntheticDataset", "digits_dataset", "digits_split_indices",
    "EpochSampler", "SeededFetch", "build_loader", "sample_rng",
    "build_dataset", "fixed_subset", "read_classes", "read_list", "select_classes",
    "SPLIT_FILE", "check_split", "fold_splits", "record_split", "repeated_splits",
    "DATA_CONFIG_KEYS", "RANDAUGMENT", "build_transform", "resolve_data_config",
]
