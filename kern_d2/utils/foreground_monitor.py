"""Training-time count of foreground relation pairs, so that a run where nothing is foreground is not silent.

Images without a foreground pair contribute only background to ``loss_relation`` (and, in SGDet, nothing to
``loss_object`` when no detection matches a gt box). With a detector that finds nothing (untrained weights, the
wrong checkpoint) every image is like that: the losses are exactly 0 and nothing learns, without an error.
``record_foreground_counts`` keeps the counts of each training batch; :class:`ForegroundMonitor` puts them into
Detectron2's EventStorage after each step, sums them per logging period into ``sgg/period_*`` scalars (written to
``metrics.json``) and warns, once per period, when a whole period had no foreground pair.
"""
import logging
from typing import List

import torch

from detectron2.engine import HookBase

logger = logging.getLogger(__name__)

FG_PAIRS, IMAGES, IMAGES_WITHOUT_FG = "sgg/fg_pairs", "sgg/images", "sgg/images_without_fg"
_pending = None  # the last batch's foreground pairs per image, int64 [images], on the model's device


def record_foreground_counts(pair_targets: List[torch.Tensor]) -> None:
    """Keep this batch's foreground pairs per image for :func:`flush_foreground_counts`.

    ``pair_targets``: per image the sampled pairs' predicate targets [Si] (0 background, -1 ignored). No device
    sync here: the counts are read after the step, when the metrics writer syncs anyway.
    """
    global _pending
    _pending = torch.stack([(t > 0).sum() for t in pair_targets]) if pair_targets else None


def flush_foreground_counts(storage) -> None:
    """Put the recorded batch's foreground pairs, images and images without a foreground pair into ``storage``
    (an EventStorage) as ``sgg/fg_pairs``, ``sgg/images``, ``sgg/images_without_fg``."""
    global _pending
    if _pending is None:
        return
    fg, _pending = _pending.tolist(), None
    storage.put_scalars(
        smoothing_hint=False,
        **{FG_PAIRS: sum(fg), IMAGES: len(fg), IMAGES_WITHOUT_FG: sum(1 for c in fg if c == 0)},
    )


class ForegroundMonitor(HookBase):
    """After each step, the batch's counts into the storage (``sgg/fg_pairs``, ...); every ``period`` iterations
    (and at the last one) ``sgg/period_fg_pairs``, ``sgg/period_images`` and ``sgg/period_images_without_fg``
    summed over the iterations since the last report, and a warning when the
    period had images but no foreground pair. Place it before the writers so they write the period's sums."""

    def __init__(self, period: int = 20):
        self.period = period
        self._reported_until = -1  # last iteration already summed

    def after_step(self):
        flush_foreground_counts(self.trainer.storage)
        next_iter = self.trainer.iter + 1
        if next_iter % self.period and next_iter != self.trainer.max_iter:
            return
        storage = self.trainer.storage
        if FG_PAIRS not in storage.histories():
            return
        since = self._reported_until
        sums = {
            key: sum(v for v, it in storage.history(key).values() if it > since)
            for key in (FG_PAIRS, IMAGES, IMAGES_WITHOUT_FG)
        }
        self._reported_until = self.trainer.iter
        storage.put_scalars(
            smoothing_hint=False, **{key.replace("sgg/", "sgg/period_"): value for key, value in sums.items()}
        )
        if sums[IMAGES] and not sums[FG_PAIRS]:
            logger.warning(
                f"iterations {since + 2}-{next_iter}: none of the {int(sums[IMAGES])} training images had a foreground "
                "relation pair, so loss_relation has only background and nothing is learned about predicates. In "
                "SGDet a detected pair is foreground only when both boxes match a gt pair (IoU >= "
                "MODEL.ROI_RELATION_HEAD.FG_IOU_THRESHOLD, same labels): check that MODEL.WEIGHTS is a trained "
                "detector."
            )
