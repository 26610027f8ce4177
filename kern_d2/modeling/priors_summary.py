"""What ``tools/compute_priors.py`` checks and reports about the data of a priors file (see :mod:`.priors`)."""
from typing import Sequence

import numpy as np

__all__ = ["check_priors_data", "summarize_priors"]


def check_priors_data(dataset: str, dataset_dicts: Sequence[dict]) -> None:
    """ValueError when the dataset has no image or no relation: its priors would be the smoothing alone."""
    num_relations = sum(len(d.get("relations", [])) for d in dataset_dicts)
    if not dataset_dicts or not num_relations:
        raise ValueError(
            f"dataset {dataset} has {len(dataset_dicts)} images and {num_relations} relations: refusing to write "
            "priors from no data (check the split and its val carve-out, e.g. $KERN_VG_NUM_VAL for vg150_*)"
        )


def summarize_priors(dataset_dicts: Sequence[dict], obj_cooccurrence: np.ndarray, rel_prior: np.ndarray,
                     thing_classes: Sequence[str], predicate_classes: Sequence[str], top: int = 5) -> str:
    """A few lines: dataset size and the most confident class-pair predicate priors (of pairs seen related)."""
    num_boxes = sum(len(d.get("annotations", [])) for d in dataset_dicts)
    num_relations = sum(len(d.get("relations", [])) for d in dataset_dicts)
    lines = [
        f"{len(dataset_dicts)} images, {num_boxes} boxes, {num_relations} relations; "
        f"{len(thing_classes)} classes, {len(predicate_classes)} predicates",
        f"co-occurrence: {np.count_nonzero(obj_cooccurrence)} non-zero entries, max {obj_cooccurrence.max():.3f}",
    ]
    fg = rel_prior[:, :, 1:]
    # Only class pairs with relations in the data: the others hold the smoothing's uniform fill.
    pair_relations = np.zeros(fg.shape[:2], dtype=np.int64)
    for d in dataset_dicts:
        labels = np.array([a["category_id"] for a in d.get("annotations", [])], dtype=np.int64)
        rels = np.asarray(d.get("relations", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
        np.add.at(pair_relations, (labels[rels[:, 0]], labels[rels[:, 1]]), 1)
    best = np.where(pair_relations > 0, fg.max(axis=2), -1.0)
    flat = np.argsort(best, axis=None, kind="stable")[::-1][: min(top, int((pair_relations > 0).sum()))]
    for s, o in zip(*np.unravel_index(flat, fg.shape[:2])):
        k = int(fg[s, o].argmax()) + 1
        lines.append(f"  p({predicate_classes[k]} | {thing_classes[s]}, {thing_classes[o]}) = {rel_prior[s, o, k]:.3f} "
                     f"({pair_relations[s, o]} relation{'s' if pair_relations[s, o] != 1 else ''})")
    return "\n".join(lines)
