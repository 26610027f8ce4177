"""Scene graph data: VG150 and simple-JSON loaders, the SGG mapper and the toy dataset generator.

Importing this package registers the builtin dataset names (see :mod:`kern_d2.data.builtin`).
"""
from . import builtin  # noqa: F401  (registers vg150_* and toy_*)
from .arrays import DatasetFormatError, filter_images_without_overlapping_pairs
from .builtin import register_toy, register_vg150
from .mapper import SGGDatasetMapper, sample_one_predicate_per_pair
from .sgg_json import load_sgg_json, read_sgg_json_classes, register_sgg_json
from .vg import load_vg_sgg, read_vg_classes, register_vg_sgg

__all__ = [
    "DatasetFormatError",
    "SGGDatasetMapper",
    "filter_images_without_overlapping_pairs",
    "load_sgg_json",
    "load_vg_sgg",
    "read_sgg_json_classes",
    "read_vg_classes",
    "register_sgg_json",
    "register_toy",
    "register_vg150",
    "register_vg_sgg",
    "sample_one_predicate_per_pair",
]
