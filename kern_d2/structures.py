"""``Relations``: the gt relations of one image, stored as a field of its ``Instances``.

Detectron2's ``Instances`` wants every field to have one entry per box. Relations have their own count R, so
this class reports ``len() == number of boxes`` and re-indexes the relations when the boxes are indexed
(relations whose subject or object is dropped go too; the survivors point at the boxes' new positions).
"""
from typing import List, Union

import torch

from detectron2.structures import Instances


class Relations:
    """``tensor``: int64 [R, 3] rows (subject index, object index, predicate 1..P-1) into ``num_instances`` boxes."""

    def __init__(self, tensor: torch.Tensor, num_instances: int):
        tensor = torch.as_tensor(tensor, dtype=torch.int64).reshape(-1, 3)
        if tensor.numel() and (tensor[:, :2].min() < 0 or tensor[:, :2].max() >= num_instances):
            raise ValueError(
                f"Relations: subject/object indices must be in [0, {num_instances}), got "
                f"[{int(tensor[:, :2].min())}, {int(tensor[:, :2].max())}]"
            )
        self.tensor = tensor
        self.num_instances = int(num_instances)

    def __len__(self) -> int:
        return self.num_instances

    @property
    def num_relations(self) -> int:
        return self.tensor.shape[0]

    def to(self, *args, **kwargs) -> "Relations":
        return Relations(self.tensor.to(*args, **kwargs), self.num_instances)

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def __getitem__(self, item: Union[int, slice, torch.Tensor]) -> "Relations":
        """Index the boxes; keep relations between kept boxes, renumbered."""
        keep_index = torch.arange(self.num_instances, device=self.tensor.device)[item].reshape(-1)
        new_position = torch.full((self.num_instances,), -1, dtype=torch.int64, device=self.tensor.device)
        new_position[keep_index] = torch.arange(keep_index.numel(), device=self.tensor.device)
        if keep_index.numel() != torch.unique(keep_index).numel():
            raise ValueError("Relations: indexing that repeats a box is ambiguous for relations")
        subj, obj = new_position[self.tensor[:, 0]], new_position[self.tensor[:, 1]]
        kept = (subj >= 0) & (obj >= 0)
        rows = torch.stack([subj[kept], obj[kept], self.tensor[kept, 2]], dim=1)
        return Relations(rows, keep_index.numel())

    @classmethod
    def cat(cls, relations_list: List["Relations"]) -> "Relations":
        """Concatenate as ``Instances.cat`` concatenates boxes: indices of later parts are offset."""
        offset, rows = 0, []
        for rel in relations_list:
            rows.append(rel.tensor + torch.tensor([offset, offset, 0], device=rel.tensor.device))
            offset += rel.num_instances
        return cls(torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.int64), offset)

    def __repr__(self) -> str:
        return f"Relations(num_instances={self.num_instances}, num_relations={self.num_relations})"


class SceneGraphInstances(Instances):
    """Predicted ``Instances`` of one image plus its relation fields.

    ``rel_pair_idxs`` int64 [M, 2] (subject, object indices into the boxes) and ``rel_scores`` [M, P] have one
    row per pair, not per box, so ``set`` exempts the ``rel_`` fields from the length check. ``to()`` keeps the
    class; indexing is refused while relation fields are present (it would invalidate the pair indices).
    """

    RELATION_FIELDS = ("rel_pair_idxs", "rel_scores")

    def set(self, name: str, value) -> None:
        if name in self.RELATION_FIELDS:
            self._fields[name] = value
        else:
            super().set(name, value)

    def __len__(self) -> int:
        for name, value in self._fields.items():
            if name not in self.RELATION_FIELDS:
                return value.__len__()
        raise NotImplementedError("SceneGraphInstances has no box fields")

    def to(self, *args, **kwargs) -> "SceneGraphInstances":
        ret = SceneGraphInstances(self._image_size)
        for name, value in self._fields.items():
            ret.set(name, value.to(*args, **kwargs) if hasattr(value, "to") else value)
        return ret

    def __getitem__(self, item) -> "Instances":
        if any(name in self._fields for name in self.RELATION_FIELDS):
            raise TypeError("SceneGraphInstances with relation fields cannot be indexed (pair indices would break)")
        return super().__getitem__(item)


def set_relation_predictions(
    instances: SceneGraphInstances, rel_pair_idxs: torch.Tensor, rel_scores: torch.Tensor
) -> None:
    """Attach relation predictions: ``rel_pair_idxs`` int64 [M, 2], ``rel_scores`` [M, P] (column 0 = none)."""
    if rel_pair_idxs.shape[0] != rel_scores.shape[0]:
        raise ValueError(f"rel_pair_idxs has {rel_pair_idxs.shape[0]} rows but rel_scores {rel_scores.shape[0]}")
    instances.rel_pair_idxs = rel_pair_idxs
    instances.rel_scores = rel_scores
