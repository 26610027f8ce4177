"""Builtin dataset names, registered once, by the first ``import kern_d2.data`` (like Detectron2's builtin.py);
names registered already (a reload, the user's own) are skipped. ``import kern_d2.modeling`` registers none.

Root: ``$KERN_DATASETS`` (default ``datasets``, relative to the working directory).

- ``vg150_train``, ``vg150_val``, ``vg150_test`` under ``<root>/vg/``: ``VG-SGG-with-attri.h5`` (the
  Scene-Graph-Benchmark file most users have) if it exists, else ``VG-SGG.h5``; likewise
  ``VG-SGG-dicts-with-attri.json`` / ``VG-SGG-dicts.json``; ``image_data.json``; images in ``VG_100K/``.
  val = the first ``$KERN_VG_NUM_VAL`` train-split images (default 5,000, the published convention; set it lower
  for a small VG-layout dataset, whose train split would otherwise all become val).
- ``toy_train``, ``toy_val``, ``toy_test`` under ``<root>/toy/`` (``tools/make_toy_dataset.py``), same file names
  as VG (plain variant); val size from the h5's ``num_val_images`` attribute.
- ``synth_train``, ``synth_val``, ``synth_test`` under ``<root>/synth/`` (``tools/make_synth_dataset.py``, the
  benchmark of datasets/README.md), laid out as the toy.
- ``oiv6_{train,val,test}`` under ``<root>/oiv6/`` and ``oiv4_*`` under ``<root>/oiv4/``: the processed Open Images
  layout of BGNN / PySGG (``annotations/``, ``images/``; see :mod:`kern_d2.data.datasets.oi`).
- ``gqa200_{train,val,test}`` under ``<root>/gqa/``: GQA-200 of SHA-GCL (see :mod:`kern_d2.data.datasets.gqa`).

Missing image files of ``vg150_*``, ``oiv6_*``, ``oiv4_*`` and ``gqa200_*`` (the downloaded datasets): one policy,
``$KERN_MISSING_IMAGES`` = ``error`` (the default: loading fails, naming the missing files), ``skip`` (those images
are dropped, counted and logged) or ``ignore`` (not checked); see :func:`kern_d2.data.datasets.vg.load_vg_sgg`. For
``vg150_*``, ``$KERN_VG_MISSING_IMAGES`` (its earlier name) is read when ``$KERN_MISSING_IMAGES`` is not set.

The names are registered even when the files are absent; loading them then fails naming the missing file. Class
names are read on first use (:mod:`kern_d2.data.datasets.registration`), so a broken file of one dataset (say a partial
``categories_dict.json``) fails only the runs that use it, naming the file, and never this import. Your own
datasets: :mod:`kern_d2.data.datasets.user_datasets` (``--register``, ``$KERN_REGISTER``).
"""
import os

from detectron2.data import DatasetCatalog

from .gqa import GQA_SPLITS, register_gqa_sgg
from .image_files import MISSING_IMAGE_POLICIES
from .oi import OI_SPLITS, register_oi_sgg
from .vg import NUM_VAL_ENV, SPLITS, register_vg_sgg

MISSING_IMAGES_ENV = "KERN_MISSING_IMAGES"  # vg150_*, oiv6_*, oiv4_*, gqa200_*
VG_MISSING_IMAGES_ENV = "KERN_VG_MISSING_IMAGES"  # its earlier name, vg150_* only (read when the other is unset)


def _first_existing(folder: str, names) -> str:
    """The first of ``names`` that exists in ``folder``, else the last one (named in the error on load)."""
    for name in names:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return os.path.join(folder, names[-1])


def register_vg150(root: str, prefix: str = "vg150", **kwargs):
    """Register ``<prefix>_train/val/test`` for VG150 files in ``root`` (kwargs go to ``load_vg_sgg``)."""
    h5_file = _first_existing(root, ("VG-SGG-with-attri.h5", "VG-SGG.h5"))
    dicts_file = _first_existing(root, ("VG-SGG-dicts-with-attri.json", "VG-SGG-dicts.json"))
    for split in SPLITS:
        register_vg_sgg(
            f"{prefix}_{split}", h5_file, dicts_file, os.path.join(root, "image_data.json"),
            os.path.join(root, "VG_100K"), split, **kwargs,
        )


def register_toy(root: str, prefix: str = "toy", **kwargs):
    """Register ``<prefix>_train/val/test`` for a generated dataset in ``root`` (``tools/make_toy_dataset.py``,
    ``tools/make_synth_dataset.py``)."""
    kwargs.setdefault("num_val_images", None)  # from the h5 attribute written by the generator
    for split in SPLITS:
        register_vg_sgg(
            f"{prefix}_{split}", os.path.join(root, "VG-SGG.h5"), os.path.join(root, "VG-SGG-dicts.json"),
            os.path.join(root, "image_data.json"), os.path.join(root, "VG_100K"), split, **kwargs,
        )


def register_open_images(root: str, prefix: str, **kwargs):
    """Register ``<prefix>_train/val/test`` for the Open Images folder ``root`` (kwargs go to ``load_oi_sgg``)."""
    for split in OI_SPLITS:
        register_oi_sgg(f"{prefix}_{split}", root, split, **kwargs)


def register_gqa200(root: str, prefix: str = "gqa200", **kwargs):
    """Register ``<prefix>_train/val/test`` for the GQA-200 folder ``root`` (kwargs go to ``load_gqa_sgg``)."""
    for split in GQA_SPLITS:
        register_gqa_sgg(f"{prefix}_{split}", root, split, **kwargs)


def missing_images_from_env(environ=os.environ, earlier_name: str = None) -> str:
    """The missing-image policy of the builtin names: ``$KERN_MISSING_IMAGES``, else ``earlier_name`` (an earlier
    variable of the same meaning) when given and set, else ``error``. An unknown value is a ValueError naming the
    variable."""
    for name in (MISSING_IMAGES_ENV, earlier_name):
        value = environ.get(name, "").strip() if name else ""
        if value:
            if value not in MISSING_IMAGE_POLICIES:
                raise ValueError(f"${name} must be one of {MISSING_IMAGE_POLICIES}, got {value!r}")
            return value
    return "error"


def vg150_settings_from_env(environ=os.environ) -> dict:
    """``load_vg_sgg`` kwargs of the builtin vg150_* names from ``$KERN_VG_NUM_VAL`` and ``$KERN_MISSING_IMAGES``
    (or ``$KERN_VG_MISSING_IMAGES``; absent: the published convention, 5,000 val images, missing files an error)."""
    num_val = environ.get(NUM_VAL_ENV, "5000")
    if not num_val.strip().isdigit():
        raise ValueError(f"${NUM_VAL_ENV} must be a non-negative integer (the vg150_val size), got {num_val!r}")
    return {"num_val_images": int(num_val), "missing_images": missing_images_from_env(environ, VG_MISSING_IMAGES_ENV)}


def _registered(prefix: str, splits) -> bool:
    """Whether a name of ``<prefix>_<split>`` is registered already (an earlier import, a reload, the user)."""
    registered = set(DatasetCatalog.list())
    return any(f"{prefix}_{split}" in registered for split in splits)


def register_all_builtin(root: str):
    """Register the builtin names under ``root``; a set whose names are registered already is skipped, so a second
    call (a reload of this module) registers nothing and raises nothing."""
    if not _registered("vg150", SPLITS):
        register_vg150(os.path.join(root, "vg"), **vg150_settings_from_env())
    for prefix in ("toy", "synth"):
        if not _registered(prefix, SPLITS):
            register_toy(os.path.join(root, prefix), prefix=prefix)
    downloaded = {"missing_images": missing_images_from_env()}
    for prefix in ("oiv6", "oiv4"):
        if not _registered(prefix, OI_SPLITS):
            register_open_images(os.path.join(root, prefix), prefix, **downloaded)
    if not _registered("gqa200", GQA_SPLITS):
        register_gqa200(os.path.join(root, "gqa"), **downloaded)


# Registered once, on import of this module (as Detectron2's builtin.py: not when it runs as a script).
if __name__.endswith(".builtin"):
    register_all_builtin(os.environ.get("KERN_DATASETS", "datasets"))
