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
    # The released KERN code reuses U_z in the reset gate; True reproduces that.
    rel.RELEASED_CODE_GATE = False
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

    # "SGD" (Detectron2's) or "ADAM" (KERN's released code trains its relation part with Adam; see kern_d2/solver.py).
    cfg.SOLVER.OPTIMIZER = "SGD"

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
