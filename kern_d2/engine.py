"""Training and evaluation glue: ``SGGTrainer`` (a Detectron2 ``DefaultTrainer``) and config setup.

Scene-graph models (``MODEL.META_ARCHITECTURE: SceneGraphRCNN``) get the SGG loaders and evaluator; any other
model (the detector pretraining configs) gets Detectron2's own detection loaders and COCO evaluation.
"""
import logging
import os
import weakref

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_setup, hooks
from detectron2.evaluation import COCOEvaluator

from kern_d2.checkpoint import SGGCheckpointer
from kern_d2.config import add_kern_config
from kern_d2.data import SGGDatasetMapper, filter_images_without_overlapping_pairs
from kern_d2.evaluation import SceneGraphEvaluator

logger = logging.getLogger("kern_d2")


def is_sgg_model(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "SceneGraphRCNN"


class SGGTrainer(DefaultTrainer):
    """DefaultTrainer with SGG data, the scene-graph evaluator, crash-safe checkpoints and best-model keeping."""

    def __init__(self, cfg):
        if is_sgg_model(cfg) and cfg.MODEL.ROI_RELATION_HEAD.NAME == "FREQ":
            raise ValueError("ROI_RELATION_HEAD.NAME=FREQ has nothing to train: evaluate it with --eval-only")
        super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        if not is_sgg_model(cfg):
            return super().build_train_loader(cfg)
        dataset = [d for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name)]
        if cfg.DATASETS.SGG.FILTER_NON_OVERLAP:
            dataset = filter_images_without_overlapping_pairs(dataset)
        return build_detection_train_loader(cfg, dataset=dataset, mapper=SGGDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        if not is_sgg_model(cfg):
            return super().build_test_loader(cfg, dataset_name)
        return build_detection_test_loader(cfg, dataset_name, mapper=SGGDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if not is_sgg_model(cfg):
            return COCOEvaluator(dataset_name, output_dir=output_folder)
        return SceneGraphEvaluator.from_cfg(cfg, dataset_name, output_folder)

    def build_hooks(self):
        # Replace Detectron2's checkpointer before the hooks capture it.
        self.checkpointer = SGGCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        hook_list = super().build_hooks()
        metric = self.cfg.TEST.SGG.BEST_METRIC if is_sgg_model(self.cfg) else ""
        if metric and self.cfg.TEST.EVAL_PERIOD > 0:
            # After EvalHook (which puts the metrics in storage) and before the writers.
            position = next(i for i, h in enumerate(hook_list) if isinstance(h, hooks.EvalHook)) + 1
            hook_list.insert(position, hooks.BestCheckpointer(
                self.cfg.TEST.EVAL_PERIOD, self.checkpointer, f"sgg/{metric}", mode="max"
            ))
        return hook_list


def setup_cfg(args):
    """Config from ``--config-file`` and ``opts`` with kern_d2's keys; Detectron2's default setup (logging, seeds)."""
    cfg = get_cfg()
    add_kern_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg
