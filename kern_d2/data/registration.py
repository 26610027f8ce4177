"""Register an SGG dataset in Detectron2's catalogs, with class names read now or on first load."""
import os
from typing import Callable, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog


def set_sgg_classes(name: str, thing_classes: List[str], predicate_classes: List[str]):
    """Store the class lists in ``MetadataCatalog.get(name)`` (a mismatch with earlier values raises)."""
    MetadataCatalog.get(name).set(thing_classes=list(thing_classes), predicate_classes=list(predicate_classes))


def register_sgg_dataset(
    name: str,
    load: Callable[[], List[dict]],
    read_classes: Callable[[], Tuple[List[str], List[str]]],
    classes_file: str,
    metadata: dict,
    priors_file: Optional[str] = None,
):
    """``load`` builds the dataset dicts; ``read_classes`` returns (thing_classes, predicate_classes) from
    ``classes_file``. The classes are read at registration when that file exists (so a model can be built from
    the metadata before any data is loaded), else on first load: builtin names are registered even when their
    files are absent. A ``priors_file`` goes to the metadata."""

    def load_and_set_classes():
        set_sgg_classes(name, *read_classes())
        return load()

    DatasetCatalog.register(name, load_and_set_classes)
    if priors_file:
        metadata = dict(metadata, priors_file=priors_file)
    MetadataCatalog.get(name).set(**{"evaluator_type": "sgg", **metadata})  # metadata may name another type
    if os.path.isfile(classes_file):
        set_sgg_classes(name, *read_classes())


def check_classes_match_config(dataset_names: Sequence[str], num_classes: int, num_predicates: int) -> None:
    """Raise ValueError when a registered dataset's class lists do not have the config's sizes (C object classes,
    P predicates with "no relation"), before any training step. Datasets whose classes are not known yet (their
    class file is absent) are not checked here: their loader checks every label against its own lists."""
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        things, predicates = meta.get("thing_classes", None), meta.get("predicate_classes", None)
        if things is not None and len(things) != num_classes:
            raise ValueError(
                f"dataset {name} has {len(things)} object classes but MODEL.ROI_HEADS.NUM_CLASSES is {num_classes}"
            )
        if predicates is not None and len(predicates) != num_predicates:
            raise ValueError(
                f"dataset {name} has {len(predicates)} predicates ('no relation' included) but "
                f"MODEL.ROI_RELATION_HEAD.NUM_PREDICATES is {num_predicates}"
            )
