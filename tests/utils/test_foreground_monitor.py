"""Foreground-pair counts per logging period, and the warning when a whole period had none."""
import logging

import torch
from detectron2.engine import TrainerBase
from detectron2.utils.events import EventStorage

from kern_d2.utils.foreground_monitor import ForegroundMonitor, flush_foreground_counts, record_foreground_counts


class ScriptedTrainer(TrainerBase):
    """Each step records the pair targets the script gives for that iteration (2 images per batch)."""

    def __init__(self, script):
        super().__init__()
        self.script = script

    def run_step(self):
        record_foreground_counts(self.script(self.iter))


def batch(fg_first: int, fg_second: int):
    """Pair targets of two images with the given numbers of foreground pairs (plus background and ignored)."""
    return [torch.tensor([3] * fg_first + [0, 0, -1]), torch.tensor([1] * fg_second + [0])]


def test_period_sums_and_one_warning_for_the_period_without_foreground(caplog):
    # iterations 0-9: no foreground; 10-19: one image of two has 2 fg pairs; 20-24 (the last, shorter period): none
    trainer = ScriptedTrainer(lambda it: batch(2 if 10 <= it < 20 else 0, 0))
    trainer.register_hooks([ForegroundMonitor(period=10)])
    with caplog.at_level(logging.WARNING, logger="kern_d2.utils.foreground_monitor"):
        trainer.train(0, 25)
    history = {k: [v for v, _ in trainer.storage.history(f"sgg/period_{k}").values()]
               for k in ("fg_pairs", "images", "images_without_fg")}
    assert history == {"fg_pairs": [0, 20, 0], "images": [20, 20, 10], "images_without_fg": [20, 10, 10]}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert warnings[0].startswith("iterations 1-10: none of the 20 training images had a foreground relation pair")
    assert warnings[1].startswith("iterations 21-25: none of the 10 training images")
    assert "MODEL.WEIGHTS" in warnings[0]


def test_per_iteration_counts_are_read_after_the_step():
    record_foreground_counts(batch(1, 0) + [torch.tensor([], dtype=torch.int64)])
    with EventStorage(0) as storage:
        flush_foreground_counts(storage)
        assert storage.latest()["sgg/fg_pairs"][0] == 1
        assert storage.latest()["sgg/images"][0] == 3
        assert storage.latest()["sgg/images_without_fg"][0] == 2
        flush_foreground_counts(storage)  # nothing recorded since: nothing put
        assert len(storage.history("sgg/fg_pairs").values()) == 1
