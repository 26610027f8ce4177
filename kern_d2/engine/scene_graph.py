"""``SceneGraph``: the scene graph of one image as :class:`~kern_d2.engine.SceneGraphPredictor` returns it, and its
JSON form (what ``tools/predict.py`` writes per image).

JSON schema (``SceneGraph.to_dict()``; this is the one place it is documented)::

    {"schema_version": 1,
     "file": "photos/a.jpg",                      # the input's path; null for an image given as an array
     "mode": "sgdet",                             # "predcls", "sgcls" or "sgdet"
     "width": 640, "height": 480,                 # of the original image, EXIF orientation applied
     "boxes": [[x1, y1, x2, y2], ...],            # pixels of that image, rounded to 0.01
     "labels": ["person", ...], "label_ids": [56, ...], "scores": [0.97, ...],
     "triplets": [{"subject": 0, "object": 3, "subject_label": "person", "object_label": "horse",
                   "predicate": "riding", "predicate_id": 31, "predicate_score": 0.81, "score": 0.74}, ...],
     "num_candidate_pairs": 4032}

``label_ids`` are 0-based indices into the model's ``thing_classes``; ``predicate_id`` indexes
``predicate_classes`` (0 = no relation, never given). ``triplets`` holds the ``top_k`` best (subject, object)
pairs, best first, with one predicate each (the best one other than "no relation"); ``score`` = predicate score
x subject score x object score, ties in the model's pair order; ``subject`` / ``object`` index ``boxes``. Scores
are rounded to 1e-6. In PredCls every box score is 1. ``schema_version`` grows when a key changes meaning or
goes away (new keys may be added without it).
"""
import json
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from detectron2.structures import Instances

__all__ = ["SCHEMA_VERSION", "SceneGraph", "Triplet"]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Triplet:
    """One (subject, predicate, object) of a :class:`SceneGraph`; ``subject`` / ``object`` index its boxes."""

    subject: int
    object: int
    subject_label: str
    object_label: str
    predicate: str
    predicate_id: int
    predicate_score: float
    score: float

    def to_dict(self) -> dict:
        return {
            "subject": self.subject,
            "object": self.object,
            "subject_label": self.subject_label,
            "object_label": self.object_label,
            "predicate": self.predicate,
            "predicate_id": self.predicate_id,
            "predicate_score": round(self.predicate_score, 6),
            "score": round(self.score, 6),
        }


@dataclass
class SceneGraph:
    """Boxes, labels and the top-K triplets of one image, in the pixels of the original image.

    Attributes:
        boxes: float32 [N, 4] XYXY.
        label_ids: int64 [N], indices into the model's ``thing_classes``; ``labels``: their N names.
        scores: float32 [N] box scores (all 1 in PredCls).
        triplets: the best triplets, best first (one per box pair).
        num_candidate_pairs: pairs the model scored (M), of which ``triplets`` are the best.
        file: the image's path, or None for an image given as an array.
    """

    width: int
    height: int
    mode: str
    boxes: np.ndarray
    label_ids: np.ndarray
    labels: List[str]
    scores: np.ndarray
    triplets: List[Triplet]
    num_candidate_pairs: int
    file: Optional[str] = None

    @classmethod
    def from_instances(
        cls,
        instances: Instances,
        thing_classes: Sequence[str],
        predicate_classes: Sequence[str],
        top_k: int = 20,
        mode: str = "sgdet",
        file: Optional[str] = None,
    ) -> "SceneGraph":
        """The scene graph of a model output (``pred_boxes, pred_classes, scores, rel_pair_idxs [M, 2],
        rel_scores [M, P]`` at the original image size); the first ``top_k`` triplets (all when ``top_k`` <= 0).

        Raises ValueError when the output does not fit the class names or lacks a field.
        """
        for name in ("pred_boxes", "pred_classes", "scores", "rel_pair_idxs", "rel_scores"):
            if not instances.has(name):
                raise ValueError(f"model output has no '{name}' (fields: {sorted(instances.get_fields())})")
        boxes = instances.pred_boxes.tensor.detach().float().cpu()
        classes = instances.pred_classes.detach().cpu().long()
        scores = instances.scores.detach().float().cpu()
        pairs = instances.rel_pair_idxs.detach().cpu().long().reshape(-1, 2)
        rel_scores = instances.rel_scores.detach().float().cpu()
        bad = classes[(classes < 0) | (classes >= len(thing_classes))]
        if bad.numel():
            raise ValueError(f"model predicted class {int(bad[0])}; only {len(thing_classes)} class names are known")
        if pairs.numel() and (pairs.min() < 0 or pairs.max() >= len(classes)):
            raise ValueError(f"rel_pair_idxs point outside the {len(classes)} predicted boxes")
        if pairs.shape[0] and rel_scores.shape[1] != len(predicate_classes):
            raise ValueError(
                f"model scores {rel_scores.shape[1]} predicates but {len(predicate_classes)} predicate names are "
                "known (index 0 = no relation)"
            )
        if pairs.shape[0] and rel_scores.shape[1] < 2:
            raise ValueError("rel_scores has no predicate column besides 0 (no relation)")
        names = [str(thing_classes[c]) for c in classes.tolist()]
        triplets = []
        if pairs.shape[0]:
            predicate_scores, predicates = rel_scores[:, 1:].max(dim=1)
            predicates = predicates + 1
            triplet_scores = predicate_scores * scores[pairs[:, 0]] * scores[pairs[:, 1]]
            order = torch.argsort(triplet_scores, descending=True, stable=True)
            if top_k > 0:
                order = order[:top_k]
            for i in order.tolist():
                s, o, p = int(pairs[i, 0]), int(pairs[i, 1]), int(predicates[i])
                triplets.append(Triplet(s, o, names[s], names[o], str(predicate_classes[p]), p,
                                        float(predicate_scores[i]), float(triplet_scores[i])))
        height, width = instances.image_size
        return cls(
            width=int(width), height=int(height), mode=mode, boxes=boxes.numpy(), label_ids=classes.numpy(),
            labels=names, scores=scores.numpy(), triplets=triplets, num_candidate_pairs=int(pairs.shape[0]), file=file,
        )

    def to_dict(self) -> dict:
        """The JSON-ready dict of the module docstring's schema (plain Python types)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "file": self.file,
            "mode": self.mode,
            "width": self.width,
            "height": self.height,
            "boxes": [[round(v, 2) for v in box] for box in np.asarray(self.boxes, np.float32).tolist()],
            "labels": list(self.labels),
            "label_ids": [int(i) for i in self.label_ids],
            "scores": [round(v, 6) for v in np.asarray(self.scores, np.float32).tolist()],
            "triplets": [t.to_dict() for t in self.triplets],
            "num_candidate_pairs": self.num_candidate_pairs,
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text with one top-level key per line and one box / triplet per line (plain
        ``json.dumps(indent=...)`` would put every coordinate on its own line)."""
        lines = []
        for key, value in self.to_dict().items():
            if isinstance(value, list) and value and isinstance(value[0], (list, dict)):
                items = ",\n".join("  " + json.dumps(item) for item in value)
                lines.append(f"{json.dumps(key)}: [\n{items}\n ]")
            else:
                lines.append(f"{json.dumps(key)}: {json.dumps(value)}")
        return "{\n " + ",\n ".join(lines) + "\n}\n"
