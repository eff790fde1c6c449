"""The data one training uses: the loaded data set, Training (possibly a stratified subset) and PublicTest."""

from __future__ import annotations

from dataclasses import dataclass

from fer_experiments.config import DataConfig
from fer_experiments.data.dataset import FerDataset, Split
from fer_experiments.data.loader import load_dataset
from fer_experiments.data.subset import stratified_subset


@dataclass(frozen=True)
class TrainingData:
    """The loaded data set and the two splits a training uses (Training possibly subset, PublicTest)."""

    dataset: FerDataset
    train: Split
    val: Split
    limit: int | None


def load_training_data(cfg: DataConfig, dataset: FerDataset | None = None) -> TrainingData:
    """Load the data set (cached) and take the stratified Training subset that ``cfg.limit`` asks for."""
    ds = dataset if dataset is not None else load_dataset(cfg.path, cache_dir=cfg.cache_dir)
    train = ds.split("Training")
    if cfg.limit is not None:
        train = stratified_subset(train, cfg.limit, seed=cfg.subset_seed)
    return TrainingData(dataset=ds, train=train, val=ds.split("PublicTest"), limit=cfg.limit)
