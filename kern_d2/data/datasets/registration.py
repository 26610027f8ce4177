"""Register an SGG dataset in Detectron2's catalogs, with class names read lazily, on first use.

A dataset's ``thing_classes`` and ``predicate_classes`` are read from its class file (VG dicts json, Open Images
``categories_dict.json``, GQA ``GQA_200_ID_Info.json``, the simple JSON file) the first time they are asked for
(``MetadataCatalog.get(name).thing_classes``, ``.get("thing_classes")``, or loading the dataset), not at
registration: a broken or partial file of one dataset then fails only when that dataset is used, naming the file,
and never ``import kern_d2.data``. While the class file is absent the metadata has no class names (``get`` returns
None); :func:`sgg_dataset_classes` names the missing file instead.
"""
import os
from typing import Callable, Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata

from kern_d2.config_check import check_classes_match_config  # noqa: F401  (its earlier home)

# name -> (read_classes, classes_file) of every dataset registered through register_sgg_dataset.
_CLASS_SOURCES: Dict[str, Tuple[Callable[[], Tuple[List[str], List[str]]], str]] = {}
# name -> the annotation files that loading it reads (not the images, not the priors).
_DATA_FILES: Dict[str, List[str]] = {}
_CLASS_KEYS = ("thing_classes", "predicate_classes")
SGG_EVALUATOR_TYPES = ("sgg", "sgg_oi")


class SGGMetadata(Metadata):
    """Detectron2's ``Metadata`` whose ``thing_classes`` / ``predicate_classes``, until set, are read from the
    dataset's class file when first asked for (when that file exists; else they are absent)."""

    def __getattr__(self, key):
        if key in _CLASS_KEYS:
            source = _CLASS_SOURCES.get(self.__dict__.get("name"))
            if source is not None and os.path.isfile(source[1]):
                things, predicates = source[0]()  # errors name the file
                # Straight into __dict__: Metadata.__setattr__ would ask for the value again (its consistency check).
                self.__dict__.update(thing_classes=list(things), predicate_classes=list(predicates))
                return self.__dict__[key]
        return super().__getattr__(key)


def set_sgg_classes(name: str, thing_classes: List[str], predicate_classes: List[str]):
    """Store the class lists in ``MetadataCatalog.get(name)`` (a mismatch with earlier values raises)."""
    MetadataCatalog.get(name).set(thing_classes=list(thing_classes), predicate_classes=list(predicate_classes))


def _sgg_metadata(name: str) -> SGGMetadata:
    """``MetadataCatalog.get(name)`` as an :class:`SGGMetadata` (what was set before is kept)."""
    meta = MetadataCatalog.get(name)
    if not isinstance(meta, SGGMetadata):
        fields = dict(meta.__dict__)
        fields.pop("name", None)
        meta = SGGMetadata(name=name)
        meta.__dict__.update(fields)
        MetadataCatalog[name] = meta
    return meta


def sgg_dataset_names() -> List[str]:
    """Sorted names of the registered scene-graph datasets (kern_d2's registrars, or any dataset whose metadata
    ``evaluator_type`` is an SGG one), without Detectron2's own (coco, lvis, cityscapes, ...)."""
    names = []
    for name in DatasetCatalog.list():
        if name in _CLASS_SOURCES:
            names.append(name)
        elif name in MetadataCatalog.keys():
            if MetadataCatalog.get(name).get("evaluator_type", None) in SGG_EVALUATOR_TYPES:
                names.append(name)
    return sorted(names)


def missing_dataset_files(name: str) -> List[str]:
    """The annotation files of a dataset registered by kern_d2's registrars that do not exist (images not
    included); [] for datasets registered by other code."""
    return [path for path in _DATA_FILES.get(name, []) if not os.path.isfile(path)]


def sgg_dataset_classes(name: str) -> Tuple[List[str], List[str]]:
    """(thing_classes, predicate_classes) of a registered dataset, from its metadata or its class file.

    Raises KeyError when ``name`` is not registered, FileNotFoundError naming the class file when it is absent,
    ``DatasetFormatError`` naming it when it is broken, and ValueError for a dataset registered by other code
    without class names in its metadata."""
    if name not in DatasetCatalog.list():
        raise KeyError(f"dataset {name!r} is not registered")
    meta = MetadataCatalog.get(name)
    things, predicates = meta.get("thing_classes", None), meta.get("predicate_classes", None)
    if things is not None and predicates is not None:
        return list(things), list(predicates)
    source = _CLASS_SOURCES.get(name)
    if source is not None:
        source[0]()  # the class file is absent: its reader raises FileNotFoundError naming it
    raise ValueError(
        f"dataset {name}: its metadata has no thing_classes and predicate_classes; a dataset registered without "
        "kern_d2's register_* functions must set them: MetadataCatalog.get(name).set(thing_classes=[...], "
        "predicate_classes=['__no_relation__', ...])"
    )


def register_sgg_dataset(
    name: str,
    load: Callable[[], List[dict]],
    read_classes: Callable[[], Tuple[List[str], List[str]]],
    classes_file: str,
    metadata: dict,
    priors_file: Optional[str] = None,
):
    """``load`` builds the dataset dicts; ``read_classes`` returns (thing_classes, predicate_classes) from
    ``classes_file``. The classes are read on first use (module docstring): from the metadata (so a model can be
    built before any data is loaded) or when the dataset is loaded. Builtin names are registered even when their
    files are absent. A ``priors_file`` goes to the metadata."""

    def load_and_set_classes():
        set_sgg_classes(name, *read_classes())
        return load()

    DatasetCatalog.register(name, load_and_set_classes)
    _CLASS_SOURCES[name] = (read_classes, classes_file)
    # The files loading needs (the metadata's "*_file" paths), checked before a run (kern_d2.config_check).
    _DATA_FILES[name] = [classes_file] + [
        path for key, path in metadata.items() if key.endswith("_file") and isinstance(path, str) and
        path != classes_file
    ]
    if priors_file:
        metadata = dict(metadata, priors_file=priors_file)
    _sgg_metadata(name).set(**{"evaluator_type": "sgg", **metadata})  # metadata may name another type
