"""Training (``SGGTrainer`` and its config helpers) and prediction (``SceneGraphPredictor``; over many image files:
``predict_files``) of kern_d2 models."""
from .given_boxes import dataset_given_boxes, find_given_boxes, load_given_boxes
from .predictor import ImagePreparer, PreparedImage, SceneGraphPredictor, resolve_class_names
from .predict_images import (
    SUMMARY_NAME,
    ImageFiles,
    InputError,
    output_stems,
    predict_files,
    prediction_mode,
    run_batch,
    select_images,
)
from .scene_graph import SCHEMA_VERSION, SceneGraph, Triplet
from .trainer import (
    BestModelCheckpointer,
    SGGTrainer,
    amp_precision,
    best_metric_key,
    check_training_config,
    close_process_group,
    is_sgg_model,
    load_cfg,
    setup_cfg,
    share_cpu_cores,
    training_eval_datasets,
    wrap_for_distributed,
)

__all__ = [
    "BestModelCheckpointer",
    "ImageFiles",
    "ImagePreparer",
    "InputError",
    "PreparedImage",
    "SCHEMA_VERSION",
    "SGGTrainer",
    "SUMMARY_NAME",
    "SceneGraph",
    "SceneGraphPredictor",
    "Triplet",
    "amp_precision",
    "best_metric_key",
    "check_training_config",
    "close_process_group",
    "dataset_given_boxes",
    "find_given_boxes",
    "is_sgg_model",
    "load_cfg",
    "load_given_boxes",
    "output_stems",
    "predict_files",
    "prediction_mode",
    "resolve_class_names",
    "run_batch",
    "select_images",
    "setup_cfg",
    "share_cpu_cores",
    "training_eval_datasets",
    "wrap_for_distributed",
]
