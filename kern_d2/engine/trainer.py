"""Training and evaluation glue: ``SGGTrainer`` (a Detectron2 ``DefaultTrainer``) and config setup.

Scene-graph models (``MODEL.META_ARCHITECTURE: SceneGraphRCNN``) get the SGG loaders and evaluator; any other
model (the detector pretraining configs) gets Detectron2's own detection loaders and COCO evaluation.
"""
import logging
import os
import weakref

import torch

from detectron2.data import DatasetCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    default_setup,
    hooks,
)
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from kern_d2.checkpoint import SGGCheckpointer
from kern_d2.config_check import load_config
from kern_d2.data import CompactTransfer, SGGDatasetMapper, filter_images_without_overlapping_pairs
from kern_d2.evaluation import SceneGraphEvaluator
from kern_d2.solver import build_sgg_optimizer
from kern_d2.modeling.untrained_detector import (
    UNTRAINED_DETECTOR_POLICIES,
    average_frozen_bn_statistics,
    calibrate_frozen_bn,
    frozen_bn_without_statistics,
    untrained_frozen_detector_parts,
)
from kern_d2.utils.foreground_monitor import ForegroundMonitor

logger = logging.getLogger("kern_d2")


def is_sgg_model(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "SceneGraphRCNN"


def check_training_config(cfg) -> None:
    """ValueError, naming the keys, for a config that cannot be trained: AMP without a GPU, the FREQ head
    (nothing to learn), or a best-model metric the evaluator does not report."""
    if cfg.MODEL.UNTRAINED_DETECTOR not in UNTRAINED_DETECTOR_POLICIES:
        raise ValueError(f"MODEL.UNTRAINED_DETECTOR must be one of {UNTRAINED_DETECTOR_POLICIES}, got "
                         f"{cfg.MODEL.UNTRAINED_DETECTOR!r}")
    if cfg.SOLVER.AMP.ENABLED:
        amp_precision(cfg)
        if cfg.MODEL.DEVICE == "cpu":
            raise ValueError("SOLVER.AMP.ENABLED: Detectron2's AMPTrainer needs a CUDA device, not MODEL.DEVICE cpu")
    if not is_sgg_model(cfg):
        return
    if cfg.MODEL.ROI_RELATION_HEAD.NAME == "FREQ":
        raise ValueError(
            "MODEL.ROI_RELATION_HEAD.NAME FREQ predicts from the dataset's predicate prior and has nothing to "
            "train: evaluate it with --eval-only (MODEL.WEIGHTS = the detector)"
        )
    if cfg.TEST.SGG.BEST_METRIC and cfg.TEST.EVAL_PERIOD > 0:
        best_metric_key(cfg)


def wrap_for_distributed(model):
    """``model`` in DistributedDataParallel when there are several processes. On CPU (gloo) the DDP module must
    get no ``device_ids``; Detectron2's ``create_ddp_model`` always passes the local rank, which DDP rejects
    for CPU modules."""
    on_gpu = any(p.device.type == "cuda" for p in model.parameters())
    device_ids = [comm.get_local_rank()] if on_gpu else None
    return create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)


def _worker_mapper(cfg, is_train: bool):
    """The SGG mapper, wrapped in ``CompactTransfer`` when the loader has worker processes (one shared-memory block
    per image instead of five: the main process opens them one by one, and the step waited for that)."""
    mapper = SGGDatasetMapper(cfg, is_train=is_train)
    return CompactTransfer(mapper) if cfg.DATALOADER.NUM_WORKERS > 0 else mapper


class SGGTrainer(DefaultTrainer):
    """DefaultTrainer with SGG data, the scene-graph evaluator, crash-safe checkpoints, best-model keeping and
    multi-process training on CPU as well as on GPUs."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__ with three changes: the DDP wrapper (see wrap_for_distributed), the AMP dtype
        # (SOLVER.AMP.PRECISION) and SGGCheckpointer.
        check_training_config(cfg)
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_for_distributed(model)
        if cfg.SOLVER.AMP.ENABLED:
            self._trainer = AMPTrainer(model, data_loader, optimizer, precision=amp_precision(cfg))
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SGGCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        self.handle_untrained_detector()

    def handle_untrained_detector(self) -> None:
        """Apply ``MODEL.UNTRAINED_DETECTOR`` when the weights just loaded leave the detector untrained (see
        :func:`untrained_detector_message`)."""
        model, missing = self.checkpointer.model, self.checkpointer.missing_keys
        frozen_bn = frozen_bn_without_statistics(model, missing)
        frozen_parts = untrained_frozen_detector_parts(model, missing)
        if not frozen_bn and not frozen_parts:
            return
        policy = self.cfg.MODEL.UNTRAINED_DETECTOR
        message = untrained_detector_message(self.cfg.MODEL.WEIGHTS, len(frozen_bn), frozen_parts)
        if policy == "error":
            raise ValueError(message)
        logger.warning(f"{message} Going on: MODEL.UNTRAINED_DETECTOR is {policy!r}.")
        if policy == "calibrate" and frozen_bn:
            # One batch of the training stream (consumed, like any other step's).
            count = calibrate_frozen_bn(model, next(self._trainer._data_loader_iter), frozen_bn)
            average_frozen_bn_statistics(model)
            logger.info(f"Calibrated {count} FrozenBatchNorm2d layers of the backbone on one training batch.")

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            lr = self._trainer.optimizer.param_groups[0]["lr"]
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else ""
            raise FloatingPointError(divergence_message(self.iter, lr, self.cfg.MODEL.WEIGHTS, last)) from e

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_sgg_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        if not is_sgg_model(cfg):
            return super().build_train_loader(cfg)
        dataset = [d for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name)]
        if cfg.DATASETS.SGG.FILTER_NON_OVERLAP:
            dataset = filter_images_without_overlapping_pairs(dataset)
        return build_detection_train_loader(cfg, dataset=dataset, mapper=_worker_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        if not is_sgg_model(cfg):
            return super().build_test_loader(cfg, dataset_name)
        return build_detection_test_loader(cfg, dataset_name, mapper=_worker_mapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if not is_sgg_model(cfg):
            return COCOEvaluator(dataset_name, output_dir=output_folder)
        return SceneGraphEvaluator.from_cfg(cfg, dataset_name, output_folder)

    def build_hooks(self):
        hook_list = super().build_hooks()
        if is_sgg_model(self.cfg) and comm.is_main_process():
            # Before the writers (main process only), with their period, so that they write the period's counts.
            writer = next(i for i, h in enumerate(hook_list) if isinstance(h, hooks.PeriodicWriter))
            hook_list.insert(writer, ForegroundMonitor(hook_list[writer]._period))
        # DefaultTrainer's EvalHook evaluates DATASETS.TEST; during training kern_d2 evaluates DATASETS.SGG.VAL.
        position = next(i for i, h in enumerate(hook_list) if isinstance(h, hooks.EvalHook))
        hook_list[position] = hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self.evaluate_during_training)
        if is_sgg_model(self.cfg) and self.cfg.TEST.SGG.BEST_METRIC and self.cfg.TEST.EVAL_PERIOD > 0:
            # After EvalHook (which puts the metrics in storage) and before the writers.
            position += 1
            best_saver = BestModelCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
            hook_list.insert(position, hooks.BestCheckpointer(
                self.cfg.TEST.EVAL_PERIOD, best_saver, best_metric_key(self.cfg), mode="max"
            ))
        return hook_list


    def evaluate_during_training(self):
        """Evaluate the model on :func:`training_eval_datasets` (periodically and at the end of training)."""
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATASETS.TEST = training_eval_datasets(self.cfg)
        cfg.freeze()
        self._last_eval_results = self.test(cfg, self.model)
        return self._last_eval_results


def training_eval_datasets(cfg) -> tuple:
    """The datasets evaluated during training, whose results pick ``model_best.pth``: ``DATASETS.SGG.VAL``, or
    ``DATASETS.TEST`` when it is empty."""
    return tuple(cfg.DATASETS.SGG.VAL) or tuple(cfg.DATASETS.TEST)


class BestModelCheckpointer(SGGCheckpointer):
    """Saves ``model_best.pth`` without pointing ``last_checkpoint`` at it: ``--resume`` continues from the latest
    periodic checkpoint, whose iteration count is the training's (the best model's records the evaluation's)."""

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        pass


def untrained_detector_message(weights: str, num_frozen_bn: int, frozen_parts: dict) -> str:
    """Why training from these weights is refused, and the ways out."""
    source = f"MODEL.WEIGHTS {weights!r}" if weights else "MODEL.WEIGHTS is empty and"
    reasons = []
    if num_frozen_bn:
        reasons.append(
            f"{num_frozen_bn} FrozenBatchNorm2d layers of the backbone keep identity statistics, so a randomly "
            "initialised ResNet's activations explode (standard deviation ~1e6 at res4 of R-101, losses of 1e5 "
            "and more)"
        )
    if frozen_parts:
        parts = ", ".join(f"{p.rstrip('.')} ({n} tensors)" for p, n in frozen_parts.items())
        reasons.append(f"the detector, frozen by MODEL.ROI_RELATION_HEAD.FREEZE_DETECTOR, has no trained weights "
                       f"for {parts}, so its boxes and features stay random")
    return (
        f"{source} gives the detector no trained weights: " + "; ".join(reasons) + ". Train from a trained detector "
        "(KERN: the VG detector's model_final.pth; detector pretraining: Detectron2's ImageNet R-101), or set "
        "MODEL.UNTRAINED_DETECTOR 'calibrate' (FrozenBN statistics from the first training batch) or 'allow' "
        "(as is)."
    )


def divergence_message(iteration: int, lr: float, weights: str, last_checkpoint: str) -> str:
    """What to do when a training step found NaN or inf (in a loss, or in the detector's boxes or scores)."""
    cause = (
        "The model started from no trained weights (MODEL.WEIGHTS is empty): from random init the VG detector "
        "diverged at the config's 0.02 and trained at 0.002 (BENCHMARKS.md, 'VG scale'). Use trained weights or a "
        "lower SOLVER.BASE_LR."
        if not weights else "Lower SOLVER.BASE_LR (or clip gradients: SOLVER.CLIP_GRADIENTS.ENABLED)."
    )
    resume = (f"The last good checkpoint is {last_checkpoint}: change the setting and train again with --resume."
              if last_checkpoint else "No checkpoint was written before it.")
    return f"Training diverged at iteration {iteration} (learning rate {lr:.3g}). {cause} {resume}"


def best_metric_key(cfg) -> str:
    """The storage key of TEST.SGG.BEST_METRIC as Detectron2's EvalHook flattens the evaluator's results:
    ``sgg/<metric>`` for one dataset evaluated during training (:func:`training_eval_datasets`),
    ``<first dataset>/sgg/<metric>`` for several."""
    metric = cfg.TEST.SGG.BEST_METRIC
    name, _, k = metric.rpartition("@")
    if not name or not k.isdigit() or int(k) not in tuple(cfg.TEST.SGG.KS):
        raise ValueError(
            f"TEST.SGG.BEST_METRIC {metric!r}: expected a recall at one of TEST.SGG.KS {tuple(cfg.TEST.SGG.KS)}, "
            "e.g. 'mR@100', 'R@50' or 'ng-mR@100'"
        )
    datasets = training_eval_datasets(cfg)
    if not datasets:
        raise ValueError("TEST.EVAL_PERIOD > 0 and TEST.SGG.BEST_METRIC set, but DATASETS.SGG.VAL and DATASETS.TEST "
                         "are empty: name the dataset that picks the best model")
    return f"sgg/{metric}" if len(datasets) == 1 else f"{datasets[0]}/sgg/{metric}"


def load_cfg(args):
    """The config of a tool's command line (every tool loads it here): ``args.config_file`` and the ``KEY VALUE``
    overrides ``args.opts`` (None: none) over kern_d2's defaults, frozen. A missing file, a bad key or value is a
    one-line :class:`kern_d2.config_check.ConfigError` ("did you mean ...")."""
    return load_config(args.config_file, args.opts)


def amp_precision(cfg) -> torch.dtype:
    """The autocast dtype named by ``SOLVER.AMP.PRECISION``."""
    choices = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    if cfg.SOLVER.AMP.PRECISION not in choices:
        raise ValueError(f"SOLVER.AMP.PRECISION must be one of {sorted(choices)}, got {cfg.SOLVER.AMP.PRECISION!r}")
    return choices[cfg.SOLVER.AMP.PRECISION]


def share_cpu_cores(cfg) -> None:
    """In a multi-process CPU run, give each process its share of this machine's cores for intra-op threads
    (torch's default, all cores per process, oversubscribes them many times over). OMP_NUM_THREADS, when set,
    decides instead."""
    processes = comm.get_local_size()
    if processes > 1 and cfg.MODEL.DEVICE == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, len(os.sched_getaffinity(0)) // processes)
        torch.set_num_threads(threads)
        logger.info(f"{processes} CPU processes on this machine: {threads} threads each")


def setup_cfg(args):
    """:func:`load_cfg`, Detectron2's default setup (output folder, logging, seeds, config dump), kern_d2's
    logging and the CPU threads of this process."""
    cfg = load_cfg(args)
    default_setup(cfg, args)
    # default_setup logs "detectron2" and "fvcore"; kern_d2's own messages (e.g. the evaluation tables) too.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="kern_d2", abbrev_name="kern_d2")
    if comm.get_world_size() > 1:  # which process to look at (or kill -9 in the fault checks) for a rank
        logger.info(f"Rank {comm.get_rank()} of {comm.get_world_size()}: pid {os.getpid()}")
    share_cpu_cores(cfg)
    return cfg


def close_process_group() -> None:
    """Wait for every process, then tear the process group down before the interpreter exits: a gloo group left
    alive at exit can abort a worker ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
