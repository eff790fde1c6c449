"""FER2013 data: load a Kaggle CSV or an image tree (through an npz cache), subsets, and data checks.

Modules, each importing only those before it: dataset (Split, FerDataset) -> subset, cache, fer2013, folders ->
loader (load_dataset) -> training_data (the splits one training uses) ; checks (duplicates, leakage).
"""

from fer_experiments.data.checks import CheckReport, check_dataset, format_report, plot_class_balance, report_to_dict
from fer_experiments.data.dataset import FerDataset, Split, default_cache_dir
from fer_experiments.data.loader import file_digest, load_dataset
from fer_experiments.data.subset import stratified_subset
from fer_experiments.data.training_data import TrainingData, load_training_data

__all__ = [
    "CheckReport",
    "FerDataset",
    "Split",
    "TrainingData",
    "check_dataset",
    "default_cache_dir",
    "file_digest",
    "format_report",
    "load_dataset",
    "load_training_data",
    "plot_class_balance",
    "report_to_dict",
    "stratified_subset",
]
