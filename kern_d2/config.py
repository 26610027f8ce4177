"""kern_d2's config keys, added to a Detectron2 config with :func:`add_kern_config`.

Defaults reproduce the KERN paper: T = 3 routing steps, D = 512 hidden units, 256 pairs per image with at most a
quarter foreground, 64 detections per image after per-class NMS at 0.3 in SGDet.
"""
from detectron2.config import CfgNode as CN


def add_kern_config(cfg):
    """Add kern_d2's keys to ``cfg`` (in place). Call it before ``merge_from_file``."""
    cfg.MODEL.ROI_RELATION_HEAD = CN()
    rel = cfg.MODEL.ROI_RELATION_HEAD
    # Relation predictor: "KERN" (knowledge-embedded routing), "VRFC" (fc on the union feature, the paper's
    # baseline) or "FREQ" (predicate from the prior p(predicate | subject class, object class) alone).
    rel.NAME = "KERN"
    # Modes: PredCls = (True, True), SGCls = (True, False), SGDet = (False, False).
    rel.USE_GT_BOX = True
    rel.USE_GT_OBJECT_LABEL = True
    # Number of predicate classes including 0 = "no relation" (VG150: 51).
    rel.NUM_PREDICATES = 51
    # Training pair sampling: pairs per image and the largest foreground fraction.
    rel.BATCH_SIZE_PER_IMAGE = 256
    rel.POSITIVE_FRACTION = 0.25
    # SGDet: a detected pair is foreground when both boxes have IoU >= this with a gt pair's boxes and the labels match.
    rel.FG_IOU_THRESHOLD = 0.5
    # SGDet detections kept per image, after per-class NMS at DETECTION_NMS_THRESH.
    rel.MAX_DETECTIONS = 64
    rel.DETECTION_NMS_THRESH = 0.3
    rel.DETECTION_SCORE_THRESH = 0.0
    # SGDet test: only pairs whose boxes overlap are candidates.
    rel.REQUIRE_OVERLAP = True
    # Union feature: RoIAlign over the union box + two MASK_SIZE^2 rectangle masks through a conv stack.
    rel.IN_FEATURES = []  # empty: the box head's MODEL.ROI_HEADS.IN_FEATURES
    rel.POOLER_RESOLUTION = 7
    rel.POOLER_SAMPLING_RATIO = 2
    rel.MASK_SIZE = 27
    # Gated graph routing (both GGNNs): steps T, hidden size D, per-node output size.
    rel.NUM_STEPS = 3
    rel.HIDDEN_DIM = 512
    rel.OUTPUT_DIM = 512
    # Knowledge priors (.npz from tools/compute_priors.py). USE_PRIORS False = uniform matrices (ablation).
    rel.USE_PRIORS = True
    rel.PRIORS_FILE = ""
    # Object routing (SGCls/SGDet); off = object logits from the detector's box head (ablation).
    rel.USE_OBJECT_ROUTING = True
    # Which KERN: "kern_d2" (this project's choices, the default) or "released" (the model of KERN's released code,
    # yuweihao/KERN on neural-motifs). VARIANT sets every point below that is left empty; a non-empty key overrides
    # it, so that each point can be measured alone (README "KERN as released vs kern_d2"; resolve_variant()).
    rel.VARIANT = "kern_d2"
    # Predicate and co-occurrence prior construction the model expects of its priors file: "kern_d2" | "released"
    # (tools/compute_priors.py --released). A file made the other way is refused.
    rel.PRIOR_CONSTRUCTION = ""
    # Relation routing messages: "untied" (predicate nodes [m; 0], subject/object [0; m]) | "tied" ([m; m] for every
    # node, the released code's A_out == A_in).
    rel.RELATION_MESSAGE = ""
    # GGNN reset gate of both routings: "separate" (U_r) | "shared" (reuses U_z, as the released code does).
    rel.RESET_GATE = ""
    # Legacy switch, kept for old configs: True = RESET_GATE "shared".
    rel.RELEASED_CODE_GATE = False
    # Object features of the relation part: "frozen" (the detector's box head) | "finetuned" (a trainable copy of
    # it with dropout, at SOLVER.FC_LR_FACTOR, as the released code fine-tunes VGG's fc6/fc7).
    rel.OBJECT_FEATURES = ""
    # Union feature: "kern_d2" (binary masks, convs without BN, the box head's 2-fc head) | "released" (soft area
    # masks - 0.5, conv-ReLU-BN stack, fc6 -> ReLU -> dropout -> fc7 without a final ReLU).
    rel.UNION_FEATURE = ""
    # Object routing over the C classes ("off") or C + 1 with a background node ("on": the released code routes over
    # VG's 151 classes with background; its prior edges are 0, its logit is the last column, never predicted).
    rel.OBJECT_ROUTING_BACKGROUND = ""
    # SGDet pipeline: "kern_d2" | "released" (background class in the object routing, per-class NMS on the routed
    # scores, the released pair assignment: 64 pairs per image, <= 16 foreground).
    rel.SGDET_PIPELINE = ""
    # How the relation routing's elementwise GGNN gate arithmetic runs: "fused" (kern_d2._C kernels, CPU and
    # CUDA), "eager" (plain PyTorch ops), "compile" (the whole routing, gates in PyTorch ops, under torch.compile:
    # the fastest on CUDA, after a compile of tens of seconds per new input size), or "auto": fused on CUDA, eager
    # on CPU (where ATen's vectorised ops are faster). Same results.
    rel.GATE_IMPL = "auto"
    # Detector parts are frozen in KERN training, as in the paper.
    rel.FREEZE_DETECTOR = True
    rel.OBJECT_LOSS_WEIGHT = 1.0
    rel.RELATION_LOSS_WEIGHT = 1.0
    # Inference: pairs are routed in chunks of this many to bound memory.
    rel.INFERENCE_PAIR_CHUNK = 8192
    # Inference on CUDA: replay the relation routing from CUDA graphs (one per size bucket of 256 pairs, captured at
    # first use) instead of launching its ~140 kernels one by one. Same results; the graphs hold their own memory.
    rel.INFERENCE_CUDA_GRAPHS = False
    # Long-tail switches (kern_d2/modeling/long_tail.py; README "Rare predicates"), all off by default.
    # Inference: logits - tau * log f(predicate), f the smoothed predicate frequency of the priors file; 0 = off.
    rel.LOGIT_ADJUSTMENT_TAU = 0.0
    # Training: relation cross-entropy class weights, "none", "inverse" (1 / count) or "effective_number"
    # ((1 - beta) / (1 - beta^count), beta = LOSS_WEIGHTING_BETA); no-relation weight 1.
    rel.LOSS_WEIGHTING = "none"
    rel.LOSS_WEIGHTING_BETA = 0.999
    # Training: balanced softmax (cross-entropy on logits + log f(predicate)); excludes LOSS_WEIGHTING.
    rel.BALANCED_SOFTMAX = False
    # Inference: TDE logits = logits(real pair) - logits(pair with its union and subject/object features replaced
    # by running means that training keeps, prior edges kept). TDE_MOMENTUM: the means' smallest update rate.
    rel.TDE_INFERENCE = False
    rel.TDE_MOMENTUM = 0.01

    # Training when the detector has no trained weights (MODEL.WEIGHTS empty or without the detector's tensors):
    # "error" (refuse: a random ResNet with FrozenBN explodes, a frozen random detector finds nothing),
    # "calibrate" (warn, set the backbone's FrozenBN statistics from the first training batch, train) or "allow".
    cfg.MODEL.UNTRAINED_DETECTOR = "error"

    cfg.DATASETS.SGG = CN()
    # SGDet training drops images without an overlapping gt box pair (published convention).
    cfg.DATASETS.SGG.FILTER_NON_OVERLAP = False
    # Training: a (subject, object) pair annotated with several predicates keeps one, sampled per epoch.
    cfg.DATASETS.SGG.SAMPLE_DUPLICATE_PAIRS = True
    # Training: an image that cannot be read: "error" (stop, naming it) or "skip" (log, count, draw another).
    cfg.DATASETS.SGG.UNREADABLE_IMAGES = "error"
    # Datasets evaluated during training (every TEST.EVAL_PERIOD, at the end, and for model_best.pth); empty =
    # DATASETS.TEST. The shipped configs pick their best model on the val split and keep the test split for
    # --eval-only, as the released code picks its best epoch on val.
    cfg.DATASETS.SGG.VAL = ()

    # "SGD" (Detectron2's) or "ADAM" (KERN's released code trains its relation part with Adam; see kern_d2/solver.py).
    cfg.SOLVER.OPTIMIZER = "SGD"
    # Adam's eps; < 0 = from MODEL.ROI_RELATION_HEAD.VARIANT (kern_d2: 1e-8, torch's default; released: 1e-3).
    cfg.SOLVER.ADAM_EPS = -1.0
    # Learning-rate factor of the fine-tuned fc copies (union fc head, object fc head); < 0 = from VARIANT
    # (kern_d2: 1.0; released: 0.1, the released code's "lr / 10 on the fc layers").
    cfg.SOLVER.FC_LR_FACTOR = -1.0

    # Mixed precision of Detectron2's AMPTrainer (SOLVER.AMP.ENABLED): "float16" (its default) or "bfloat16".
    cfg.SOLVER.AMP.PRECISION = "float16"

    cfg.TEST.SGG = CN()
    cfg.TEST.SGG.KS = (20, 50, 100)
    cfg.TEST.SGG.IOU_THRESH = 0.5
    cfg.TEST.SGG.LEGACY_IOU = False  # +1 pixel convention of the original evaluation code
    # Best checkpoint kept by this metric during training (TEST.EVAL_PERIOD > 0); empty = off.
    cfg.TEST.SGG.BEST_METRIC = "mR@100"

    # Autocast of SceneGraphPredictor (and tools/predict.py): off, or on with "bfloat16" / "float16".
    cfg.TEST.AMP = CN()
    cfg.TEST.AMP.ENABLED = False
    cfg.TEST.AMP.PRECISION = "bfloat16"
    return cfg


# Every point where the released KERN code and kern_d2 differ: key -> (kern_d2 value, released value, allowed values).
VARIANT_POINTS = {
    "PRIOR_CONSTRUCTION": ("kern_d2", "released", ("kern_d2", "released")),
    "RELATION_MESSAGE": ("untied", "tied", ("untied", "tied")),
    "RESET_GATE": ("separate", "shared", ("separate", "shared")),
    "OBJECT_FEATURES": ("frozen", "finetuned", ("frozen", "finetuned")),
    "UNION_FEATURE": ("kern_d2", "released", ("kern_d2", "released")),
    "OBJECT_ROUTING_BACKGROUND": ("off", "on", ("off", "on")),
    "SGDET_PIPELINE": ("kern_d2", "released", ("kern_d2", "released")),
}
VARIANTS = ("kern_d2", "released")
# SOLVER keys set by the variant when negative: key -> (kern_d2 value, released value).
VARIANT_SOLVER_POINTS = {"ADAM_EPS": (1e-8, 1e-3), "FC_LR_FACTOR": (1.0, 0.1)}


# The recipe of the relation phases (PredCls / SGCls / SGDet training; STUDY.md "Recipe"), by variant: Adam with
# gradient clipping at 5 and no weight decay, BASE_LR at a reference total batch, scaled to SOLVER.IMS_PER_BATCH by
# a rule. kern_d2 (Adam's eps 1e-8): square root, the scaling rule of adaptive optimizers (Malladi et al., NeurIPS
# 2022). released (eps 1e-3): where gradients are far below eps, Adam's step is (lr / eps) x gradient, SGD's, so SGD's
# linear rule. Clipping: kern_d2 clips each tensor alone (Detectron2's "norm", the rule the study measured); released
# clips the norm of all gradients together ("full_model", the released clip_grad_norm; kern_d2/solver.py). The released
# reference lr is what the released scripts train with: `-lr 1e-5 -b 2` on one GPU, which
# models/train_rels.py multiplies by batch x GPUs (get_optim(conf.lr * conf.num_gpus * conf.batch_size)), so 2e-5 at
# batch 2, i.e. 1e-5 per image. Detector configs keep Detectron2's SGD.
RELATION_RECIPES = {
    "kern_d2": {"OPTIMIZER": "ADAM", "BASE_LR": 1e-3, "IMS_PER_BATCH": 8, "SCALING": "sqrt",
                "CLIP_TYPE": "norm", "CLIP_VALUE": 5.0},
    "released": {"OPTIMIZER": "ADAM", "BASE_LR": 2e-5, "IMS_PER_BATCH": 2, "SCALING": "linear",
                 "CLIP_TYPE": "full_model", "CLIP_VALUE": 5.0},
}


def relation_recipe_lr(variant: str, ims_per_batch: int) -> float:
    """The relation phases' SOLVER.BASE_LR for a total batch of ``ims_per_batch`` images under ``variant``'s rule."""
    recipe = RELATION_RECIPES[variant]
    ratio = ims_per_batch / recipe["IMS_PER_BATCH"]
    return recipe["BASE_LR"] * (ratio ** 0.5 if recipe["SCALING"] == "sqrt" else ratio)


def resolve_variant(cfg) -> dict:
    """The effective value of every variant point of ``cfg``: an explicit key wins, else ``VARIANT``'s value.

    Returns a dict with the keys of :data:`VARIANT_POINTS` (strings) and of :data:`VARIANT_SOLVER_POINTS` (floats).
    Raises ``ValueError`` naming the key on an unknown value.
    """
    rel = cfg.MODEL.ROI_RELATION_HEAD
    variant = rel.VARIANT
    if variant not in VARIANTS:
        raise ValueError(f"MODEL.ROI_RELATION_HEAD.VARIANT must be one of {VARIANTS}, got {variant!r}")
    column = VARIANTS.index(variant)
    resolved = {}
    for key, (*values, allowed) in VARIANT_POINTS.items():
        value = rel.get(key, "") or values[column]
        if key == "RESET_GATE" and not rel.get(key, "") and rel.get("RELEASED_CODE_GATE", False):
            value = "shared"
        if value not in allowed:
            raise ValueError(f"MODEL.ROI_RELATION_HEAD.{key} must be one of {allowed} (or empty), got {value!r}")
        resolved[key] = value
    for key, values in VARIANT_SOLVER_POINTS.items():
        value = float(cfg.SOLVER.get(key, -1.0))
        resolved[key] = value if value >= 0 else values[column]
    return resolved


SGG_MODES = ("predcls", "sgcls", "sgdet")


def sgg_mode(use_gt_box: bool, use_gt_object_label: bool) -> str:
    """The task of a (``USE_GT_BOX``, ``USE_GT_OBJECT_LABEL``) setting: "predcls", "sgcls" or "sgdet"."""
    if use_gt_box:
        return "predcls" if use_gt_object_label else "sgcls"
    if use_gt_object_label:
        raise ValueError("MODEL.ROI_RELATION_HEAD: USE_GT_OBJECT_LABEL=True needs USE_GT_BOX=True (gt labels belong "
                         "to gt boxes); SGDet is USE_GT_BOX=False, USE_GT_OBJECT_LABEL=False")
    return "sgdet"


def sgg_mode_from_cfg(cfg) -> str:
    """:func:`sgg_mode` of ``cfg.MODEL.ROI_RELATION_HEAD``."""
    rel = cfg.MODEL.ROI_RELATION_HEAD
    return sgg_mode(rel.USE_GT_BOX, rel.USE_GT_OBJECT_LABEL)
