"""FER2013 data: load a Kaggle CSV or an image tree (through an npz cache), subsets, and data checks."""

from fer_experiments.data.cache import file_digest
from fer_experiments.data.checks import CheckReport, check_dataset, format_report, plot_class_balance, report_to_dict
from fer_experiments.data.dataset import FerDataset, Split, default_cache_dir, load_dataset
from fer_experiments.data.subset import stratified_subset

__all__ = [
    "CheckReport",
    "FerDataset",
    "Split",
    "check_dataset",
    "default_cache_dir",
    "file_digest",
    "format_report",
    "load_dataset",
    "plot_class_balance",
    "report_to_dict",
    "stratified_subset",
]
