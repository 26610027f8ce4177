"""Loaders of the published scene-graph formats and their registration in Detectron2's catalogs (as
``detectron2/data/datasets/``).

- :mod:`.vg` (VG150 h5 + dicts json), :mod:`.oi` (Open Images of BGNN / PySGG), :mod:`.gqa` (GQA-200 of SHA-GCL),
  :mod:`.sgg_json` (kern_d2's simple JSON for one's own data): ``load_*``, ``read_*_classes``, ``register_*``.
- :mod:`.vg_format` (the VG150 files: constants, box conversions, writers), :mod:`.arrays` (the flat annotations and
  the cleaning steps every loader shares), :mod:`.ragged` (per-image json lists to flat arrays),
  :mod:`.image_files` (which image files exist).
- :mod:`.registration` (registration with class names read on first use), :mod:`.builtin` (the builtin names,
  registered once, on the first import of this package), :mod:`.user_datasets` (``--register``, ``$KERN_REGISTER``).
"""
from . import builtin as _builtin  # noqa: F401  (registers vg150_*, toy_*, synth_*, oiv6_*, oiv4_*, gqa200_*)
from .arrays import DatasetFormatError, filter_images_without_overlapping_pairs
from .builtin import register_gqa200, register_open_images, register_toy, register_vg150
from .gqa import load_gqa_sgg, read_gqa_classes, register_gqa_sgg
from .oi import load_oi_sgg, read_oi_classes, register_oi_sgg
from .sgg_json import load_sgg_json, read_sgg_json_classes, register_sgg_json
from .user_datasets import REGISTER_ENV, register_user_datasets
from .vg import load_vg_sgg, read_vg_classes, register_vg_sgg

__all__ = [
    "DatasetFormatError",
    "REGISTER_ENV",
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
]
