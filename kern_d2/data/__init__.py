"""Scene graph data: VG150, Open Images, GQA-200 and simple-JSON loaders, the SGG mapper and the toy dataset generator.

Importing this package registers the builtin dataset names (see :mod:`kern_d2.data.builtin`).
"""
from . import builtin  # noqa: F401  (registers vg150_* and toy_*)
from .arrays import DatasetFormatError, filter_images_without_overlapping_pairs
from .builtin import register_gqa200, register_open_images, register_toy, register_vg150
from .gqa import load_gqa_sgg, read_gqa_classes, register_gqa_sgg
from .mapper import SGGDatasetMapper, sample_one_predicate_per_pair
from .oi import load_oi_sgg, read_oi_classes, register_oi_sgg
from .sgg_json import load_sgg_json, read_sgg_json_classes, register_sgg_json
from .transfer import CompactTransfer
from .user_datasets import REGISTER_ENV, register_user_datasets
from .vg import load_vg_sgg, read_vg_classes, register_vg_sgg

__all__ = [
    "CompactTransfer",
    "DatasetFormatError",
    "REGISTER_ENV",
    "SGGDatasetMapper",
    "filter_images_without_overlapping_pairs",
    "load_gqa_sgg",
    "load_oi_sgg",
    "load_sgg_json",
    "load_vg_sgg",
    "read_gqa_classes",
    "read_oi_classes",
    "read_sgg_json_classes",
    "read_vg_classes",
    "register_gqa200",
    "register_gqa_sgg",
    "register_oi_sgg",
    "register_open_images",
    "register_sgg_json",
    "register_toy",
    "register_user_datasets",
    "register_vg150",
    "register_vg_sgg",
    "sample_one_predicate_per_pair",
]
